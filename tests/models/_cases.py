"""Tiny configurations of every registered model, shared by the model tests (CPU-friendly sizes)."""

from __future__ import annotations

import torch

from dragsaw.models import HostNetwork, create_model

# id -> (registry name, options, spatial dims to test)
CASES: dict[str, tuple[str, dict, tuple[int, ...]]] = {
    "deeplab-xception": ("deeplabv3plus", {"backbone": "xception", "width": 0.0625, "middle_blocks": 1}, (2, 3)),
    "deeplab-resnet18": ("deeplabv3plus", {"backbone": "resnet18", "width": 0.125}, (2, 3)),
    "deeplab-resnet50": ("deeplabv3plus", {"backbone": "resnet50", "width": 0.0625}, (2,)),
    "unet": ("unet", {"channels": (4, 8, 16, 32)}, (2, 3)),
    "unet-instance": ("unet", {"channels": (4, 8, 16), "norm": "instance"}, (2,)),
    "dynunet": ("dynunet", {"patch_size": 32, "filters": (4, 8, 16, 32), "pdcr_skips": (1, 2)}, (2, 3)),
    "dynunet-ds": (
        "dynunet",
        {"patch_size": 32, "filters": (4, 8, 16, 32), "pdcr_skips": (1, 2), "deep_supervision": 2},
        (3,),
    ),
    "monai-unet": ("monai_unet", {"channels": (4, 8, 16, 32), "strides": (2, 2, 2), "num_res_units": 1}, (2, 3)),
    "segresnet": ("segresnet", {"init_filters": 4, "num_groups": 2, "blocks_down": (1, 1, 1, 1)}, (2, 3)),
    "swinunetr": (
        "swinunetr", {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2), "window_size": 4}, (2, 3)
    ),
}

# odd sizes, not divisible by 16
SIZES = {2: (67, 45), 3: (19, 13, 11)}

# Hosts built on MONAI networks need sizes divisible by their total stride (other sizes are padded, so their
# feature maps would have more than ceil(S / stride) locations): sizes of the same kind, multiples of it.
CASE_SIZES: dict[str, dict[int, tuple[int, ...]]] = {
    "dynunet": {2: (40, 24), 3: (16, 24, 8)},
    "dynunet-ds": {3: (16, 24, 8)},
    "monai-unet": {2: (40, 24), 3: (16, 24, 8)},
    "segresnet": {2: (40, 24), 3: (16, 24, 8)},
    "swinunetr": {2: (64, 32), 3: (32, 32, 64)},
}


def size(case: str, dims: int) -> tuple[int, ...]:
    """The spatial input size of the tests for ``case`` in ``dims`` dimensions."""
    return CASE_SIZES.get(case, {}).get(dims, SIZES[dims])
IN_CHANNELS = 3
NUM_CLASSES = 2

PARAMS = [(case, dims) for case, (_, _, all_dims) in CASES.items() for dims in all_dims]
IDS = [f"{case}-{dims}d" for case, dims in PARAMS]


def build(case: str, dims: int, seed: int = 0) -> HostNetwork:
    """Build a tiny case with a fixed seed."""
    name, options, _ = CASES[case]
    torch.manual_seed(seed)
    return create_model(name, spatial_dims=dims, in_channels=IN_CHANNELS, num_classes=NUM_CLASSES, **options)


def sample(dims: int, batch: int = 2, seed: int = 1, case: str | None = None) -> torch.Tensor:
    """A reproducible input ``[batch, IN_CHANNELS, *size(case, dims)]`` (``SIZES[dims]`` without a case)."""
    generator = torch.Generator().manual_seed(seed)
    shape = SIZES[dims] if case is None else size(case, dims)
    return torch.randn(batch, IN_CHANNELS, *shape, generator=generator)


def main_output(output: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """The full-resolution logits (the first entry of a deep-supervision list)."""
    return output[0] if isinstance(output, list) else output
