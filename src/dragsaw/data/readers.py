"""Case readers: what differs between 2D images and 3D volumes, behind one small interface.

:class:`~dragsaw.data.dataset.SegmentationDataset`, the engine's data module and ``dragsaw predict`` work with any
``spatial_dims`` through a reader. A reader knows how to check a list of cases (channels, headers), read one case
into the network's space (2D: resize to the input size; 3D: RAS, modality normalisation, resampling to the target
spacing), keep what is needed to map predictions back to the file's own geometry (``meta``), and build the training
and evaluation transforms. Everything after that (caching, sampling, batching, evaluation, prediction) is shared.

Both readers return the same item layout from :meth:`read`::

    {"image": float32 [C, *S], "label": int64 [*S], "label_native": int64 [*S0], "meta": {"shape": S0, "path", ...}}

where ``S`` is the network-space shape and ``S0`` the file's own.
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dragsaw.data.cases import Case
from dragsaw.data.io.images import image_channels, read_case
from dragsaw.data.io.labels import check_value_map
from dragsaw.data.io.volumes import case_to_dict, check_case_geometry
from dragsaw.data.transforms.common import as_float_tuple, check_size
from dragsaw.data.transforms.images import eval_transforms, resize_transforms
from dragsaw.data.transforms.images import train_transforms as image_train_transforms
from dragsaw.data.transforms.intensity import intensity_shift, parse_shift
from dragsaw.data.transforms.volumes import preprocess_transforms
from dragsaw.data.transforms.volumes import train_transforms as volume_train_transforms
from dragsaw.errors import ConfigError, DataError

__all__ = ["CaseReader", "ImageReader", "VolumeReader"]

Transform = Callable[[dict], dict]


class CaseReader(abc.ABC):
    """The per-dimension part of the data pipeline (subclassed by :class:`ImageReader` and :class:`VolumeReader`).

    Attributes:
        spatial_dims: 2 or 3.
        num_classes: K, background included.
        input_size: the network input (2D: the whole resized image; 3D: the training patch and sliding window).
        stackable: evaluation items all share one shape, so they can be batched.
    """

    spatial_dims: int
    stackable: bool
    num_classes: int
    input_size: tuple[int, ...]

    @abc.abstractmethod
    def check(self, cases: Sequence[Case]) -> int:
        """Check ``cases`` from their headers (nothing decoded) and return their common channel count.

        Raises:
            DataError: unreadable headers or channel counts that differ (every bad file named).
        """

    @abc.abstractmethod
    def read(self, case: Case, *, native: bool) -> dict[str, Any]:
        """One case in network space: ``{"image": float32 [C, *S], "label": int64 [*S], "meta": {...}}`` and, with
        ``native``, ``"label_native"``: int64 ``[*S0]`` in the file's own geometry. A case without a mask is a
        negative case (all background)."""

    @abc.abstractmethod
    def transform(self, *, train: bool, seed: int | None = None, intensity: bool = False) -> Transform | None:
        """The per-item transform after :meth:`read` (augmentation in training, normalisation where it is not part
        of reading); ``None`` for none."""

    def read_input(self, path: str | Path) -> dict[str, Any]:
        """An unlabelled file read for prediction: ``{"image": float32 [C, *S] (transformed as in evaluation),
        "meta": {...}}``."""
        item = self.read(Case(Path(path).name, Path(path), None), native=False)
        transform = self.transform(train=False)
        out = transform({"image": item["image"], "label": item["label"]}) if transform is not None else item
        return {"image": out["image"], "meta": item["meta"]}


class ImageReader(CaseReader):
    """2D images and masks (PNG, JPEG, BMP, TIFF), resized to one input size.

    Args:
        input_size: Network input size ``(H, W)`` (configs in the paper's style give (W, H): swap them).
        num_classes: K, background included.
        value_map: Optional {stored mask value: class index} (see :func:`dragsaw.data.io.images.read_mask`).
        mean, std: Normalisation of the ``"fixed"`` mode (None: ImageNet for RGB, 0.5/0.25 for grayscale).
        normalization: ``"fixed"`` or ``"zscore"`` (per image and channel).
        image_shift: a controlled intensity shift of every image as read (e.g. ``"gamma-0.5"``), for robustness
            evaluation (:func:`dragsaw.data.transforms.intensity.intensity_shift`).
        image_mode: interpolation of the image resize (the mask always uses nearest neighbour).

    ``meta`` holds ``"shape"`` (the mask's ``(H0, W0)``) and ``"path"`` (the image file).
    """

    spatial_dims = 2
    stackable = True

    def __init__(self, input_size: Sequence[int], *, num_classes: int = 2, value_map: Mapping[int, int] | None = None,
                 mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None,
                 normalization: str = "fixed", image_shift: str | None = None, image_mode: str = "bilinear") -> None:
        self.input_size = check_size(input_size, 2, "input_size")
        self.value_map = check_value_map(value_map, num_classes)
        self.num_classes = int(num_classes)
        if image_shift is not None:
            parse_shift(image_shift)  # a bad name stops here, before any file is read
        self.image_shift = image_shift
        self.mean, self.std, self.normalization, self.image_mode = mean, std, normalization, image_mode
        self._resize = resize_transforms(self.input_size, image_mode)
        eval_transforms(self.input_size, mean=mean, std=std, normalization=normalization)  # checks the options now

    def check(self, cases: Sequence[Case]) -> int:
        counts = [image_channels(c.image) for c in cases]
        common = Counter(counts).most_common(1)[0][0]
        odd = [f"{c.image} ({n} channel(s))" for c, n in zip(cases, counts) if n != common]
        if odd:
            raise DataError(
                f"{len(odd)} image(s) differ from the dataset's {common}-channel images: {', '.join(odd[:10])}"
                f"{' ...' if len(odd) > 10 else ''}", fix=f"convert them (e.g. grayscale -> RGB) so all images have "
                f"{common} channel(s)"
            )
        return common

    def read(self, case: Case, *, native: bool) -> dict[str, Any]:
        image, mask = read_case(case, self.num_classes, self.value_map)
        if self.image_shift is not None:
            image = intensity_shift(torch.from_numpy(np.ascontiguousarray(image)), self.image_shift).numpy()
        resized = self._resize({"image": image, "label": mask})
        out = {"image": resized["image"], "label": resized["label"],
               "meta": {"shape": tuple(int(s) for s in mask.shape), "path": str(case.image)}}
        if native:
            out["label_native"] = torch.from_numpy(mask)
        return out

    def transform(self, *, train: bool, seed: int | None = None, intensity: bool = False) -> Transform:
        # the image is already resized: the pipelines' own resize to the same size leaves it as it is
        if train:
            return image_train_transforms(self.input_size, mean=self.mean, std=self.std, seed=seed,
                                          normalization=self.normalization, intensity=intensity)
        return eval_transforms(self.input_size, mean=self.mean, std=self.std, normalization=self.normalization)


class VolumeReader(CaseReader):
    """3D volumes (NIfTI, one file per case or per modality), preprocessed to one spacing.

    Reading reorients to RAS, normalises every channel by its modality (CT: clipped to the dataset's percentiles and
    standardised with its statistics; others: z-score per volume) and resamples to ``target_spacing``. Training
    items are random augmented patches of ``patch_size`` (a third centred on foreground); evaluation items are whole
    volumes (different shapes: batch size 1).

    Args:
        target_spacing: Spacing in mm along the RAS axes.
        modalities: One name per channel (``"CT"`` or anything else), or None to take ``case.extra["modalities"]``.
        patch_size: Training patch size ``(X, Y, Z)``, also the sliding-window size.
        num_classes: K, background included; checked against ``case.extra["labels"]``.
        ct_stats: CT statistics (:func:`dragsaw.data.statistics.ct_statistics`) when a channel is CT.
        value_map: Optional {stored label value: class index}.
        image_shift: refused (the controlled shifts assume images in [0, 1]).

    ``meta`` holds ``"affine"`` and ``"shape"`` (the file's), ``"path"``, ``"affine_preprocessed"``,
    ``"shape_preprocessed"`` and ``"spacing"``: map predictions back with
    :func:`dragsaw.data.io.geometry.to_original_geometry`.
    """

    spatial_dims = 3
    stackable = False

    def __init__(self, target_spacing: Sequence[float], modalities: Sequence[str] | None, patch_size: Sequence[int],
                 *, num_classes: int, ct_stats: Mapping | None = None, value_map: Mapping[int, int] | None = None,
                 image_shift: str | None = None) -> None:
        if image_shift is not None:
            raise ConfigError(f"intensity shifts ({image_shift!r}) are applied to 2D images only; evaluate this 3D "
                              "run without --shift.")
        self.value_map = check_value_map(value_map, num_classes)
        self.num_classes = int(num_classes)
        self.target_spacing = as_float_tuple("target_spacing", target_spacing)
        self.input_size = check_size(patch_size, 3, "patch_size")
        if modalities is not None and (isinstance(modalities, (str, bytes)) or not isinstance(modalities, Sequence)
                                       or not modalities):
            raise ConfigError(f"modalities must be a non-empty list of channel names, got {modalities!r}")
        self.modalities = None if modalities is None else tuple(str(m) for m in modalities)
        self.ct_stats = ct_stats
        self._preprocess: dict[bool, Transform] = {}

    def check(self, cases: Sequence[Case]) -> int:
        for case in cases:
            names = case.extra.get("labels")
            if names and self.value_map is None and len(names) != self.num_classes:
                raise ConfigError(
                    f"num_classes={self.num_classes} but case {case.case_id!r} declares {len(names)} labels "
                    f"{list(names)}", fix=f"set num_classes={len(names)}"
                )
        if self.modalities is None:
            found = {tuple(c.extra.get("modalities") or ()) for c in cases}
            if len(found) != 1 or not next(iter(found)):
                raise ConfigError(
                    f"modalities=None needs every case to carry the same extra['modalities'], found {sorted(found)}",
                    fix="pass modalities=[...] (one name per channel)"
                )
            self.modalities = found.pop()
        for case in cases:
            check_case_geometry(case, channels=len(self.modalities))
        return len(self.modalities)

    def _pipeline(self, native: bool) -> Transform:
        if native not in self._preprocess:
            self._preprocess[native] = preprocess_transforms(
                self.target_spacing, self.modalities or ("MRI",), self.ct_stats, num_classes=self.num_classes,
                value_map=self.value_map, keep_native=native)
        return self._preprocess[native]

    def read(self, case: Case, *, native: bool) -> dict[str, Any]:
        out = self._pipeline(native)(case_to_dict(case))
        if "label" not in out:  # a negative case (or an unlabelled input): all background
            out["label"] = torch.zeros(out["image"].shape[1:], dtype=torch.int64)
            if native:
                out["label_native"] = torch.zeros(out["meta"]["shape"], dtype=torch.int64)
        item = {"image": out["image"], "label": out["label"], "meta": out["meta"]}
        if native:
            item["label_native"] = out["label_native"]
        return item

    def transform(self, *, train: bool, seed: int | None = None, intensity: bool = False) -> Transform | None:
        return volume_train_transforms(self.input_size, seed=seed, intensity=intensity) if train else None
