"""``PatchDragsawLoss``: the PDCR regulariser over several tapped feature maps (METHOD.md section 0)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import nn

from .._checks import as_axis_tuple, check_int_labels, check_spatial_dims, is_int
from .composition import LabelIntegral, counts_to_composition, patch_series_counts
from .loss import ORIENTATIONS, grouped_loss, series_loss, similarity
from .sampling import SAMPLERS, auto_border, crop_extent, grid_positions, random_positions

__all__ = ["PatchDragsawLoss", "PDCROutput"]

Axes = int | Sequence[int]


class PDCROutput(NamedTuple):
    """Result of :class:`PatchDragsawLoss`: the weighted ``total`` and the unweighted, detached ``terms``.

    ``terms`` keys: ``"layer/<name>"`` for in-layer terms, ``"cross/<p>~<q>"`` for cross-layer terms.
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


class _Labels:
    """Checked labels of one call, with their integral built only if some patch needs it."""

    def __init__(self, tensor: torch.Tensor, owner: PatchDragsawLoss) -> None:
        self.tensor, self._owner, self._integral = tensor, owner, None

    def integral(self) -> LabelIntegral:
        if self._integral is None:
            self._integral = LabelIntegral(self.tensor, self._owner.num_classes, self._owner.ignore_index,
                                           checked=True)  # checked once in forward
        return self._integral


def _key(name: str) -> str:
    return name.replace(".", "__")


EMBEDDINGS = ("feature", "mlp")


def _mlp_head(channels: int, out_dim: int) -> nn.Sequential:
    """``Linear(C, C) -> ReLU -> Linear(C, out_dim)``: maps sampled vectors ``[..., C]`` to ``[..., out_dim]``."""
    return nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, out_dim))


class PatchDragsawLoss(nn.Module):
    """Patch-dragsaw contrastive regularisation over tapped hidden feature maps.

    For every tapped layer it samples ``N`` feature locations, takes their label compositions for each patch
    length of a series (H-PDCR: loss per length, then averaged) or for the layer's receptive field (RF-PDCR),
    and adds ``weight * dragsaw_loss`` (in-layer). Cross-layer terms compare the sampled vectors of two layers
    after learnable linear (1x1) projections to a common dimension, each with the compositions of its own
    patches. Works for 1D/2D/3D maps, any batch size and device; the projections are registered parameters.

    ``embedding="mlp"`` passes the sampled vectors ``[B, N, C]`` of every tapped layer through a projection head
    ``Linear(C, C) -> ReLU -> Linear(C, projection_dim)`` (one per layer, as in supervised contrastive learning)
    before any similarity: tapped features usually follow a ReLU, so their cosines are >= 0 and the push target
    ``cos = -1`` is out of reach, while the head's output can point anywhere. Cross-layer terms then compare the
    two layers' head outputs (no separate cross projections are created). ``"feature"`` (default) is the paper's
    form: cosines of the raw sampled vectors.

    Args:
        num_classes: ``K``, background included.
        layers: the in-layer taps, a mapping ``name -> weight`` (or a sequence of names, weight 1 each).
        spatial_dims: 1, 2 or 3.
        samples: ``N`` per layer (an int or a mapping name -> int).
        patch_sizes: H-PDCR patch lengths in input pixels (each an int or per-axis tuple), or ``"rf"`` for
            RF-PDCR with ``receptive_fields``.
        receptive_fields: for ``patch_sizes="rf"``: layer name -> receptive field size (int or per-axis), e.g.
            from :func:`dragsaw.taps.receptive_field`.
        cross_layers: pairs ``(p, q)`` of layer names for cross-layer terms.
        in_channels: layer name -> channels, required for every layer in ``cross_layers`` (and for every tapped
            layer with ``embedding="mlp"``).
        cross_weight: weight of each cross-layer term.
        cross_samples: ``N`` per layer in cross-layer terms.
        projection_dim: common dimension of the cross-layer projections (and output size of the MLP heads).
        temperature: ``T``.
        sampling: ``"grid"`` (fixed evenly spaced lattice) or ``"random"`` (new locations per image and call).
        border: cells cropped on every side before sampling (int, per-axis tuple, or mapping name -> either);
            ``None`` uses min(9, grid // 8) per axis.
        ignore_index: label value left out of every composition.
        orientation: ``"intended"`` or ``"reference-2d"`` (see :func:`dragsaw_loss`).
        embedding: ``"feature"`` (raw sampled vectors, the paper's form) or ``"mlp"`` (a projection head per
            tapped layer, see above).

    Call: ``loss(features, labels, strides=None) -> PDCROutput``; ``features`` maps layer names to
    ``[B, C, *g]`` maps, ``labels`` is ``[B, *S]`` (or ``[B, 1, *S]``) int, ``strides`` maps names to per-axis
    strides (inferred from the shapes where ``S`` is a multiple of ``g``).
    """

    def __init__(
        self,
        num_classes: int,
        layers: Mapping[str, float] | Sequence[str],
        *,
        spatial_dims: int = 2,
        samples: int | Mapping[str, int] = 64,
        patch_sizes: Sequence[Axes] | str = (5, 7, 9),
        receptive_fields: Mapping[str, Axes] | None = None,
        cross_layers: Sequence[tuple[str, str]] = (),
        in_channels: Mapping[str, int] | None = None,
        cross_weight: float = 0.01,
        cross_samples: int | Mapping[str, int] = 32,
        projection_dim: int = 128,
        temperature: float = 1.0,
        sampling: str = "grid",
        border: Axes | Mapping[str, Axes] | None = None,
        ignore_index: int | None = None,
        orientation: str = "intended",
        embedding: str = "feature",
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (background included), got {num_classes!r}.")
        self.num_classes = num_classes
        weights = dict(layers) if isinstance(layers, Mapping) else {name: 1.0 for name in layers}
        self.cross_layers = [tuple(pair) for pair in cross_layers]
        if not weights and not self.cross_layers:
            raise ValueError("PatchDragsawLoss needs at least one layer or cross-layer pair; got none.")
        self.layer_weights = {str(k): float(v) for k, v in weights.items()}
        names = list(self.layer_weights) + [n for pair in self.cross_layers for n in pair]
        self.tapped = list(dict.fromkeys(names))
        for pair in self.cross_layers:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"cross_layers entries must be pairs of two different layer names, got {pair!r}.")
        if sampling not in SAMPLERS:
            raise ValueError(f"sampling must be one of {SAMPLERS}, got {sampling!r}.")
        if orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}.")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}.")
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}.")
        self.sampling, self.orientation, self.temperature = sampling, orientation, float(temperature)
        self.embedding = embedding
        self.ignore_index = ignore_index
        self.cross_weight = float(cross_weight)
        self.samples = self._per_layer(samples, "samples", self.layer_weights)
        self.cross_samples = self._per_layer(cross_samples, "cross_samples", [n for p in self.cross_layers for n in p])
        self.border = border
        self._lattices: dict[tuple, torch.Tensor] = {}  # (grid, border, count, device) -> lattice positions

        if isinstance(patch_sizes, str):
            if patch_sizes != "rf":
                raise ValueError(f"patch_sizes must be a sequence of lengths or 'rf', got {patch_sizes!r}.")
            missing = [n for n in self.tapped if n not in (receptive_fields or {})]
            if missing:
                raise ValueError(
                    f"patch_sizes='rf' needs receptive_fields for every tapped layer; missing {missing}. "
                    "Measure them with dragsaw.taps.receptive_field(model, layer, input_shape)."
                )
            self.patches = {n: [as_axis_tuple(receptive_fields[n], spatial_dims, f"receptive_fields[{n!r}]")]
                            for n in self.tapped}
        else:
            if receptive_fields is not None:
                raise ValueError("receptive_fields is only used with patch_sizes='rf'; pass one or the other.")
            series = [as_axis_tuple(k, spatial_dims, "patch_sizes") for k in patch_sizes]
            if not series:
                raise ValueError("patch_sizes is empty: give at least one patch length (e.g. (5, 7, 9)) or 'rf'.")
            self.patches = {n: series for n in self.tapped}

        cross_names = list(dict.fromkeys(n for pair in self.cross_layers for n in pair))
        if embedding == "mlp":
            missing = [n for n in self.tapped if n not in (in_channels or {})]
            if missing:
                raise ValueError(
                    f"embedding='mlp' needs the channel count of every tapped layer for its projection head; "
                    f"in_channels lacks {missing}. Pass in_channels={{name: C, ...}} or use embedding='feature'."
                )
        missing = [n for n in cross_names if n not in (in_channels or {})]
        if missing:
            raise ValueError(
                f"cross_layers need the channel count of each layer for their projections; in_channels lacks "
                f"{missing}. Pass in_channels={{name: C, ...}}."
            )
        headed = self.tapped if embedding == "mlp" else cross_names
        if headed and (not is_int(projection_dim) or projection_dim < 1):
            raise ValueError(f"projection_dim must be an int >= 1, got {projection_dim!r}.")
        self.in_channels = {}  # channels of every layer with a head or projection, checked against the features
        for n in headed:
            c = in_channels[n]
            if not is_int(c) or c < 1:
                raise ValueError(f"in_channels[{n!r}] must be an int >= 1 (the layer's channels), got {c!r}.")
            self.in_channels[n] = int(c)
        # "mlp": a head per tapped layer, also used by cross-layer terms; "feature": linear cross projections only
        self.heads = nn.ModuleDict(
            {_key(n): _mlp_head(self.in_channels[n], projection_dim) for n in self.tapped} if embedding == "mlp" else {}
        )
        self.projections = nn.ModuleDict(
            {} if embedding == "mlp" else {_key(n): nn.Linear(self.in_channels[n], projection_dim) for n in cross_names}
        )

    @staticmethod
    def _per_layer(value: int | Mapping[str, int], what: str, names) -> dict[str, int]:
        out = {}
        for name in names:
            n = value.get(name) if isinstance(value, Mapping) else value
            if not is_int(n) or n < 1:
                raise ValueError(f"{what} for layer {name!r} must be an int >= 1, got {n!r}.")
            out[name] = n
        return out

    # ------------------------------------------------------------------ helpers
    def _stride(self, name: str, feat: torch.Tensor, size: tuple[int, ...], strides) -> tuple[int, ...]:
        grid = tuple(feat.shape[2:])
        given = (strides or {}).get(name)
        if given is None:
            if any(s % g for s, g in zip(size, grid)):
                raise ValueError(
                    f"cannot infer the stride of layer {name!r}: labels {size} are not a multiple of its grid "
                    f"{grid}. Pass strides={{{name!r}: ...}} (e.g. from dragsaw.taps.receptive_field)."
                )
            return tuple(s // g for s, g in zip(size, grid))
        stride = as_axis_tuple(given, self.spatial_dims, f"strides[{name!r}]")
        for s, g, k in zip(size, grid, stride):
            if g not in (-(-s // k), s // k):
                raise ValueError(
                    f"layer {name!r}: a grid of {grid} does not fit labels {size} at stride {stride} (expected "
                    f"ceil or floor of size/stride per axis). Check the stride or that the labels match the input."
                )
        return stride

    def _border(self, name: str, grid: tuple[int, ...]) -> tuple[int, ...]:
        value = self.border.get(name) if isinstance(self.border, Mapping) else self.border
        if value is None:
            return auto_border(grid)
        return as_axis_tuple(value, self.spatial_dims, f"border[{name!r}]", minimum=0)

    def check_grids(self, grids: Mapping[str, Sequence[int]]) -> None:
        """Check, before any training, that the feature grid of each tapped layer (``name -> grid``, e.g. the input
        size divided by the layer's stride) leaves enough locations after the border crop for its sample counts.

        Raises:
            ValueError: as training would, naming the layer, its grid, the border and the number of samples.
        """
        for name, grid in grids.items():
            grid = tuple(int(g) for g in grid)
            for count in (self.samples.get(name), self.cross_samples.get(name)):
                if count is not None:
                    crop_extent(grid, self._border(name, grid), count, name)

    def _positions(self, name: str, feat: torch.Tensor, count: int) -> torch.Tensor:
        """``count`` sampled locations of ``feat`` [B, C, *g] -> long positions [B, N, d]."""
        batch, grid = feat.shape[0], tuple(feat.shape[2:])
        border = self._border(name, grid)
        if self.sampling == "grid":
            key = (grid, border, count, feat.device)
            if key not in self._lattices:  # the same lattice on every call (and for every layer of this geometry)
                if len(self._lattices) >= 64:  # inputs of ever-changing size: keep the cache bounded
                    self._lattices.clear()
                self._lattices[key] = grid_positions(grid, border, count, name).to(feat.device)
            return self._lattices[key].expand(batch, -1, -1)
        return random_positions(batch, grid, border, count, name, device=feat.device)

    @staticmethod
    def _gather(feat: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The feature vectors of ``feat`` [B, C, *g] at ``pos`` [B, N, d] -> [B, N, C]."""
        linear = torch.zeros_like(pos[..., 0])
        for axis, g in enumerate(feat.shape[2:]):
            linear = linear * g + pos[..., axis]
        rows = feat.movedim(1, -1)
        if rows.is_contiguous() and not feat.is_contiguous():  # channels-last: gather whole rows, no copy
            rows = rows.reshape(feat.shape[0], -1, feat.shape[1])  # [B, prod(g), C], a view
            return rows.gather(1, linear.unsqueeze(-1).expand(-1, -1, feat.shape[1]))
        vectors = feat.flatten(2).gather(2, linear.unsqueeze(1).expand(-1, feat.shape[1], -1))
        return vectors.transpose(1, 2)

    def _compositions(self, labels: _Labels, name: str, pos: torch.Tensor, stride, cache: dict) -> torch.Tensor:
        """The ``[P, B, N, K]`` compositions of the patch lengths of ``name`` at ``pos``: gathered patch labels for
        small patches, box sums over a shared integral when the patches would read more than the label map.

        ``cache`` holds the results of this call: layers with the same lattice (the same positions tensor, see
        :meth:`_positions`), stride and patches share them."""
        series = self.patches[name]
        key = (pos.data_ptr(), tuple(pos.shape), tuple(stride), tuple(series))
        if key not in cache:
            longest = math.prod(max(k[axis] for k in series) for axis in range(self.spatial_dims))
            if pos.shape[0] * pos.shape[1] * longest <= labels.tensor.numel():
                counts = patch_series_counts(labels.tensor, pos, stride, series, self.num_classes, self.ignore_index)
            else:
                counts = [labels.integral().points(pos, stride, k) for k in series]
            cache[key] = counts_to_composition(torch.stack(counts), dim=2).transpose(2, 3)
        return cache[key]

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        features: Mapping[str, torch.Tensor],
        labels: torch.Tensor,
        strides: Mapping[str, Axes] | None = None,
    ) -> PDCROutput:
        """Compute the regulariser. See the class docstring for shapes; returns :class:`PDCROutput`."""
        missing = [n for n in self.tapped if n not in features]
        if missing:
            raise ValueError(
                f"features lacks the tapped layers {missing} (got {sorted(features)}); tap them with "
                "dragsaw.taps.FeatureTaps(model, names) or remove them from the loss."
            )
        d = self.spatial_dims
        if labels.ndim == d + 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != d + 1:
            raise ValueError(
                f"labels must be [B, *S] or [B, 1, *S] with {d} spatial axes (spatial_dims={d}), got shape "
                f"{tuple(labels.shape)}."
            )
        size = tuple(labels.shape[1:])
        for name in self.tapped:
            feat = features[name]
            if not isinstance(feat, torch.Tensor) or feat.ndim != d + 2:
                shape = tuple(feat.shape) if isinstance(feat, torch.Tensor) else type(feat).__name__
                raise ValueError(f"feature {name!r} must be [B, C, *g] with {d} spatial axes, got {shape}.")
            if name in self.in_channels and feat.shape[1] != self.in_channels[name]:
                raise ValueError(
                    f"feature {name!r} has {feat.shape[1]} channels but its projection was built for "
                    f"in_channels[{name!r}]={self.in_channels[name]}; pass the layer's true channel count."
                )
            if feat.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"feature {name!r} has batch size {feat.shape[0]} but labels have {labels.shape[0]}; pass the "
                    "labels of the same batch."
                )
        device = features[self.tapped[0]].device
        integral = _Labels(check_int_labels(labels.to(device), self.num_classes, self.ignore_index), self)
        stride = {n: self._stride(n, features[n], size, strides) for n in self.tapped}

        terms: dict[str, torch.Tensor] = {}
        total = features[self.tapped[0]].new_zeros((), dtype=torch.float32)
        # Locations of every term first, then one gather per layer: a layer in an in-layer and a cross-layer term
        # (or in several pairs) fills its dense gradient map once instead of once per term.
        wanted: dict[str, list[torch.Tensor]] = {name: [] for name in self.tapped}
        in_pos = {n: self._positions(n, features[n], self.samples[n]) for n in self.layer_weights}
        for name, pos in in_pos.items():
            wanted[name].append(pos)
        cross_pos = []
        for pair in self.cross_layers:
            cross_pos.append([self._positions(n, features[n], self.cross_samples[n]) for n in pair])
            for n, pos in zip(pair, cross_pos[-1]):
                wanted[n].append(pos)
        vectors = {}
        for name, chunks in wanted.items():
            emb = self._gather(features[name], torch.cat(chunks, 1) if len(chunks) > 1 else chunks[0])
            if self.embedding == "mlp":  # the head on the sampled vectors only: [B, N, C] -> [B, N, projection_dim]
                head = self.heads[_key(name)]
                emb = head(emb.to(head[0].weight.dtype))
            vectors[name] = list(emb.split([c.shape[1] for c in chunks], 1))

        # in-layer terms: layers with the same number of samples and patch sizes share one batched loss
        groups: dict[tuple[int, int], list] = {}
        cache: dict = {}
        for name, pos in in_pos.items():
            emb = vectors[name].pop(0)
            comps = self._compositions(integral, name, pos, stride[name], cache)
            groups.setdefault((emb.shape[1], comps.shape[0]), []).append((name, emb, comps))
        for members in groups.values():
            dtype = torch.float64 if any(emb.dtype == torch.float64 for _, emb, _ in members) else torch.float32
            with torch.autocast(device_type=device.type, enabled=False):
                sims = torch.stack([similarity(emb, None, self.temperature, dtype) for _, emb, _ in members])
                comps = torch.stack([c for _, _, c in members], 1)  # [P, G, B, N, K]
                losses = grouped_loss(sims, comps, comps, self.orientation, self.temperature)
            for (name, _, _), loss in zip(members, losses):
                terms[f"layer/{name}"] = loss.detach()
                total = total + self.layer_weights[name] * loss
        terms = {f"layer/{name}": terms[f"layer/{name}"] for name in self.layer_weights}  # the layers' order
        for (p, q), (pos_p, pos_q) in zip(self.cross_layers, cross_pos):
            emb_p, emb_q = vectors[p].pop(0), vectors[q].pop(0)
            if self.embedding == "feature":  # "mlp": the heads already map both layers to projection_dim
                emb_p = self.projections[_key(p)](emb_p.to(self.projections[_key(p)].weight.dtype))
                emb_q = self.projections[_key(q)](emb_q.to(self.projections[_key(q)].weight.dtype))
            comps_p = self._compositions(integral, p, pos_p, stride[p], cache)
            comps_q = self._compositions(integral, q, pos_q, stride[q], cache)
            loss = series_loss(emb_p, comps_p, emb_q, comps_q, self.temperature, self.orientation)
            terms[f"cross/{p}~{q}"] = loss.detach()
            total = total + self.cross_weight * loss
        return PDCROutput(total, terms)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, layers={self.layer_weights}, cross_layers={self.cross_layers}, "
            f"samples={self.samples}, sampling={self.sampling!r}, T={self.temperature}, "
            f"orientation={self.orientation!r}, embedding={self.embedding!r}"
        )
