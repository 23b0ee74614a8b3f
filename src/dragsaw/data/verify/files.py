"""Per-file checks behind :func:`dragsaw.data.verify.verify_cases`: one scanner that records findings, never raises.

:class:`FileScan` checks one case at a time, 2D (Pillow headers, then :mod:`dragsaw.data.io.images` decoding) or volume
(headers: nibabel for NIfTI, :func:`dragsaw.data.io.volumes.read_header` for the other formats of
:mod:`dragsaw.data.io.formats`; then voxel data), and accumulates :class:`~dragsaw.data.verify.Problem` findings
and the counts the report prints. Dataset-level checks (channel consistency, spacing outliers, duplicates) live in
:mod:`dragsaw.data.verify`, which also holds the public API.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dragsaw.data.cases import Case
from dragsaw.data.io.formats import NIFTI, NRRD, match_volume_format
from dragsaw.data.io.images import check_same_size, image_channels, open_image, read_image, read_mask
from dragsaw.data.io.labels import map_mask_values
from dragsaw.data.io.volumes import VolumeHeader, read_header, read_nrrd_header, read_voxels
from dragsaw.data.verify.problems import Level, Problem
from dragsaw.errors import ConfigError, DataError

__all__ = ["FileScan"]

_MASK_MODES = ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX")
_END_MARKERS = {"PNG": b"IEND", "JPEG": b"\xff\xd9"}  # must appear in the last _TAIL bytes of a complete file
_TAIL = 4096
_MASK_PREFIX = {"I": "32-bit mask: ", "P": "palette mask: "}  # prepended to value errors of such masks
_AFFINE_TOL = 1e-3  # of the largest voxel size
_GZIP = ("gzip", "gz")


class _Volume:
    """A non-NIfTI volume seen through the parts of a nibabel image the 3D checks use: ``shape`` (``(X, Y, Z)`` or
    ``(X, Y, Z, C)``), ``affine`` (RAS), ``zooms`` and ``dataobj`` (the voxels, read on access)."""

    def __init__(self, head: VolumeHeader, what: str) -> None:
        self.head, self.what = head, what
        self.shape = head.shape + ((head.channels,) if head.channels != 1 else ())
        self.affine = head.affine
        self.zooms = head.spacing

    @property
    def dataobj(self) -> np.ndarray:
        try:
            return read_voxels(self.head.path, self.what)
        except DataError as exc:  # reported as unreadable voxel data by the caller
            raise RuntimeError(exc.what) from exc


def _zooms(img) -> tuple[float, ...]:
    return tuple(float(z) for z in (img.zooms if isinstance(img, _Volume) else img.header.get_zooms())[:3])


def _nrrd_itemsize(kind: str) -> int:
    kind = kind.lower()
    if "char" in kind or kind.endswith("int8") or kind.endswith("int8_t"):
        return 1
    if "short" in kind or "16" in kind:
        return 2
    if "long" in kind or "64" in kind or "double" in kind:
        return 8
    return 4  # int, uint, float, (u)int32


def _nrrd_tail(path: Path, shape: tuple[int, ...], what: str) -> bool:
    """Raise DataError when a raw NRRD holds fewer bytes than its header needs; True when a gzip NRRD's trailer
    disagrees with the size its header needs (likely truncated: decode it)."""
    import nrrd

    header = read_nrrd_header(path, what)
    if header.get("data file", header.get("datafile")) is not None or int(header.get("byte skip", 0) or 0):
        return False  # detached or skipped data: left to decoding
    with open(path, "rb") as fh:
        nrrd.read_header(fh)
        offset = fh.tell()
    expected = int(np.prod(shape)) * _nrrd_itemsize(str(header.get("type", "")))
    size = path.stat().st_size
    encoding = str(header.get("encoding", "raw")).lower()
    if encoding == "raw" and size - offset < expected:
        raise DataError(f"{what} file {path} holds {size - offset} bytes of voxel data but its header needs "
                        f"{expected} (truncated)", fix="re-export or re-download it")
    if encoding in _GZIP:
        with open(path, "rb") as fh:
            fh.seek(-4, 2)
            return int.from_bytes(fh.read(4), "little") != expected % 2**32
    return False


class FileScan:
    """Checks cases one by one and accumulates findings and counts (2D and volume cases alike).

    Args:
        num_classes: K, background included.
        value_map: Optional {stored mask value: class index}.

    Attributes:
        problems: Findings so far. unreadable: files reported as unusable (not counted as read). images, masks:
            files seen. channels: {image: channel count}. sizes: Counter of "HxW" / "XxYxZ". spacings: {volume:
            voxel size}. decoded, empty, negative: cases fully decoded, of those with an empty mask, without a mask.
    """

    def __init__(self, num_classes: int, value_map: Mapping[int, int] | None) -> None:
        self.num_classes, self.value_map = num_classes, value_map
        self.problems: list[Problem] = []
        self.unreadable: set[Path] = set()
        self.images: set[Path] = set()
        self.masks: set[Path] = set()
        self.channels: dict[Path, int] = {}
        self.sizes: Counter = Counter()
        self.spacings: dict[Path, tuple[float, ...]] = {}
        self.decoded = self.empty = self.negative = 0

    def add(self, level: Level, file: Path | str, what: str, fix: str, kind: str) -> None:
        """Record a finding."""
        self.problems.append(Problem(level, str(file), what, fix, kind))

    def bad(self, file: Path, exc: Exception, kind: str = "unreadable", prefix: str = "") -> None:
        """Record a DataError as an error finding and mark ``file`` unusable."""
        self.problems.append(Problem.from_error("error", file, exc, kind, prefix))
        self.unreadable.add(file)

    # ------------------------------------------------------------------ 2D
    def header2d(self, path: Path, what: str) -> tuple[str, tuple[int, int], bool] | None:
        """``(mode, (H, W), tail_ok)`` from the header, or None after reporting why the file cannot be opened.

        ``tail_ok`` is False when a PNG/JPEG lacks its end marker near the end of the file (likely truncated).
        Warnings Pillow issues while parsing the header (corrupt EXIF, decompression bomb) become findings.
        """
        try:
            if not path.is_file():
                raise DataError(f"{what} file {path} does not exist", fix="check the dataset root and layout")
            size = path.stat().st_size
            if size == 0:
                raise DataError(f"{what} file {path} is empty (0 bytes)", fix="re-download or re-export it")
            with warnings.catch_warnings(record=True) as caught, open_image(path, what) as im:
                warnings.simplefilter("always")
                mode, (w, h), fmt, frames = im.mode, im.size, im.format, getattr(im, "n_frames", 1)
            for warning in caught:
                self.add("warning", path, f"{what} header: {warning.message}", "check or re-export the file", "header")
            if frames != 1:
                raise DataError(f"{what} file {path} has {frames} frames/pages", fix="save one 2D image per file")
            tail_ok = True
            if fmt in _END_MARKERS:
                with open(path, "rb") as fh:
                    fh.seek(max(0, size - _TAIL))
                    tail_ok = _END_MARKERS[fmt] in fh.read()
        except DataError as exc:
            self.bad(path, exc)
            return None
        except ConfigError:  # e.g. a malformed DRAGSAW_MAX_PIXELS: a problem of the command, not of this file
            raise
        except Exception as exc:  # Pillow: UnidentifiedImageError, OSError, SyntaxError, ...
            self.bad(path, DataError(
                f"{what} file {path} is not a readable image ({type(exc).__name__}: {exc})",
                fix="check that it is a complete PNG/JPEG/BMP/TIFF file (e.g. not an HTML page saved from a failed "
                "download)"))
            return None
        return mode, (h, w), tail_ok

    def case2d(self, case: Case, decode: bool) -> None:
        """Header checks of a 2D case; pixel checks too when ``decode`` or a file tail looks truncated."""
        self.images.add(case.image)
        head = self.header2d(case.image, "image")
        mode, hw, suspicious = None, None, False
        if head is not None:
            mode, hw, tail_ok = head
            suspicious |= not tail_ok
            try:
                self.channels[case.image] = image_channels(case.image)
            except DataError as exc:
                self.bad(case.image, exc, "mode")
            self.sizes[f"{hw[0]}x{hw[1]}"] += 1
            if mode.startswith("I;16"):
                self.add("info", case.image, f"16-bit image (mode {mode!r}); read and scaled by 1/65535",
                         "nothing to do", "16bit_image")
        mask_modes = {}
        for path in case.mask_files():
            self.masks.add(path)
            mhead = self.header2d(path, "mask")
            if mhead is None:
                continue
            mask_modes[path], mhw, tail_ok = mhead
            suspicious |= not tail_ok
            if mask_modes[path] not in _MASK_MODES and not mask_modes[path].startswith("I"):
                self.bad(path, DataError(f"mask file {path} has pixel mode {mask_modes[path]!r}, which cannot hold "
                                         "class indices", fix="save it as a single-channel 8- or 16-bit PNG"), "mode")
            if hw is not None:
                try:
                    check_same_size(case.image, hw, path, mhw)
                except DataError as exc:
                    self.bad(path, exc, "size_mismatch")
        if not case.mask_files():
            self.negative += 1
        if decode or suspicious:
            self.pixels2d(case, mode, mask_modes)

    def pixels2d(self, case: Case, mode: str | None, mask_modes: dict[Path, str]) -> None:
        """Pixel checks with the training readers: decoding, mask values, JPEG halos, merged masks, empty masks."""
        ok = case.image not in self.unreadable
        if mode == "F":
            self._float_image(case.image)
        hw = None
        if ok:
            try:
                hw = read_image(case.image).shape[1:]
            except DataError as exc:
                self.bad(case.image, exc)
                ok = False
        mask = None
        for path in case.mask_files():
            if path in self.unreadable:
                ok = False
                continue
            mmode = mask_modes.get(path, "")
            prefix = _MASK_PREFIX.get(mmode, "16-bit mask: " if mmode.startswith("I;16") else "")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    part = read_mask(path, self.num_classes, self.value_map)
                except DataError as exc:
                    self.bad(path, exc, "mask_values", prefix)
                    ok = False
                    continue
            for w in caught:  # the JPEG threshold warning is replaced by _jpeg_halo's finding
                if "lossy JPEG" not in str(w.message):
                    self.add("warning", path, str(w.message), "see the message", "read_warning")
            if path.suffix.lower() in (".jpg", ".jpeg"):
                self._jpeg_halo(path)
            if mask is None:
                mask = part
            elif mask.shape == part.shape:
                clash = (mask > 0) & (part > 0) & (mask != part)
                if clash.any():
                    self.add("error", path, f"gives {int(clash.sum())} pixels a foreground class different from "
                             f"{case.mask_files()[0].name}", "merge only masks of one class", "mask_clash")
                mask = np.maximum(mask, part)
        if ok and hw is not None:
            self.decoded += 1
            if mask is not None and not mask.any():
                self.empty += 1
                self.add("info", case.mask_files()[0], "empty mask (all background)", "nothing to do if the "
                         "case has no foreground; else check the mask export", "empty_mask")

    def _float_image(self, path: Path) -> None:
        try:
            with open_image(path) as im:
                arr = np.asarray(im, dtype=np.float64)
        except Exception:  # unreadable pixels: already reported by the header or decode check
            return
        self._nonfinite(path, arr, "pixel")

    def _nonfinite(self, path: Path, arr: np.ndarray, unit: str) -> None:
        if not np.issubdtype(arr.dtype, np.floating):
            return
        n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        if n_nan or n_inf:
            self.add("error", path, f"holds {n_nan} NaN and {n_inf} Inf {unit} value(s) of {arr.size}",
                     "replace the non-finite values (e.g. by the background value) and re-save", "nonfinite")

    def _jpeg_halo(self, path: Path) -> None:
        with open_image(path, "mask") as im:
            raw = np.asarray(im)
        raw = raw[..., 0] if raw.ndim == 3 else raw
        top, mid = int(raw.max()), int(((raw > 0) & (raw < 255)).sum())
        if 0 < top < 128:
            self.add("warning", path, f"JPEG mask whose values are all below 128 (max {top}): thresholding at 128 "
                     "makes it empty", "save the masks as {0, 255} or {0, 1} PNG files", "jpeg_mask")
        elif mid:
            self.add("warning", path, f"JPEG mask with a compression halo: {mid} of {raw.size} pixels "
                     f"({100 * mid / raw.size:.1f}%) hold values 1..254, thresholded at 128",
                     "save masks as PNG (lossless) to keep exact borders", "jpeg_halo")

    # ------------------------------------------------------------------ 3D
    def header3d(self, path: Path, what: str) -> tuple[object | None, bool]:
        """``(image, looks truncated)`` from the header (data not read); None after reporting a problem.

        The image is a nibabel image for NIfTI (and names of no volume format), else a view of
        :func:`dragsaw.data.io.volumes.read_header`'s result with the same ``shape``, ``affine`` and ``dataobj``.
        A raw NRRD shorter than its header needs is an error; a gzip NRRD whose trailer disagrees is "truncated".
        """
        import nibabel as nib

        if match_volume_format(path) not in (None, NIFTI):
            try:
                head = read_header(path, what)
                suspicious = _nrrd_tail(path, head.shape, what) if match_volume_format(path) is NRRD else False
            except DataError as exc:
                self.bad(path, exc)
                return None, False
            return _Volume(head, what), suspicious
        try:
            if not path.is_file() or path.stat().st_size == 0:
                raise DataError(f"{what} file {path} is missing or empty (0 bytes)", fix="check the dataset files")
            img = nib.load(str(path))
            shape, dtype = img.shape, img.get_data_dtype()
            offset = getattr(img.dataobj, "offset", None)  # the header's vox_offset may read 0 ("right after it")
            offset = img.header.get_data_offset() if offset is None else offset
            expected = int(offset) + int(np.prod(shape)) * dtype.itemsize
            size, suspicious = path.stat().st_size, False
            if path.name.lower().endswith(".nii") and size < expected:
                raise DataError(f"{what} file {path} holds {size} bytes but its header needs {expected} (truncated)",
                                fix="re-export or re-download it")
            if path.name.lower().endswith(".gz"):
                with open(path, "rb") as fh:  # the gzip trailer stores the uncompressed size modulo 2**32
                    fh.seek(-4, 2)
                    suspicious = int.from_bytes(fh.read(4), "little") != expected % 2**32
        except DataError as exc:
            self.bad(path, exc)
            return None, False
        except Exception as exc:  # nibabel: ImageFileError, HeaderDataError, OSError, EOFError, ...
            self.bad(path, DataError(f"{what} file {path} has no readable NIfTI header ({type(exc).__name__}: "
                                     f"{exc})", fix="re-export or re-download it"))
            return None, False
        return img, suspicious

    def _off_grid(self, ref: Path, ref_img, path: Path, img, what: str) -> bool:
        """Report (and return True) when ``img`` is not on ``ref_img``'s voxel grid (shape, affine)."""
        if img.shape[:3] != ref_img.shape[:3]:
            self.bad(path, DataError(f"{what} file {path} has shape {img.shape} but {ref} has {ref_img.shape}",
                                     fix="store every volume of a case on one voxel grid (same X, Y, Z)"),
                     "size_mismatch")
            return True
        diff = float(np.abs(ref_img.affine - img.affine).max())
        scale = float(np.abs(ref_img.affine[:3, :3]).max()) or 1.0
        if diff > _AFFINE_TOL * scale:
            self.bad(path, DataError(
                f"{what} affine differs from the affine of {ref} by up to {diff:.4g} (tolerance {_AFFINE_TOL:g} x "
                f"voxel size {scale:.4g})",
                fix="resample it onto the image grid, or copy the image affine into its header if the voxels already "
                "correspond"), "affine")
            return True
        return False

    def case3d(self, case: Case, decode: bool) -> None:
        """Header checks of a volume case; voxel checks too when ``decode`` or a gzip trailer looks truncated.

        ``case.extra["channels"]`` (the nnU-Net raw layout of :mod:`dragsaw.data.adapters.decathlon`) lists one 3D file
        per channel; otherwise ``case.image`` is 3D ``[X, Y, Z]`` or 4D ``[X, Y, Z, C]``.
        """
        files = tuple(Path(p) for p in case.extra.get("channels") or (case.image,))
        heads, suspicious = [], False
        for path in files:
            self.images.add(path)
            img, truncated = self.header3d(path, "image")
            suspicious |= truncated
            if img is None:
                continue
            if len(img.shape) not in ((3,) if len(files) > 1 else (3, 4)):
                form = "" if len(files) > 1 else " or a multi-channel one [X, Y, Z, C]"
                self.bad(path, DataError(f"image file {path} has shape {img.shape}",
                                         fix=f"store a 3D volume [X, Y, Z]{form}"), "shape")
            elif not (heads and self._off_grid(heads[0][0], heads[0][1], path, img, "channel")):
                heads.append((path, img))
        img = heads[0][1] if heads and len(heads) == len(files) else None
        if img is not None:
            self.channels[case.image] = sum(h.shape[3] if len(h.shape) == 4 else 1 for _, h in heads)
            self.sizes["x".join(map(str, img.shape[:3]))] += 1
            self.spacings[case.image] = _zooms(img)
        labels = []
        for path in case.mask_files():
            self.masks.add(path)
            lbl, truncated = self.header3d(path, "label")
            suspicious |= truncated
            if lbl is None:
                continue
            if len(lbl.shape) != 3 and lbl.shape[3:] != (1,):
                self.bad(path, DataError(f"label file {path} has shape {lbl.shape}",
                                         fix="store one 3D label volume [X, Y, Z] of class indices"), "shape")
            elif img is None or not self._off_grid(case.image, img, path, lbl, "label"):
                labels.append((path, lbl))
        if case.mask is None:
            self.negative += 1
        if decode or suspicious:
            self.pixels3d(case, heads, labels, complete=img is not None)

    def pixels3d(self, case: Case, heads: list, labels: list, complete: bool) -> None:
        """Voxel checks: non-finite image values, integral label values within the task's classes, empty labels."""
        ok = complete and len(labels) == len(case.mask_files())
        for path, img in heads:
            try:
                self._nonfinite(path, np.asanyarray(img.dataobj), "voxel")
            except Exception as exc:
                self.bad(path, DataError(f"image file {path} has unreadable voxel data ({type(exc).__name__}: "
                                         f"{exc})", fix="re-export or re-download it"))
                ok = False
        merged = None
        for path, lbl in labels:
            try:
                raw = np.asanyarray(lbl.dataobj).reshape(lbl.shape[:3])
                if np.issubdtype(raw.dtype, np.floating):
                    if not np.isfinite(raw).all() or (raw != np.round(raw)).any():
                        odd = np.unique(raw[~np.isfinite(raw) | (raw != np.round(raw))])[:5]
                        raise DataError(f"label file {path} holds non-integer values {odd.tolist()}",
                                        fix="store integer class indices")
                part = map_mask_values(raw.astype(np.int64), self.num_classes, self.value_map, source=path)
            except DataError as exc:
                self.bad(path, exc, "mask_values")
                ok = False
                continue
            except Exception as exc:
                self.bad(path, DataError(f"label file {path} has unreadable voxel data ({type(exc).__name__}: "
                                         f"{exc})", fix="re-export or re-download it"))
                ok = False
                continue
            merged = part if merged is None else np.maximum(merged, part)
        if ok:
            self.decoded += 1
            if merged is not None and not merged.any():
                self.empty += 1
                self.add("info", case.mask_files()[0], "empty label (all background)", "nothing to do if the case "
                         "has no foreground; else check the label export", "empty_mask")
