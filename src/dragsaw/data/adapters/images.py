"""Adapters that find the cases of 2D datasets in their official on-disk layouts.

Every adapter takes the folder the dataset was unpacked into and returns ``{split: [Case, ...]}`` keyed by the
dataset's own splits: ``"train"``, optionally ``"val"`` and ``"test"``, or ``"all"`` when the dataset has no
official split (PH2, Montgomery, a flat folder); :func:`dragsaw.data.splits.resolve_splits` carves the missing
splits with a seed. Files are only listed here, never decoded. Cases are sorted by ``case_id``.

A missing or empty folder, an image without a mask or a mask without an image raises
:class:`~dragsaw.errors.DataError` naming the path, what was expected there and the fix.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from dragsaw.data.adapters.registry import CasesBySplit, register_dataset
from dragsaw.data.cases import Case
from dragsaw.data.io.images import IMAGE_SUFFIXES
from dragsaw.errors import DataError

__all__ = [
    "isic2016",
    "isic2017",
    "ph2",
    "isic2016_ph2",
    "montgomery",
    "digestpath",
    "folder",
]

_MASK_SUFFIXES = ("_mask", "_segmentation")  # compared case-insensitively after an exact-stem match fails
_SPLIT_DIRS = ("train", "val", "test")


def _require_dir(path: Path, expected: str) -> Path:
    if not path.is_dir():
        raise DataError(f"folder {path} does not exist; expected {expected} there", fix="check the dataset root")
    return path


def _visible(path: Path, base: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(base).parts)


def _list_images(
    folder: Path, expected: str, suffixes: Iterable[str] = IMAGE_SUFFIXES, recursive: bool = False
) -> list[Path]:
    """Sorted image files in ``folder``; DataError when the folder is missing or holds none."""
    _require_dir(folder, expected)
    suffixes = tuple(suffixes)
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in found if p.is_file() and p.suffix.lower() in suffixes and _visible(p, folder))
    if not files:
        raise DataError(
            f"folder {folder} holds no image files ({', '.join(suffixes)}); expected {expected} there",
            fix="check the dataset root and that the archive was fully extracted",
        )
    return files


def _first(items: list, limit: int = 10) -> str:
    shown = ", ".join(str(p) for p in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _orphans(where: str, no_mask: list, no_image: list, fix: str) -> None:
    parts = []
    if no_mask:
        parts.append(f"{len(no_mask)} image(s) without a mask: {_first(no_mask)}")
    if no_image:
        parts.append(f"{len(no_image)} mask(s) without an image: {_first(no_image)}")
    if parts:
        raise DataError("; ".join(parts), where=where, fix=fix)


def _unique(cases: list[Case], where: str) -> list[Case]:
    seen: dict[str, Case] = {}
    for case in cases:
        if case.case_id in seen:
            raise DataError(
                f"case id {case.case_id!r} is used by both {seen[case.case_id].image} and {case.image}",
                where=where,
                fix="give every image a unique file name",
            )
        seen[case.case_id] = case
    return sorted(cases, key=lambda c: c.case_id)


def _pair_in_folders(
    image_dir: Path, mask_dir: Path, mask_name: Callable[[str], str], dataset: str, expected: str
) -> list[Case]:
    """Pair ``image_dir/<id>.jpg`` with ``mask_dir/mask_name(<id>)`` (the ISIC challenge layouts)."""
    images = [p for p in _list_images(image_dir, expected, (".jpg", ".jpeg")) if not p.stem.endswith("_superpixels")]
    _require_dir(mask_dir, f"the ground-truth masks of {image_dir.name}")
    cases, no_mask = [], []
    for img in images:
        mask = mask_dir / mask_name(img.stem)
        if mask.is_file():
            cases.append(Case(img.stem, img, mask, {"dataset": dataset}))
        else:
            no_mask.append(mask)
    names = {mask_name(img.stem) for img in images}
    tail = mask_name("")
    no_image = sorted(p for p in mask_dir.iterdir() if p.name.endswith(tail) and p.name not in names)
    _orphans(
        f"{dataset} ({image_dir.name})", no_mask, no_image, "restore the missing files from the official archive"
    )
    return _unique(cases, f"{dataset} ({image_dir.name})")


@register_dataset('isic2016')
def isic2016(root: str | Path) -> CasesBySplit:
    """ISIC 2016 (ISBI 2016 Part 1) in the official layout.

    ``root/ISBI2016_ISIC_Part1_{Training,Test}_Data/<id>.jpg`` with
    ``root/ISBI2016_ISIC_Part1_{Training,Test}_GroundTruth/<id>_Segmentation.png``.

    Returns:
        ``{"train": [...], "test": [...]}``.
    """
    root = _require_dir(Path(root), "the ISIC 2016 folders ISBI2016_ISIC_Part1_*")
    out = {}
    for split, part in (("train", "Training"), ("test", "Test")):
        data = root / f"ISBI2016_ISIC_Part1_{part}_Data"
        gt = root / f"ISBI2016_ISIC_Part1_{part}_GroundTruth"
        out[split] = _pair_in_folders(data, gt, lambda s: f"{s}_Segmentation.png", "isic2016", "ISIC 2016 *.jpg")
    return out


@register_dataset('isic2017')
def isic2017(root: str | Path) -> CasesBySplit:
    """ISIC 2017 (Part 1) in the official layout.

    ``root/ISIC-2017_{Training,Validation,Test_v2}_Data/<id>.jpg`` (``*_superpixels.png`` skipped) with
    ``root/ISIC-2017_{Training,Validation,Test_v2}_Part1_GroundTruth/<id>_segmentation.png``.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``.
    """
    root = _require_dir(Path(root), "the ISIC 2017 folders ISIC-2017_*")
    out = {}
    for split, part in (("train", "Training"), ("val", "Validation"), ("test", "Test_v2")):
        data = root / f"ISIC-2017_{part}_Data"
        gt = root / f"ISIC-2017_{part}_Part1_GroundTruth"
        out[split] = _pair_in_folders(data, gt, lambda s: f"{s}_segmentation.png", "isic2017", "ISIC 2017 *.jpg")
    return out


@register_dataset('ph2')
def ph2(root: str | Path) -> CasesBySplit:
    """PH2 in the official layout (no official split).

    ``root/PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp`` with
    ``root/PH2 Dataset images/IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp``. ``root`` may also be the
    ``PH2 Dataset images`` folder itself.

    Returns:
        ``{"all": [...]}`` (200 cases for the full dataset).
    """
    root = _require_dir(Path(root), "the PH2 folder 'PH2 Dataset images'")
    base = root / "PH2 Dataset images" if (root / "PH2 Dataset images").is_dir() else root
    case_dirs = sorted(d for d in base.iterdir() if d.is_dir() and re.fullmatch(r"IMD\d+", d.name))
    if not case_dirs:
        raise DataError(
            f"folder {base} holds no IMDxxx case folders; expected 'PH2 Dataset images/IMDxxx/...' under {root}",
            fix="pass the folder the PH2 archive was extracted into",
        )
    cases, no_image, no_mask = [], [], []
    for d in case_dirs:
        img = d / f"{d.name}_Dermoscopic_Image" / f"{d.name}.bmp"
        mask = d / f"{d.name}_lesion" / f"{d.name}_lesion.bmp"
        if not img.is_file():
            no_image.append(img)
        elif not mask.is_file():
            no_mask.append(mask)
        else:
            cases.append(Case(d.name, img, mask, {"dataset": "ph2"}))
    if no_image or no_mask:
        raise DataError(
            f"missing {len(no_image)} image(s) and {len(no_mask)} lesion mask(s): {_first(no_image + no_mask)}",
            where=f"ph2 ({base})",
            fix="restore the missing files from the official archive",
        )
    return {"all": _unique(cases, f"ph2 ({base})")}


@register_dataset('isic2016_ph2')
def isic2016_ph2(isic_root: str | Path, ph2_root: str | Path) -> CasesBySplit:
    """The paper's cross-dataset task: train on ISIC 2016 training data, test on all of PH2.

    The ISIC 2016 test set is not used; a validation split is carved from the training cases by the splitter.

    Returns:
        ``{"train": ISIC 2016 training cases, "test": all PH2 cases}``.
    """
    return {"train": isic2016(isic_root)["train"], "test": ph2(ph2_root)["all"]}


@register_dataset('montgomery')
def montgomery(root: str | Path) -> CasesBySplit:
    """Montgomery County chest X-rays, lung fields (no official split).

    Official layout: ``root/MontgomerySet/CXR_png/<id>.png`` with ``ManualMask/leftMask/<id>.png`` and
    ``ManualMask/rightMask/<id>.png``, merged by union at read time (``Case.extra["masks"]``; ``root`` may also be
    the ``MontgomerySet`` folder). A folder with ``images/`` and ``masks/`` (e.g. a resized copy with merged masks)
    is read with :func:`folder`.

    Returns:
        ``{"all": [...]}`` (138 cases for the full dataset), or :func:`folder`'s splits.
    """
    root = _require_dir(Path(root), "MontgomerySet/ (official) or images/ and masks/")
    if (root / "images").is_dir() or (root / "masks").is_dir() or any((root / s).is_dir() for s in _SPLIT_DIRS):
        return _folder(root, "montgomery")
    base = root / "MontgomerySet" if (root / "MontgomerySet").is_dir() else root
    images = _list_images(base / "CXR_png", "the chest X-rays MontgomerySet/CXR_png/*.png", (".png",))
    left_dir = _require_dir(base / "ManualMask" / "leftMask", "the left-lung masks ManualMask/leftMask/*.png")
    right_dir = _require_dir(base / "ManualMask" / "rightMask", "the right-lung masks ManualMask/rightMask/*.png")
    cases, no_mask = [], []
    for img in images:
        left, right = left_dir / img.name, right_dir / img.name
        missing = [p for p in (left, right) if not p.is_file()]
        no_mask.extend(missing)
        if not missing:
            cases.append(Case(img.stem, img, left, {"dataset": "montgomery", "masks": (left, right)}))
    names = {img.name for img in images}
    no_image = sorted(p for d in (left_dir, right_dir) for p in d.glob("*.png") if p.name not in names)
    _orphans(f"montgomery ({base})", no_mask, no_image, "restore the missing files from the official archive")
    return {"all": _unique(cases, f"montgomery ({base})")}


def _digest_split(folder: Path) -> list[Case]:
    files = _list_images(folder, "DigestPath images and <stem>_mask.<ext> files", recursive=True)
    masks = {(p.parent, p.stem[: -len("_mask")]): p for p in files if p.stem.endswith("_mask")}
    images = [p for p in files if not p.stem.endswith("_mask")]
    if not masks:
        raise DataError(
            f"folder {folder} holds images but no '<stem>_mask.<ext>' files; a DigestPath split needs the tissue "
            "masks of its positive images next to them",
            fix="check the dataset root (negatives alone cannot be used)",
        )
    image_keys = {(p.parent, p.stem) for p in images}
    no_image = sorted(m for key, m in masks.items() if key not in image_keys)
    _orphans(f"digestpath ({folder})", [], no_image, "restore the images or delete the stray mask files")
    cases = [Case(p.stem, p, masks.get((p.parent, p.stem)), {"dataset": "digestpath"}) for p in images]
    return _unique(cases, f"digestpath ({folder})")


@register_dataset('digestpath')
def digestpath(root: str | Path) -> CasesBySplit:
    """DigestPath 2019 tissue segmentation: images with ``<stem>_mask.<ext>`` next to them.

    Images without a mask file are negatives (``Case.mask is None``: an empty mask). Sub-folders are searched
    recursively (e.g. ``tissue-train-pos-v1/`` and ``tissue-train-neg/``). When ``root`` has ``train/``, ``val/``
    or ``test/`` sub-folders each is one split; otherwise all cases form one ``"all"`` split.

    Returns:
        ``{"train": ..., "test": ...}`` (those present) or ``{"all": [...]}``.
    """
    root = _require_dir(Path(root), "DigestPath images with <stem>_mask.<ext> files")
    splits = [s for s in _SPLIT_DIRS if (root / s).is_dir()]
    return {s: _digest_split(root / s) for s in splits} if splits else {"all": _digest_split(root)}


def _match_masks(images: list[Path], masks: list[Path], where: str) -> list[tuple[Path, Path]]:
    """Match masks to images by stem: exact, then with a mask suffix removed, then ignoring letter case (warned)."""
    by_stem: dict[str, Path] = {}
    for img in images:
        if img.stem in by_stem:
            raise DataError(
                f"images {by_stem[img.stem]} and {img} share the stem {img.stem!r}",
                where=where,
                fix="rename one of them",
            )
        by_stem[img.stem] = img
    lower: dict[str, list[str]] = {}
    for stem in by_stem:
        lower.setdefault(stem.lower(), []).append(stem)
    pairs: dict[str, Path] = {}
    no_image, by_case = [], []
    for mask in masks:
        stem = mask.stem
        stripped = [stem[: -len(s)] for s in _MASK_SUFFIXES if stem.lower().endswith(s) and len(stem) > len(s)]
        exact = [c for c in [stem, *stripped] if c in by_stem]
        loose = [s for c in [stem, *stripped] for s in lower.get(c.lower(), []) if len(lower[c.lower()]) == 1]
        target = exact[0] if exact else (loose[0] if loose else None)
        if target is None:
            no_image.append(mask)
            continue
        if target in pairs:
            raise DataError(
                f"image {by_stem[target]} has two masks, {pairs[target]} and {mask}",
                where=where,
                fix="keep one of them",
            )
        if not exact:
            by_case.append(f"{mask.name} -> {by_stem[target].name}")
        pairs[target] = mask
    no_mask = [img for stem, img in sorted(by_stem.items()) if stem not in pairs]
    _orphans(
        where, no_mask, no_image, "add the missing files or remove the orphans; name each mask like its image "
        "(optionally with a _mask or _segmentation suffix), e.g. images/a.png with masks/a.png or masks/a_mask.png"
    )
    if by_case:
        warnings.warn(
            f"{where}: {len(by_case)} mask(s) match their image only when letter case is ignored "
            f"({_first(by_case, 5)}); rename them to match exactly",
            UserWarning,
            stacklevel=4,
        )
    return [(by_stem[s], pairs[s]) for s in sorted(pairs)]


def _folder_pairs(folder: Path, dataset: str) -> list[Case]:
    images = _list_images(folder / "images", "the images (images/*.png|jpg|...)")
    masks = _list_images(folder / "masks", "the masks, one per image (masks/*.png)")
    pairs = _match_masks(images, masks, f"{dataset} ({folder})")
    return _unique([Case(img.stem, img, mask, {"dataset": dataset}) for img, mask in pairs], f"{dataset} ({folder})")


def _folder(root: Path, dataset: str) -> CasesBySplit:
    splits = [s for s in _SPLIT_DIRS if (root / s).is_dir()]
    if not splits:
        return {"all": _folder_pairs(root, dataset)}
    if (root / "images").is_dir():
        raise DataError(
            f"folder {root} has both images/ and split sub-folders {splits}; the layout is ambiguous",
            fix="keep either images/+masks/ or train/[val/]test/ sub-folders",
        )
    if "train" not in splits:
        raise DataError(
            f"folder {root} has split sub-folders {splits} but no train/; expected train/images and train/masks",
            fix="add train/ or move the cases into images/ and masks/ without split sub-folders",
        )
    return {s: _folder_pairs(root / s, dataset) for s in splits}


@register_dataset('folder')
def folder(root: str | Path) -> CasesBySplit:
    """Generic layout: ``root/images/*`` paired with ``root/masks/*`` by file stem.

    A mask may carry a ``_mask`` or ``_segmentation`` suffix (any letter case), and may differ from its image's
    stem in letter case only (warned). Optional ``train/``, ``val/``, ``test/`` sub-folders each hold
    ``images/`` and ``masks/``.

    Returns:
        ``{"all": [...]}`` without sub-folders, else ``{"train": ..., ["val": ...], ["test": ...]}``.

    Raises:
        DataError: missing/empty folders, images without masks or masks without images (first 10 listed).
    """
    return _folder(_require_dir(Path(root), "images/ and masks/, or train/ val/ test/ sub-folders"), "folder")
