"""What differs between images and volumes at inference: reading checks, mapping predictions back to the input's
own geometry, and the files written (:class:`Outputs`, chosen by :func:`outputs_for`)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .._atomic import atomic_file
from ..data import image_channels, read_image, to_original_geometry, write_nifti
from ..data.io.files import require_file
from ..data.io.formats import NIFTI, is_volume, match_volume_format, volume_stem
from ..data.io.volumes import read_header
from ..errors import ConfigError, DataError
from ..metrics import resize_logits_in_blocks, softmax_entropy
from ..report import save_overlay_png
from .ensemble import distinct_logits, infer_members, mean_probabilities, probability_entropy
from .forward import InferenceSettings
from .postprocess import postprocess_prediction


__all__ = [
    "save_png_atomic", "OVERLAY_MAX_SIDE", "overlay_step", "check_input_file", "Outputs", "native_prediction",
    "outputs_for", "prediction_names",
]


def _middle_slice(volume: np.ndarray, label: np.ndarray) -> int:
    """Index along the last axis through the most foreground (the middle when there is none)."""
    counts = (label > 0).reshape(-1, label.shape[-1]).sum(0)
    return int(counts.argmax()) if counts.any() else label.shape[-1] // 2


def _overlay_item_3d(batch: dict, pred: torch.Tensor, unc: torch.Tensor | None, case_id: str, i: int = 0) -> dict:
    """A 2D overlay item from volume ``i`` of a batch, in the preprocessed space: the slice with the most
    foreground."""
    image = batch["image"][i, 0].numpy()
    label = batch["label"][i].numpy()
    k = _middle_slice(image, label)
    lo, hi = np.percentile(image[..., k], [1, 99])
    item = {"image": np.clip((image[..., k] - lo) / max(hi - lo, 1e-6), 0, 1)[None], "label": label[..., k],
            "pred": pred.numpy()[..., k], "case_id": f"{case_id} (slice {k})"}
    if unc is not None:
        item["uncertainty"] = unc.numpy()[..., k]
    return item


def save_png_atomic(array: np.ndarray, path: Path) -> Path:
    """Write a uint8/uint16 array as PNG through a temporary file and ``os.replace`` (never a partial file)."""
    with atomic_file(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)


def _member_bands(logits: Sequence[torch.Tensor], size: tuple[int, int]):
    """``(columns, [band of each member])``: every member's logits resized band by band, the same columns at once."""
    streams = [resize_logits_in_blocks(z.float(), size) for z in logits]
    for parts in zip(*streams):
        yield parts[0][0], [band for _, band in parts]


def _native_maps_2d(logits: Sequence[torch.Tensor], unc: torch.Tensor | None, size: tuple[int, int]):
    """Arg-max ``[H, W]`` int64, normalised softmax entropy ``[H, W]`` float32 (tensors on the CPU) and UAFS map
    (float32 array ``[H, W]`` or ``None``) at the native ``size`` of one case (``logits``: one ``[1, K, h, w]`` per
    ensemble member, ``unc`` ``[1, 1, h, w]``).

    The logits are resized band by band (:func:`dragsaw.metrics.resize_logits_in_blocks`) and each band is reduced
    at once, so memory holds these three maps plus one band, not ``K x H x W`` floats. One member: the arg-max and
    entropy of its resized logits; several: of the mean of their softmax probabilities at the native size.
    """
    pred = torch.empty(size, dtype=torch.int64)
    entropy = torch.empty(size, dtype=torch.float32)
    for cols, bands in _member_bands(distinct_logits(logits), size):
        if len(bands) == 1:
            pred[:, cols] = bands[0].argmax(1)[0].cpu()
            entropy[:, cols] = softmax_entropy(bands[0])[0, 0].cpu()
        else:
            p = mean_probabilities(bands)
            pred[:, cols] = p.argmax(1)[0].cpu()
            entropy[:, cols] = probability_entropy(p)[0, 0].cpu()
            del p
        del bands
    return pred, entropy, None if unc is None else _native_uncertainty(unc, size)


def _native_uncertainty(unc: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The UAFS map ``[1, 1, h, w]`` resized to ``size`` (bilinear, band by band) and clamped to [0, 1]: float32
    ``[H, W]``."""
    out = np.empty(size, dtype=np.float32)
    for cols, band in resize_logits_in_blocks(unc.float(), size):
        out[:, cols] = band[0, 0].clamp(0, 1).cpu().numpy()
    return out


def _write_prediction(out_dir: Path, stem: str, image: np.ndarray, pred: np.ndarray, probs: np.ndarray, unc,
                      num_classes: int):
    """``pred``: uint8 arg-max [H, W]; ``probs``: the foreground probability as uint8 [H, W] (``round(255 p)``) for
    binary models, the class probabilities as float16 [K, H, W] otherwise; ``unc``: float [H, W] in [0, 1] or None."""
    written = [save_png_atomic(pred * 255 if num_classes == 2 else pred, out_dir / f"{stem}_mask.png")]
    if num_classes == 2:
        written.append(save_png_atomic(probs, out_dir / f"{stem}_prob.png"))
    else:
        target = out_dir / f"{stem}_probs.npy"
        with atomic_file(target) as tmp, open(tmp, "wb") as handle:
            np.save(handle, probs)
        written.append(target)
    if unc is not None:
        written.append(save_png_atomic((unc * 255).round().astype(np.uint8), out_dir / f"{stem}_uncertainty.png"))
    step = overlay_step(pred.shape)  # a preview: large images are subsampled so the overlay costs bounded memory
    if step > 1:
        image = image[..., ::step, ::step]
        pred = pred[::step, ::step]
        unc = None if unc is None else unc[::step, ::step]
    written.append(save_overlay_png(image, pred, out_dir / f"{stem}_overlay.png", uncertainty=unc))
    return written


OVERLAY_MAX_SIDE = 2048
"""The ``_overlay.png`` preview of a larger image is subsampled to at most this many pixels on its long side."""


def overlay_step(shape: Sequence[int]) -> int:
    """The integer subsampling step of an ``[H, W]`` image's overlay: 1 up to :data:`OVERLAY_MAX_SIDE` pixels on the
    long side, else ``ceil(max(H, W) / OVERLAY_MAX_SIDE)`` (the mask and probability PNGs stay at full size)."""
    return max(1, -(-max(int(v) for v in shape) // OVERLAY_MAX_SIDE))


def _stem(path: Path) -> str:
    """A volume's case name (:func:`dragsaw.data.io.formats.volume_stem`), else the file stem."""
    return volume_stem(path) or path.stem


def _predict_image(model, loaded: dict, path: Path, out_dir: Path, config, settings: InferenceSettings,
                   device, postprocess: str = "none") -> list[Path]:
    dc = config.data
    size = loaded["size"]
    members, unc = infer_members(model, loaded["image"].to(device), settings)
    # native-size outputs made a band of columns at a time: memory holds the outputs and one band of K x H x w
    # floats, never the whole K x H x W resized logits and their softmax; an ensemble's members are resized to the
    # native size and their softmax probabilities averaged there
    binary = dc.num_classes == 2
    pred = np.empty(size, dtype=np.uint8)
    probs = np.empty(size if binary else (members[0].shape[1], *size), dtype=np.uint8 if binary else np.float16)
    for cols, bands in _member_bands(members, size):
        p = mean_probabilities(bands)[0].cpu()
        del bands
        pred[:, cols] = p.argmax(0).numpy()  # class indices < 256, cast as .astype(np.uint8) would
        probs[..., cols] = (p[1].numpy() * 255).round() if binary else p.numpy()  # cast to uint8 / float16
        del p
    pred = postprocess_prediction(pred, dc.num_classes, postprocess)  # the mask only; probabilities stay
    unc = None if unc is None else _native_uncertainty(unc, size)
    return _write_prediction(out_dir, path.stem, loaded["native"].numpy(), pred, probs, unc, dc.num_classes)


def _predict_volume(model, loaded: dict, path: Path, out_dir: Path, config, settings: InferenceSettings, device,
                    probabilities: bool, postprocess: str = "none") -> list[Path]:
    members, unc = infer_members(model, loaded["image"].to(device), settings)
    meta = loaded["meta"]
    stem = _stem(path)
    # one member: the arg-max of its logits; several: of their mean softmax probabilities (network space, one grid)
    distinct = distinct_logits(members)
    scores = distinct[0][0] if len(distinct) == 1 else mean_probabilities([z[0] for z in distinct], 0)
    pred = to_original_geometry(scores.argmax(0).cpu().numpy(), meta)
    pred = postprocess_prediction(np.asarray(pred), config.data.num_classes, postprocess)
    written = [write_nifti(np.asarray(pred), meta["affine"], out_dir / f"{stem}_seg.nii.gz")]
    if probabilities:
        probs = to_original_geometry(mean_probabilities([z[0] for z in members], 0).cpu().numpy(), meta)
        written.append(write_nifti(np.asarray(probs, dtype=np.float32), meta["affine"], out_dir / f"{stem}_probs.nii.gz"))
    if unc is not None:
        u = to_original_geometry(unc[0, 0].float().cpu().numpy(), meta)
        written.append(write_nifti(np.asarray(u, dtype=np.float32), meta["affine"], out_dir / f"{stem}_uncertainty.nii.gz"))
    return written


def check_input_file(path: Path) -> None:
    """Raise a :class:`DataError` naming ``path`` when it is missing or empty (a DICOM series folder passes)."""
    if path.is_dir() and is_volume(path):
        return
    require_file(path, "input", missing_fix="check the path", empty_fix="copy or export it again")


def _check_channels(path: Path, channels: int, in_channels: int | None, kind: str, hint: str = "") -> None:
    if in_channels is not None and channels != in_channels:
        raise DataError(
            f"{path} has {channels} channel(s) but this run's model takes {in_channels}-channel {kind}", fix=f"convert "
            f"it to {in_channels} channel(s){hint} or use a run trained on such inputs"
        )


class Outputs(abc.ABC):
    """What differs between predicting images and volumes, behind one interface: which files are inputs, how an
    input is checked and read, how per-case maps go back to the file's geometry, what files are written."""

    kind: str  # "2D image" / "volume"
    files: str  # what to give instead, in messages

    @abc.abstractmethod
    def accepts(self, path: Path) -> bool:
        """Whether ``path`` is an input of this kind (by its suffix)."""

    @abc.abstractmethod
    def stem(self, path: Path) -> str:
        """The name the outputs of ``path`` start with."""

    @abc.abstractmethod
    def check_input(self, path: Path, in_channels: int | None) -> None:
        """Raise a DataError naming ``path`` when it is no readable input with ``in_channels`` channels."""

    @abc.abstractmethod
    def load(self, reader, path: Path) -> dict:
        """``path`` read for the network by ``reader``: ``{"image": [1, C, *S], ...}``."""

    @abc.abstractmethod
    def native_maps(self, logits: Sequence[torch.Tensor], unc: torch.Tensor | None, meta: dict):
        """Arg-max (int64), normalised softmax entropy (float32, tensors on the CPU) and UAFS map (or ``None``) of
        one case (``logits``: one ``[1, K, *S]`` per ensemble member, ``unc`` ``[1, 1, *S]``) in the file's own
        geometry ``meta["shape"]``; several members: of their mean softmax probabilities."""

    @abc.abstractmethod
    def spacing(self, meta: dict) -> list[float] | None:
        """Voxel spacing in mm for HD95 (``None``: pixels)."""

    @abc.abstractmethod
    def overlay_item(self, batch: dict, i: int, pred_pre: torch.Tensor, pred: torch.Tensor, native: torch.Tensor,
                     u_native, unc_pre: torch.Tensor | None) -> dict:
        """One item for :func:`dragsaw.report.plot_overlays` from case ``i`` of ``batch``."""

    @abc.abstractmethod
    def names(self, path: Path, num_classes: int, uncertainty: bool, probabilities: bool) -> list[str]:
        """The names of the files :func:`predict_files` writes for ``path``."""

    @abc.abstractmethod
    def predict(self, model, loaded: dict, path: Path, out_dir: Path, config, settings, device,
                probabilities: bool, postprocess: str = "none") -> list[Path]:
        """Predict one loaded input and write its files into ``out_dir``; returns their paths."""


class _ImageOutputs(Outputs):
    kind, files = "2D image", "image files"

    def accepts(self, path: Path) -> bool:
        return not is_volume(path)

    def stem(self, path: Path) -> str:
        return path.stem

    def check_input(self, path: Path, in_channels: int | None) -> None:
        hint = {1: " (grayscale)", 3: " (RGB)"}.get(in_channels, "")
        _check_channels(path, image_channels(path), in_channels, "images", hint)  # DataError for non-images

    def load(self, reader, path: Path) -> dict:
        item = reader.read_input(path)
        return {"image": item["image"][None], "size": tuple(item["meta"]["shape"]),
                "native": torch.as_tensor(np.ascontiguousarray(read_image(path)))}  # tensors: shared from workers

    def native_maps(self, logits, unc, meta):  # a band of columns at a time (never K x H x W floats at once)
        return _native_maps_2d(logits, unc, tuple(meta["shape"]))

    def spacing(self, meta):
        return None

    def overlay_item(self, batch, i, pred_pre, pred, native, u_native, unc_pre):
        return {"image": read_image(batch["meta"][i]["path"]), "label": native.numpy(), "pred": pred.numpy(),
                "case_id": batch["case_id"][i], **({"uncertainty": u_native} if u_native is not None else {})}

    def names(self, path, num_classes, uncertainty, probabilities):
        stem = path.stem
        return [f"{stem}_mask.png", f"{stem}_prob.png" if num_classes == 2 else f"{stem}_probs.npy",
                *([f"{stem}_uncertainty.png"] if uncertainty else []), f"{stem}_overlay.png"]

    def predict(self, model, loaded, path, out_dir, config, settings, device, probabilities, postprocess="none"):
        return _predict_image(model, loaded, path, out_dir, config, settings, device, postprocess)


class _VolumeOutputs(Outputs):
    kind, files = "volume", "NIfTI volumes"

    def accepts(self, path: Path) -> bool:
        return is_volume(path)

    def stem(self, path: Path) -> str:
        return _stem(path)

    def check_input(self, path: Path, in_channels: int | None) -> None:
        import nibabel as nib

        if match_volume_format(path) is not NIFTI:  # NRRD, DICOM series, MetaImage: DataError names the fix
            head = read_header(path, "input")
            _check_channels(path, head.channels, in_channels, "volumes")
            return
        try:
            shape = nib.load(str(path)).shape
        except Exception as exc:
            raise DataError(f"{path} is not a readable NIfTI volume ({type(exc).__name__}: {exc})", fix="check that "
                            "it is a complete .nii/.nii.gz file") from exc
        _check_channels(path, shape[3] if len(shape) == 4 else 1, in_channels, "volumes (modalities on the 4th axis)")

    def load(self, reader, path: Path) -> dict:
        item = reader.read_input(path)
        return {"image": item["image"][None], "meta": item["meta"]}

    def native_maps(self, logits, unc, meta):
        logits = distinct_logits(logits)
        if len(logits) == 1:
            scores, entropy = logits[0], softmax_entropy(logits[0].float())
        else:  # the members' mean softmax probabilities in the network space (one grid: the plans agree)
            scores = mean_probabilities(logits)
            entropy = probability_entropy(scores)
        pred = torch.from_numpy(np.asarray(to_original_geometry(scores[0].argmax(0).cpu().numpy(), meta))).long()
        maps = [entropy[0, 0]] + ([] if unc is None else [unc[0, 0]])
        mapped = to_original_geometry(torch.stack(maps).float().cpu(), meta)  # one resampling for both
        return pred, mapped[0], (None if unc is None else mapped[1])

    def spacing(self, meta):
        return [float(v) for v in np.sqrt((np.asarray(meta["affine"])[:3, :3] ** 2).sum(0))]

    def overlay_item(self, batch, i, pred_pre, pred, native, u_native, unc_pre):
        return _overlay_item_3d(batch, pred_pre, unc_pre, batch["case_id"][i], i)

    def names(self, path, num_classes, uncertainty, probabilities):
        stem = _stem(path)
        return [f"{stem}_seg.nii.gz", *([f"{stem}_probs.nii.gz"] if probabilities else []),
                *([f"{stem}_uncertainty.nii.gz"] if uncertainty else [])]

    def predict(self, model, loaded, path, out_dir, config, settings, device, probabilities, postprocess="none"):
        return _predict_volume(model, loaded, path, out_dir, config, settings, device, probabilities, postprocess)


def native_prediction(logits: torch.Tensor, meta: dict, spatial_dims: int) -> torch.Tensor:
    """The arg-max of one case's ``logits`` ``[1, K, *S]`` (network space) in the file's own geometry
    ``meta["shape"]``: int64 on the CPU (images: logits resized before the arg-max; volumes: mapped back with the
    file's affine)."""
    return outputs_for(spatial_dims).native_maps([logits], None, meta)[0]


def outputs_for(spatial_dims: int) -> Outputs:
    """The input/output hooks of a ``spatial_dims``-D model (the one place inference looks at the dimension)."""
    if spatial_dims not in (2, 3):
        raise ConfigError(f"inference supports 2D and 3D models, got spatial_dims={spatial_dims!r}")
    return _ImageOutputs() if spatial_dims == 2 else _VolumeOutputs()


def prediction_names(path: str | Path, *, spatial_dims: int, num_classes: int, uncertainty: bool,
                     probabilities: bool = False) -> list[str]:
    """The names of the files :func:`predict_files` writes for the input ``path`` (see there for what they hold).

    ``uncertainty``: the model has UAFS blocks; ``probabilities``: 3D class probabilities were asked for.
    """
    return outputs_for(spatial_dims).names(Path(path), num_classes, uncertainty, probabilities)
