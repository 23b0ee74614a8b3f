"""A corpus of bad (and a few good) inputs: each entry builds a tiny dataset in a temporary folder.

2D entries use the generic folder layout (``images/`` + ``masks/``, optionally under ``train/``/``test/``) and are
verified with ``verify_dataset("folder", root)``; volume entries return explicit ``Case`` lists of NIfTI files
written by nibabel (no 3D adapter is needed) and are verified with ``verify_cases``.

Every entry states the worst level the verification must report (``"ok"``: no finding at all), a substring the
finding at that level must contain (the offending file or folder name), further words it must contain after a
full check, and whether the problem is visible from headers alone (``header=True``: ``quick=True`` must find it
even when no pixel is decoded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from dragsaw.data.cases import Case

H, W = 8, 10  # size of the 2D images


@dataclass
class Built:
    """What a builder made: a dataset folder (generic layout) or explicit cases (volumes)."""

    root: Path | None = None
    cases: dict[str, list[Case]] | None = None


@dataclass(frozen=True)
class BadInput:
    """One corpus entry (see the module docstring)."""

    name: str
    build: Callable[[Path], Built]
    level: str
    substring: str
    also: tuple[str, ...] = ()
    header: bool = True
    num_classes: int = 2
    options: dict = field(default_factory=dict)


# ------------------------------------------------------------------ writers
def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    """Write ``array`` with Pillow (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, **kwargs)
    return path


def rgb(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """Random (incompressible) uint8 RGB ``[h, w, 3]``; distinct seeds give distinct bytes."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def mask(h: int = H, w: int = W, fg: int = 255) -> np.ndarray:
    """A {0, fg} uint8 mask ``[h, w]`` with a central square."""
    out = np.zeros((h, w), np.uint8)
    out[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = fg
    return out


def pair(root: Path, stem: str, seed: int = 0, image: np.ndarray | None = None, msk: np.ndarray | None = None,
         image_name: str | None = None, mask_name: str | None = None) -> tuple[Path, Path]:
    """Write ``root/images/<stem>.png`` and ``root/masks/<stem>.png`` (defaults: random RGB, square mask)."""
    img = save(root / "images" / (image_name or f"{stem}.png"), rgb(seed) if image is None else image)
    return img, save(root / "masks" / (mask_name or f"{stem}.png"), mask() if msk is None else msk)


def clean_folder(root: Path, n: int = 3, start: int = 0) -> Path:
    """``n`` good RGB pairs named ``ok000``... in the generic layout."""
    for i in range(start, start + n):
        pair(root, f"ok{i:03d}", seed=1000 + i)
    return root


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut ``path`` to ``keep`` of its bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), shift=(0.0, 0.0, 0.0)) -> Path:
    """Write a NIfTI file with a diagonal affine (``spacing``) translated by ``shift`` (mm)."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = shift
    nib.Nifti1Image(array, affine).to_filename(str(path))
    return path


def volume_cases(root: Path, n: int = 3, edit: Callable[[int, dict], None] | None = None) -> Built:
    """``n`` good volume cases ``v0..``: float32 images ``[6, 5, 4]`` with {0, 1} labels; ``edit(i, spec)`` may
    change a case's ``image``/``label`` arrays, ``spacing``, ``label_shift``, ``label_spacing`` or ``suffix``."""
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        rng = np.random.default_rng(i)
        label = np.zeros((6, 5, 4), np.uint8)
        label[1:4, 1:4, 1:3] = 1
        spec = {"image": rng.standard_normal((6, 5, 4)).astype(np.float32), "label": label,
                "spacing": (1.0, 1.0, 2.0), "label_shift": (0.0, 0.0, 0.0), "suffix": ".nii.gz"}
        if edit is not None:
            edit(i, spec)
        img = nifti(root / f"v{i}{spec['suffix']}", spec["image"], spec["spacing"])
        lbl = nifti(root / f"v{i}_label{spec['suffix']}", spec["label"], spec.get("label_spacing", spec["spacing"]),
                    spec["label_shift"])
        cases.append(Case(f"v{i}", img, lbl))
    return Built(cases={"all": cases})


# ------------------------------------------------------------------ builders (2D)
def _folder(build: Callable[[Path], object]) -> Callable[[Path], Built]:
    def run(tmp: Path) -> Built:
        root = tmp / "ds"
        build(root)
        return Built(root=root)
    return run


def _truncated(suffix: str) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        clean_folder(root)
        img, _ = pair(root, "bad", image=rgb(7, 32, 40), msk=mask(32, 40), image_name=f"bad{suffix}")
        truncate(img)
    return build


def _zero_byte(root: Path) -> None:
    clean_folder(root)
    img, _ = pair(root, "empty")
    img.write_bytes(b"")


def _not_image(root: Path) -> None:
    clean_folder(root)
    img, _ = pair(root, "page")
    img.write_text("<html><body>404 Not Found</body></html>\n")


def _size_mismatch(root: Path) -> None:
    clean_folder(root)
    pair(root, "small", msk=mask(H // 2, W // 2))


def _rgb_mask(root: Path) -> None:
    clean_folder(root)
    colour = np.stack([mask(), mask(fg=0), mask()], -1)  # red/blue differ from green
    pair(root, "colour", msk=colour)


def _binary_012(root: Path) -> None:
    clean_folder(root)
    m = mask(fg=1)
    m[0, 0] = 2
    pair(root, "three", msk=m)


def _float_tiff(values: tuple[float, ...]) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        for i in range(2):
            pair(root, f"f{i}", image=np.random.default_rng(i).random((H, W), dtype=np.float32), image_name=f"f{i}.tif")
        arr = np.random.default_rng(9).random((H, W), dtype=np.float32)
        arr.flat[: len(values)] = values
        pair(root, "nonfinite", image=arr, image_name="nonfinite.tif")
    return build


def _png16(mask_value: int | None) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        for i in range(3):
            deep = np.random.default_rng(i).integers(0, 65536, (H, W), dtype=np.uint16)
            m = mask(fg=1).astype(np.uint16)
            if mask_value is not None and i == 2:
                m *= mask_value
            pair(root, f"deep{i}", image=deep, msk=m)
    return build


def _letter_case(root: Path) -> None:
    clean_folder(root)
    pair(root, "Case1", mask_name="case1.png")


def _duplicate(root: Path) -> None:
    clean_folder(root)
    pair(root, "a_copy", seed=1000)  # same bytes as ok000


def _duplicate_across(tmp_root: Path) -> None:
    clean_folder(tmp_root / "train")
    pair(tmp_root / "test", "leak", seed=1001)  # same bytes as train/ok001


def _jpeg_mask(fg: int, quality: int) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        clean_folder(root)
        _, path = pair(root, "lossy", image=rgb(5, 16, 16), msk=mask(16, 16, fg), mask_name="lossy.jpg")
        save(path, mask(16, 16, fg), quality=quality)
    return build


def _empty_mask(root: Path) -> None:
    clean_folder(root)
    pair(root, "blank", msk=np.zeros((H, W), np.uint8))


def _channel_mismatch(root: Path) -> None:
    clean_folder(root)
    pair(root, "gray", image=rgb(3)[..., 0])


def _multi_frame(root: Path) -> None:
    clean_folder(root)
    pair(root, "pages", image_name="pages.tif")
    frames = [Image.fromarray(rgb(i)) for i in range(3)]
    frames[0].save(root / "images" / "pages.tif", save_all=True, append_images=frames[1:])


def _cmyk_mask(root: Path) -> None:
    clean_folder(root)
    pair(root, "cmyk", mask_name="cmyk.tif")
    Image.fromarray(np.stack([mask()] * 3, -1)).convert("CMYK").save(root / "masks" / "cmyk.tif")


def _palette(root: Path) -> None:
    for i in range(3):
        m = mask(fg=1)
        m[0, :] = 2
        pal = Image.fromarray(m)
        pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])  # L -> P: the stored values become palette indices
        _, msk_path = pair(root, f"p{i}", seed=i)
        pal.save(msk_path)


def _orphan_image(root: Path) -> None:
    clean_folder(root)
    save(root / "images" / "lonely.png", rgb(4))


def _orphan_mask(root: Path) -> None:
    clean_folder(root)
    save(root / "masks" / "stray.png", mask())


def _empty_folder(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()


# ------------------------------------------------------------------ builders (volumes)
def _vol(edit: Callable[[int, dict], None] | None = None, n: int = 3) -> Callable[[Path], Built]:
    return lambda tmp: volume_cases(tmp / "vol", n, edit)


def _truncated_nifti(suffix: str) -> Callable[[Path], Built]:
    def edit(i: int, spec: dict) -> None:
        spec["suffix"] = suffix
        if i == 1:  # large enough (16 KiB of noise) for the header to survive the cut
            spec["image"] = np.random.default_rng(5).standard_normal((16, 16, 16)).astype(np.float32)
            spec["label"] = np.zeros((16, 16, 16), np.uint8)

    def run(tmp: Path) -> Built:
        built = volume_cases(tmp / "vol", 3, edit)
        truncate(built.cases["all"][1].image, 0.7)
        return built
    return run


def _edit_case(index: int, **changes) -> Callable[[int, dict], None]:
    def edit(i: int, spec: dict) -> None:
        if i == index:
            for key, value in changes.items():
                spec[key] = value(spec) if callable(value) else value
    return edit


def _nan_volume(spec: dict) -> np.ndarray:
    arr = spec["image"].copy()
    arr[0, 0, 0], arr[1, 1, 1] = np.nan, np.inf
    return arr


def _label_values(spec: dict) -> np.ndarray:
    lbl = spec["label"].copy()
    lbl[0, 0, 0] = 5
    return lbl


def _channel_files(bad: str) -> Callable[[Path], Built]:
    """nnU-Net raw cases ``c<i>_0000``/``c<i>_0001`` (one 3D file per channel); case 1's second channel is
    shifted by 2 mm (``bad="affine"``) or holds a NaN (``bad="nan"``)."""
    def run(tmp: Path) -> Built:
        root = tmp / "nnunet"
        root.mkdir(parents=True)
        cases = []
        for i in range(3):
            rng = np.random.default_rng(i)
            files = []
            for c in range(2):
                arr = rng.standard_normal((6, 5, 4)).astype(np.float32)
                shift = (0.0, 0.0, 0.0)
                if i == 1 and c == 1:
                    shift = (2.0, 0.0, 0.0) if bad == "affine" else shift
                    arr[0, 0, 0] = np.nan if bad == "nan" else arr[0, 0, 0]
                files.append(nifti(root / f"c{i}_{c:04d}.nii.gz", arr, (1.0, 1.0, 2.0), shift))
            label = nifti(root / f"c{i}.nii.gz", (rng.random((6, 5, 4)) < 0.3).astype(np.uint8), (1.0, 1.0, 2.0))
            cases.append(Case(f"c{i}", files[0], label, {"channels": tuple(files)}))
        return Built(cases={"all": cases})
    return run


def _duplicate_ids(tmp: Path) -> Built:
    clean_folder(tmp / "ds")
    imgs = sorted((tmp / "ds" / "images").iterdir())
    msks = sorted((tmp / "ds" / "masks").iterdir())
    return Built(cases={"train": [Case("same", imgs[0], msks[0])], "test": [Case("same", imgs[1], msks[1])]})


def _clean_mixed_negative(tmp: Path) -> Built:
    clean_folder(tmp / "ds")
    neg = save(tmp / "ds" / "images" / "neg.png", rgb(77))
    cases = [Case(p.stem, p, tmp / "ds" / "masks" / p.name) for p in sorted((tmp / "ds" / "images").glob("ok*"))]
    return Built(cases={"all": [*cases, Case("neg", neg, None)]})


CORPUS: list[BadInput] = [
    BadInput("clean_2d", _folder(clean_folder), "ok", ""),
    BadInput("clean_volumes", _vol(), "ok", ""),
    BadInput("negative_case_without_mask", _clean_mixed_negative, "ok", ""),
    BadInput("palette_mask_3_classes", _folder(_palette), "ok", "", num_classes=3),
    BadInput("truncated_png", _folder(_truncated(".png")), "error", "bad.png", ("decoded",)),
    BadInput("truncated_jpeg", _folder(_truncated(".jpg")), "error", "bad.jpg", ("decoded",)),
    BadInput("truncated_nifti_gz", _truncated_nifti(".nii.gz"), "error", "v1.nii.gz", ("unreadable voxel data",)),
    BadInput("truncated_nifti", _truncated_nifti(".nii"), "error", "v1.nii", ("truncated",)),
    BadInput("zero_byte_image", _folder(_zero_byte), "error", "empty.png", ("0 bytes",)),
    BadInput("not_an_image", _folder(_not_image), "error", "page.png", ("not a readable image",)),
    BadInput("size_mismatch", _folder(_size_mismatch), "error", "small.png", ("4x5",)),
    BadInput("rgb_mask_channels_differ", _folder(_rgb_mask), "error", "colour.png", ("colour channels differ",),
             header=False),
    BadInput("binary_task_values_012", _folder(_binary_012), "error", "three.png", ("{2}",), header=False),
    BadInput("float_tiff_nan_inf", _folder(_float_tiff((np.nan, np.inf))), "error", "nonfinite.tif",
             ("1 NaN and 1 Inf",)),
    BadInput("float_tiff_finite", _folder(_float_tiff(())), "error", "f0.tif", ("'F'",)),
    BadInput("nifti_nan_inf", _vol(_edit_case(2, image=_nan_volume)), "error", "v2.nii.gz", ("1 NaN and 1 Inf",),
             header=False),
    BadInput("nifti_affine_mismatch", _vol(_edit_case(1, label_shift=(2.0, 0.0, 0.0))), "error", "v1_label.nii.gz",
             ("affine",)),
    BadInput("nifti_shape_mismatch", _vol(_edit_case(0, label=np.zeros((6, 5, 3), np.uint8))), "error",
             "v0_label.nii.gz", ("(6, 5, 3)",)),
    BadInput("nifti_label_values", _vol(_edit_case(1, label=_label_values)), "error", "v1_label.nii.gz", ("{5}",),
             header=False),
    BadInput("nifti_spacing_outlier", _vol(_edit_case(2, spacing=(1.0, 1.0, 8.0))), "warning", "v2.nii.gz",
             ("spacing",)),
    BadInput("channel_files_clean", _channel_files(""), "ok", ""),
    BadInput("channel_file_affine_mismatch", _channel_files("affine"), "error", "c1_0001.nii.gz", ("channel affine",)),
    BadInput("channel_file_nan", _channel_files("nan"), "error", "c1_0001.nii.gz", ("1 NaN",), header=False),
    BadInput("empty_folder", _folder(_empty_folder), "error", "images", ("no image files",)),
    BadInput("missing_folder", lambda tmp: Built(root=tmp / "no_such_dataset"), "error", "no_such_dataset",
             ("does not exist",)),
    BadInput("orphan_image", _folder(_orphan_image), "error", "lonely.png", ("without a mask",)),
    BadInput("orphan_mask", _folder(_orphan_mask), "error", "stray.png", ("without an image",)),
    BadInput("png16_image", _folder(_png16(None)), "info", "deep0.png", ("16-bit",)),
    BadInput("png16_mask_value_1000", _folder(_png16(1000)), "error", "deep2.png", ("16-bit mask", "{1000}"),
             header=False),
    BadInput("letter_case_pair", _folder(_letter_case), "warning", "case1.png", ("letter case",)),
    BadInput("duplicate_content", _folder(_duplicate), "warning", "ok000.png", ("same bytes",)),
    BadInput("duplicate_across_splits", _folder(_duplicate_across), "error", "leak.png", ("same bytes", "'test'")),
    BadInput("duplicate_case_id", _duplicate_ids, "error", "ok001.png", ("used twice",)),
    BadInput("jpeg_mask_halo", _folder(_jpeg_mask(255, 75)), "warning", "lossy.jpg", ("halo",), header=False),
    BadInput("jpeg_mask_below_threshold", _folder(_jpeg_mask(1, 95)), "warning", "lossy.jpg", ("below 128",),
             header=False),
    BadInput("empty_mask", _folder(_empty_mask), "info", "blank.png", ("empty mask",), header=False),
    BadInput("channel_mismatch", _folder(_channel_mismatch), "error", "gray.png", ("1 channel",)),
    BadInput("multi_frame_tiff", _folder(_multi_frame), "error", "pages.tif", ("3 frames",)),
    BadInput("cmyk_mask", _folder(_cmyk_mask), "error", "cmyk.tif", ("'CMYK'",)),
]
"""All entries; names are unique."""
