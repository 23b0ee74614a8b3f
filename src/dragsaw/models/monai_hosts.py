"""MONAI networks as hosts: ``monai_unet`` (``UNet``), ``segresnet`` (``SegResNet``) and ``swinunetr`` (``SwinUNETR``),
2D and 3D, with PDCR and UAFS where the method puts them, described by strides (:class:`LibraryHost`).

The method's placement (METHOD.md section 0, "Placement") as strides, :func:`paper_layout`:

* 2D encoder-decoder: PDCR on the encoder maps at strides 2 and 4 with the cross-layer term between them, and on
  the two finest decoder stages; UAFS after every decoder stage below full resolution (as dragsaw's ``unet``).
* 3D U-Net: PDCR on the encoder maps at strides 4 and 8 (the 3rd and 4th skips of the reference's nnU-Net) with
  the cross-layer term; UAFS after every decoder stage.

Every option of the stride description (``encoder_strides``, ``decoder_strides``, ``uafs_strides``, ``cross``) and
the probe input (``probe_size``) can be given to move them. The networks are MONAI's own, unedited, under
``net``; inputs of any size run (zero-padded to the total downsampling and cropped back), training inputs must be
multiples of it (checked when the run is planned).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from .._checks import check_int, check_int_tuple
from ..errors import ConfigError
from .library import LibraryHost, Stride
from .registry import register_model

__all__ = ["MonaiUNet", "SegResNetHost", "SwinUNETRHost", "paper_layout"]


def paper_layout(spatial_dims: int, decoder_stages: Sequence[int]) -> dict[str, Any]:
    """The method's PDCR/UAFS placement as a stride description, for a network whose decoder stages have the
    (isotropic) strides ``decoder_stages`` (deepest first, the output head left out).

    Returns:
        ``encoder_strides``, ``decoder_strides``, ``uafs_strides`` and ``cross`` for :class:`LibraryHost`.
    """
    stages = sorted({int(s) for s in decoder_stages}, reverse=True)
    if spatial_dims == 2:
        return {
            "encoder_strides": [2, 4],
            "decoder_strides": stages[-2:],
            "uafs_strides": [s for s in stages if s > 1],
            "cross": True,
        }
    return {"encoder_strides": [4, 8], "decoder_strides": [], "uafs_strides": stages, "cross": True}


def _build(what: str, factory: Callable[[], nn.Module]) -> nn.Module:
    """Run a MONAI constructor, reporting its complaints about the options as configuration errors."""
    try:
        return factory()
    except (ValueError, TypeError, KeyError, AssertionError) as exc:
        raise ConfigError(f"{what}: MONAI refused the options: {exc}") from exc


class _MonaiHost(LibraryHost):
    """A MONAI network with the method's stride description, overridable option by option."""

    def __init__(
        self,
        net: nn.Module,
        *,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        decoder_stages: Sequence[int],
        size_multiple: int,
        encoder_strides: Sequence[Stride] | None,
        decoder_strides: Sequence[Stride] | None,
        uafs_strides: Sequence[Stride] | str | None,
        cross: bool,
        probe_size: Sequence[int] | None,
    ) -> None:
        layout = paper_layout(spatial_dims, decoder_stages)
        given = {"encoder_strides": encoder_strides, "decoder_strides": decoder_strides, "uafs_strides": uafs_strides}
        layout.update({k: v for k, v in given.items() if v is not None})
        layout["cross"] = cross
        super().__init__(
            net, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes,
            size_multiple=size_multiple, probe_size=probe_size, **layout,
        )


@register_model("monai_unet")
class MonaiUNet(_MonaiHost):
    """MONAI's ``UNet`` (residual units, strided-conv downsampling, transposed-conv upsampling), 2D or 3D.

    Its first convolution is already strided: the encoder maps are at strides ``strides[0]``,
    ``strides[0] * strides[1]``, ... and the decoder stages at the same strides on the way up (the last up layer is
    the output head). Default: the MONAI tutorials' ``channels=(16, 32, 64, 128, 256)``, ``strides=(2, 2, 2, 2)``,
    ``num_res_units=2``: PDCR encoder taps ``net.model.0`` (s2) and ``net.model.1.submodule.0`` (s4) in 2D.

    Args:
        spatial_dims, in_channels, num_classes: as every host.
        channels: channels per level, shallowest first.
        strides: downsampling of each level (ints), ``len(channels) - 1`` of them.
        num_res_units, kernel_size, up_kernel_size, act, norm, dropout: MONAI's options (``act`` and ``norm`` by
            MONAI name, e.g. ``"prelu"``, ``"instance"``, ``"batch"``).
        encoder_strides, decoder_strides, uafs_strides, cross: the stride description (``None``: the method's,
            :func:`paper_layout`), see :class:`LibraryHost`.
        probe_size: probe input size (default twice the total downsampling per axis).

    Raises:
        ConfigError: inconsistent channels/strides or options MONAI refuses.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 2,
        kernel_size: int = 3,
        up_kernel_size: int = 3,
        act: str = "prelu",
        norm: str = "instance",
        dropout: float = 0.0,
        encoder_strides: Sequence[Stride] | None = None,
        decoder_strides: Sequence[Stride] | None = None,
        uafs_strides: Sequence[Stride] | str | None = None,
        cross: bool = True,
        probe_size: Sequence[int] | None = None,
    ) -> None:
        channels = check_int_tuple("channels", channels, min_length=2)
        steps = self._steps(strides, channels)
        from monai.networks.nets import UNet as Net

        net = _build("monai_unet", lambda: Net(
            spatial_dims, in_channels, num_classes, channels, steps, kernel_size=kernel_size,
            up_kernel_size=up_kernel_size, num_res_units=check_int("num_res_units", num_res_units, minimum=0),
            act=act, norm=norm, dropout=dropout,
        ))
        levels = [math.prod(steps[:k]) for k in range(1, len(steps) + 1)]
        super().__init__(
            net, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes,
            decoder_stages=levels[:-1], size_multiple=levels[-1], encoder_strides=encoder_strides,
            decoder_strides=decoder_strides, uafs_strides=uafs_strides, cross=cross, probe_size=probe_size,
        )
        self.channels, self.strides = channels, steps

    @staticmethod
    def _steps(strides: object, channels: Sequence[int]) -> tuple[int, ...]:
        steps = check_int_tuple("strides", strides)
        if len(steps) != len(channels) - 1:
            raise ConfigError(
                f"monai_unet: strides={list(steps)} must have len(channels) - 1 = {len(channels) - 1} entries "
                f"(channels={list(channels)})."
            )
        return steps

    @classmethod
    def size_multiple_for(cls, spatial_dims: int, options: Mapping[str, Any]) -> tuple[int, ...]:
        steps = check_int_tuple("strides", options.get("strides", (2, 2, 2, 2)))
        return (math.prod(steps),) * int(spatial_dims)


@register_model("segresnet")
class SegResNetHost(_MonaiHost):
    """MONAI's ``SegResNet`` (the encoder of Myronenko's BraTS 2018 network, without the VAE branch), 2D or 3D.

    Encoder stage ``i`` (``down_layers.i``) is at stride ``2**i``, the deepest one is the bottleneck; decoder stage
    ``up_layers.j`` at ``2**(n - 2 - j)`` for ``n = len(blocks_down)``. With the default 4 levels the 3D placement
    (strides 4 and 8) taps the 3rd stage and the bottleneck, the network's two deepest encoder maps.

    Args:
        spatial_dims, in_channels, num_classes: as every host.
        init_filters: channels of the first level (doubling per level); a multiple of ``num_groups``.
        blocks_down, blocks_up: residual blocks per encoder level and per decoder level
            (``len(blocks_up) = len(blocks_down) - 1``).
        num_groups: groups of the group norm.
        dropout_prob: dropout after the first convolution (``None``: none).
        upsample_mode: ``"nontrainable"`` (interpolation), ``"deconv"`` or ``"pixelshuffle"``.
        encoder_strides, decoder_strides, uafs_strides, cross, probe_size: see :class:`MonaiUNet`.

    Raises:
        ConfigError: options MONAI refuses (e.g. ``init_filters`` not divisible by ``num_groups``).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        init_filters: int = 8,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        num_groups: int = 8,
        dropout_prob: float | None = None,
        upsample_mode: str = "nontrainable",
        encoder_strides: Sequence[Stride] | None = None,
        decoder_strides: Sequence[Stride] | None = None,
        uafs_strides: Sequence[Stride] | str | None = None,
        cross: bool = True,
        probe_size: Sequence[int] | None = None,
    ) -> None:
        down = check_int_tuple("blocks_down", blocks_down, min_length=2)
        up = check_int_tuple("blocks_up", blocks_up)
        if len(up) != len(down) - 1:
            raise ConfigError(
                f"segresnet: blocks_up={list(up)} must have len(blocks_down) - 1 = {len(down) - 1} entries."
            )
        init = check_int("init_filters", init_filters, minimum=1)
        groups = check_int("num_groups", num_groups, minimum=1)
        if init % groups:
            raise ConfigError(f"segresnet: init_filters={init} must be a multiple of num_groups={groups} (group norm).")
        from monai.networks.nets import SegResNet as Net

        net = _build("segresnet", lambda: Net(
            spatial_dims=spatial_dims, init_filters=init, in_channels=in_channels, out_channels=num_classes,
            dropout_prob=dropout_prob, norm=("GROUP", {"num_groups": groups}), blocks_down=down, blocks_up=up,
            upsample_mode=upsample_mode,
        ))
        n = len(down)
        super().__init__(
            net, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes,
            decoder_stages=[2 ** (n - 2 - j) for j in range(n - 1)], size_multiple=2 ** (n - 1),
            encoder_strides=encoder_strides, decoder_strides=decoder_strides, uafs_strides=uafs_strides, cross=cross,
            probe_size=probe_size,
        )

    @classmethod
    def size_multiple_for(cls, spatial_dims: int, options: Mapping[str, Any]) -> tuple[int, ...]:
        down = check_int_tuple("blocks_down", options.get("blocks_down", (1, 2, 2, 4)))
        return (2 ** (len(down) - 1),) * int(spatial_dims)


@register_model("swinunetr")
class SwinUNETRHost(_MonaiHost):
    """MONAI's ``SwinUNETR`` (Swin transformer encoder, convolutional decoder), 2D or 3D.

    The transformer keeps its tokens channels-last, so its stages are not maps; the encoder maps are the
    convolutional blocks on its outputs: ``encoder1`` .. ``encoder4`` at strides 1, 2, 4, 8 and ``encoder10`` at
    32; the decoder stages ``decoder5`` .. ``decoder1`` at 16, 8, 4, 2, 1 (their ``conv_block``, as the
    up-blocks themselves take two inputs). Inputs are padded to multiples of 32.

    Args:
        spatial_dims, in_channels, num_classes: as every host.
        feature_size: embedding channels (a multiple of 12 in MONAI).
        depths, num_heads: Swin blocks and attention heads per stage (4 stages).
        window_size: attention window.
        drop_rate, attn_drop_rate, dropout_path_rate: dropouts.
        use_v2: SwinUNETR v2 (a residual conv block before each stage).
        use_checkpoint: gradient checkpointing of the transformer (less memory, slower).
        encoder_strides, decoder_strides, uafs_strides, cross, probe_size: see :class:`MonaiUNet`.

    Raises:
        ConfigError: options MONAI refuses.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        feature_size: int = 24,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        dropout_path_rate: float = 0.0,
        use_v2: bool = False,
        use_checkpoint: bool = False,
        encoder_strides: Sequence[Stride] | None = None,
        decoder_strides: Sequence[Stride] | None = None,
        uafs_strides: Sequence[Stride] | str | None = None,
        cross: bool = True,
        probe_size: Sequence[int] | None = None,
    ) -> None:
        depths = check_int_tuple("depths", depths, length=4)
        num_heads = check_int_tuple("num_heads", num_heads, length=4)
        from monai.networks.nets import SwinUNETR as Net

        legacy = {}
        if "img_size" in inspect.signature(Net).parameters:  # MONAI < 1.5 requires it (deprecated, checks only)
            side = probe_size if isinstance(probe_size, (list, tuple)) else (probe_size or 64,) * int(spatial_dims)
            legacy["img_size"] = tuple(side)
        net = _build("swinunetr", lambda: Net(
            in_channels=in_channels, out_channels=num_classes, depths=depths, num_heads=num_heads,
            window_size=window_size, feature_size=feature_size, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
            dropout_path_rate=dropout_path_rate, spatial_dims=spatial_dims, use_v2=use_v2,
            use_checkpoint=use_checkpoint, **legacy,
        ))
        super().__init__(
            net, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes,
            decoder_stages=[16, 8, 4, 2, 1], size_multiple=32, encoder_strides=encoder_strides,
            decoder_strides=decoder_strides, uafs_strides=uafs_strides, cross=cross, probe_size=probe_size,
        )

    @classmethod
    def size_multiple_for(cls, spatial_dims: int, options: Mapping[str, Any]) -> tuple[int, ...]:
        return (32,) * int(spatial_dims)
