"""UAFS: uncertainty-aware feature selection (METHOD.md section 0 and 2).

A small head predicts ``M`` logits per location; ``H`` is their softmax entropy normalised by ``ln M`` to
[0, 1], and the block returns ``x + x * (1 - H)``: confident locations are amplified up to 2x, uncertain ones
pass unchanged. The head has no direct supervision; it learns through the segmentation loss.

Two optional departures from the paper's form (both off by default):

* ``init_scale`` scales the head's last layer at creation. With PyTorch's default init (``1.0``) the factor
  ``2 - H`` starts as a random, location-dependent gate (median about 1.05, 99th percentile up to 1.7 in the
  audit); a small scale such as ``0.01`` starts the block near the identity (``H`` close to 1, ``y`` close to ``x``).
* :func:`uafs_aux_loss` supervises each head with the class composition of the labels over its locations'
  input blocks (:func:`composition_targets`), so that ``H`` becomes a real uncertainty; the head keeps its
  logits for it when ``keep_logits`` is on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_spatial_dims, is_int

__all__ = [
    "PointwiseConv", "UncertaintySelect", "entropy_map", "uncertainty_maps", "composition_targets", "head_aux_loss",
    "uafs_aux_loss",
]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {
    "batch": {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
    "instance": {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d},
}


class PointwiseConv(nn.Module):
    """A 1x1(x1) convolution computed as a matrix product over the channel axis.

    Same parameters (``weight`` ``[out, in, 1, ...]``, ``bias`` ``[out]``), initialisation and result as
    ``ConvNd(in, out, 1)``, so checkpoints are interchangeable, but several times faster for few channels on CPU,
    where a 1x1 ``ConvNd`` falls back to a slow generic kernel (3D: 22 ms vs 4 ms forward+backward for
    4 -> 2 channels on 2 x 48 x 48 x 32).

    Shape:
        ``[B, in, *S] -> [B, out, *S]``.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        super().__init__()
        reference = _CONV[spatial_dims](in_channels, out_channels, 1)  # for its parameter shapes and init
        self.weight, self.bias = reference.weight, reference.bias
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(self.weight.flatten(1), x.flatten(2))  # [out, in] @ [B, in, S] -> [B, out, S]
        out = out + self.bias.view(1, -1, 1)
        return out.view(x.shape[0], -1, *x.shape[2:])

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1]

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, spatial_dims={self.spatial_dims}"


class _Head(nn.Sequential):
    """``Conv(k) -> Norm -> ReLU -> PointwiseConv`` with everything after the first conv in channels-first order.

    The head is narrow (a few channels), and batch norm over a channels-last map of 4 channels runs about 3x
    slower than over the same map channels-first; the pointwise conv is a matrix product over contiguous rows.
    Children and state-dict keys are those of the plain ``nn.Sequential``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self[0](x).contiguous()
        for layer in self[1:]:
            x = layer(x)
        return x


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 when it is half precision (mixed precision); float32 and float64 pass unchanged."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def entropy_map(logits: torch.Tensor) -> torch.Tensor:
    """Normalised softmax entropy over the channel axis.

    Shape:
        ``logits``: ``[B, M, *S]`` with ``M >= 2``; returns ``[B, 1, *S]`` in [0, 1], same dtype as ``logits``
        (computed in float32 or better).
    """
    branches = logits.shape[1]
    if branches < 2:
        raise ValueError(f"entropy needs at least 2 branches (got M={branches}): with M=1 it is 0/0.")
    work = at_least_float32(logits)
    logp = torch.log_softmax(work, dim=1)
    entropy = -(logp.exp() * logp).sum(1, keepdim=True) / math.log(branches)
    return entropy.clamp(0.0, 1.0).to(logits.dtype)


class UncertaintySelect(nn.Module):
    """Drop-in block ``y = x + x * (1 - H(head(x)))``.

    Args:
        channels: ``C`` of the input feature map.
        spatial_dims: 1, 2 or 3.
        branches: ``M >= 2`` logits of the head (the paper's best is 2; ``M = 1`` is undefined and raises).
        kernel_size: first conv's kernel (the paper's best is 3); any size, "same" padding.
        hidden: head width ``h``; ``None`` uses 16 in 2D (the 2D reference) and ``max(C // 4, 4)`` otherwise
            (the 3D reference).
        norm: ``"batch"`` (the references) or ``"instance"``.
        init_scale: factor applied to the weight and bias of the head's last layer after PyTorch's default init.
            ``1.0`` (default) is the paper's form; ``0.01`` starts the block near the identity (the head's logits
            are near 0, so ``H`` is near 1 and ``y`` near ``x``). Must be finite and > 0: at exactly 0 every
            logit is 0, the softmax is uniform and the entropy's gradient vanishes there (a saddle point), so the
            head would never leave it.

    Attributes:
        head: ``Conv(k, C -> h, no bias) -> Norm -> ReLU -> Conv(1, h -> M)`` (the last as :class:`PointwiseConv`).
        record: when True, every forward keeps the map of the last call (detached) in ``last_uncertainty``;
            each call replaces it, so nothing accumulates. Off by default.
        keep_logits: when True, every forward keeps the head's logits ``[B, M, *S]`` of that call, not detached
            (for :func:`uafs_aux_loss`), in ``last_logits``; each call replaces them, and a call with the flag
            off sets ``last_logits`` to ``None``. Off by default (and should stay off at inference).

    Shape:
        ``forward``: ``[B, C, *S] -> [B, C, *S]``; ``uncertainty``: ``[B, C, *S] -> [B, 1, *S]`` in [0, 1].
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 2,
        branches: int = 2,
        kernel_size: int = 3,
        hidden: int | None = None,
        norm: str = "batch",
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        for value, name in ((channels, "channels"), (kernel_size, "kernel_size")):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        if not isinstance(branches, int) or branches < 2:
            raise ValueError(
                f"branches must be an int >= 2, got {branches!r}: the normalised entropy of a single branch is "
                "0/0 (undefined). Use branches=2, the paper's best setting."
            )
        if norm not in _NORM:
            raise ValueError(f"norm must be one of {sorted(_NORM)}, got {norm!r}.")
        if (isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not math.isfinite(init_scale)
                or init_scale <= 0):
            raise ValueError(
                f"init_scale must be a finite number > 0, got {init_scale!r}: 1.0 keeps PyTorch's default init "
                "(the paper's form), e.g. 0.01 starts near the identity. Exactly 0 is a saddle point (uniform "
                "softmax, where the entropy's gradient vanishes), so the head would never learn."
            )
        if hidden is None:
            hidden = 16 if spatial_dims == 2 else max(channels // 4, 4)
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be an int >= 1 or None, got {hidden!r}.")
        conv = _CONV[spatial_dims]
        norm_layer = _NORM[norm][spatial_dims]
        self.spatial_dims, self.channels, self.branches = spatial_dims, channels, branches
        self.head = _Head(
            conv(channels, hidden, kernel_size, padding="same", bias=False),
            norm_layer(hidden, affine=True) if norm == "instance" else norm_layer(hidden),
            nn.ReLU(inplace=True),
            PointwiseConv(hidden, branches, spatial_dims),
        )
        if init_scale != 1.0:
            with torch.no_grad():
                self.head[-1].weight.mul_(float(init_scale))
                self.head[-1].bias.mul_(float(init_scale))
        self.init_scale = float(init_scale)
        self.record = False
        self.last_uncertainty: torch.Tensor | None = None
        self.keep_logits = False
        self.last_logits: torch.Tensor | None = None

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != self.spatial_dims + 2 or x.shape[1] != self.channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"UncertaintySelect(channels={self.channels}, spatial_dims={self.spatial_dims}) expects "
                f"[B, {self.channels}, *S] with {self.spatial_dims} spatial axes, got {shape}."
            )

    def uncertainty(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised entropy ``H`` of the head's prediction, ``[B, 1, *S]`` in [0, 1]."""
        self._check(x)
        return entropy_map(self.head(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x + x * (1 - H)``, same shape as ``x``."""
        self._check(x)
        logits = self.head(x)
        self.last_logits = logits if self.keep_logits else None
        h = entropy_map(logits)
        if self.record:
            self.last_uncertainty = h.detach()
        return x * (2.0 - h)  # = x + x * (1 - H), one pass over x

    def extra_repr(self) -> str:
        return f"channels={self.channels}, spatial_dims={self.spatial_dims}, branches={self.branches}"


def uncertainty_maps(model: nn.Module) -> dict[str, torch.Tensor]:
    """The last recorded map of every :class:`UncertaintySelect` in ``model`` (those with ``record=True``).

    Returns:
        qualified module name -> detached ``[B, 1, *S]`` map of the latest forward.
    """
    return {
        name: module.last_uncertainty
        for name, module in model.named_modules()
        if isinstance(module, UncertaintySelect) and module.last_uncertainty is not None
    }


_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def _check_labels(labels: torch.Tensor, num_classes: int, name: str = "labels") -> None:
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype.is_complex:
        kind = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be an integer tensor [B, *S] of class indices, got {kind}; pass the label map, "
                         "not one-hot or probabilities.")
    if labels.ndim - 1 not in _POOL or labels.numel() == 0:
        raise ValueError(f"{name} must be a non-empty [B, *S] map with 1 to 3 spatial axes, got {tuple(labels.shape)}.")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} hold classes in [{lo}, {hi}] but the heads predict M={num_classes} classes "
            f"(0..{num_classes - 1}); "
            f"set the head's branches to the number of classes (uafs.branches=<data.num_classes>)."
        )


def _one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, *S]`` class indices -> ``[B, K, *S]`` one-hot of ``dtype`` (built in place, no int64 copy)."""
    labels = labels.as_subclass(torch.Tensor)  # a MONAI MetaTensor would carry its metadata through the scatter
    hot = torch.zeros(labels.shape[0], num_classes, *labels.shape[1:], dtype=dtype, device=labels.device)
    return hot.scatter_(1, labels.long().unsqueeze(1), 1.0)


def composition_targets(
    labels: torch.Tensor, num_classes: int, size: tuple[int, ...] | list[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Class composition of ``labels`` over the input block of every location of a ``size`` grid.

    The one-hot map is average-pooled to ``size`` with adaptive average pooling (area interpolation): location
    ``i`` on an axis of input length ``S`` and grid length ``g`` covers input indices
    ``floor(i * S / g) .. ceil((i + 1) * S / g) - 1``; for grids that divide ``S`` evenly this is the block
    ``[i * s, i * s + s - 1]`` of the stride ``s = S / g``. A grid larger than ``S`` repeats input pixels.

    Shape:
        ``labels``: ``[B, *S]`` integer classes in ``[0, num_classes)`` with 1 to 3 spatial axes; returns
        ``[B, num_classes, *size]`` of ``dtype``, each location a probability vector (sums to 1 over classes).

    Raises:
        ValueError: non-integer labels, labels outside ``[0, num_classes)``, or ``size`` that does not give one
            positive int per spatial axis.
    """
    if not is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}.")
    _check_labels(labels, num_classes)
    size = tuple(size)
    if len(size) != labels.ndim - 1 or not all(is_int(v) and v > 0 for v in size):
        raise ValueError(f"size must give {labels.ndim - 1} positive ints (one per spatial axis of labels "
                         f"{tuple(labels.shape)}), got {size!r}.")
    return _POOL[len(size)](_one_hot(labels, num_classes, dtype), size)


def _soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    work = at_least_float32(logits)
    return -(target.to(work.dtype) * torch.log_softmax(work, dim=1)).sum(1).mean()


def _check_logits(logits: torch.Tensor, labels: torch.Tensor, index: int | None = None) -> None:
    name = "logits" if index is None else f"logits[{index}]"
    if not isinstance(logits, torch.Tensor) or not logits.dtype.is_floating_point:
        kind = logits.dtype if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{name} must be a floating tensor [B, M, *g] (a UAFS head's output), got {kind}.")
    if logits.ndim != labels.ndim + 1 or logits.shape[0] != labels.shape[0] or logits.shape[1] < 2:
        raise ValueError(
            f"{name} of shape {tuple(logits.shape)} do not fit labels {tuple(labels.shape)}: expected "
            f"[{labels.shape[0]}, M >= 2, *g] with {labels.ndim - 1} spatial axes (same batch as the labels)."
        )


def head_aux_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Soft-target cross-entropy of one UAFS head against the label composition of its locations.

    ``L = -mean over b and grid locations g of sum_m q[b, m, g] * log softmax(logits)[b, m, g]``, with ``q`` =
    :func:`composition_targets` of ``labels`` on the head's grid (``M`` = number of classes). Computed in float32
    (float64 for float64 logits).

    Shape:
        ``logits``: ``[B, M, *g]``; ``labels``: ``[B, *S]`` integer classes in ``[0, M)``; returns a scalar.

    Raises:
        ValueError: mismatched batch or number of spatial axes, ``M < 2``, or labels outside ``[0, M)``.
    """
    return uafs_aux_loss([logits], labels)


def uafs_aux_loss(logits: list[torch.Tensor] | tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
    """Mean of :func:`head_aux_loss` over several UAFS heads (e.g. the ``last_logits`` of every block).

    The one-hot map is built once and pooled once per distinct grid size.

    Shape:
        ``logits``: a non-empty list of ``[B, M, *g_j]`` (same ``B`` and ``M``, any grids); ``labels``:
        ``[B, *S]`` integer classes in ``[0, M)``; returns a scalar.

    Raises:
        ValueError: an empty list, heads with different ``M``, or the cases of :func:`head_aux_loss`.
    """
    if not isinstance(logits, (list, tuple)) or not logits:
        raise ValueError("logits must be a non-empty list of UAFS head logits [B, M, *g]; did the forward run with "
                         "keep_logits=True on the blocks?")
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be an integer tensor [B, *S], got {type(labels).__name__}.")
    for j, item in enumerate(logits):
        _check_logits(item, labels, j)
    branches = {item.shape[1] for item in logits}
    if len(branches) != 1:
        raise ValueError(f"all heads must predict the same M classes for one label map, got M in {sorted(branches)}.")
    num_classes = branches.pop()
    _check_labels(labels, num_classes)
    dtype = torch.float64 if any(item.dtype == torch.float64 for item in logits) else torch.float32
    hot = _one_hot(labels, num_classes, dtype)
    pooled: dict[tuple[int, ...], torch.Tensor] = {}
    total = 0.0
    for item in logits:
        size = tuple(item.shape[2:])
        if size not in pooled:
            pooled[size] = _POOL[len(size)](hot, size)
        total = total + _soft_cross_entropy(item, pooled[size])
    return total / len(logits)
