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
}

# odd sizes, not divisible by 16
SIZES = {2: (67, 45), 3: (19, 13, 11)}
IN_CHANNELS = 3
NUM_CLASSES = 2

PARAMS = [(case, dims) for case, (_, _, all_dims) in CASES.items() for dims in all_dims]
IDS = [f"{case}-{dims}d" for case, dims in PARAMS]


def build(case: str, dims: int, seed: int = 0) -> HostNetwork:
    """Build a tiny case with a fixed seed."""
    name, options, _ = CASES[case]
    torch.manual_seed(seed)
    return create_model(name, spatial_dims=dims, in_channels=IN_CHANNELS, num_classes=NUM_CLASSES, **options)


def sample(dims: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """A reproducible input ``[batch, IN_CHANNELS, *SIZES[dims]]``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, IN_CHANNELS, *SIZES[dims], generator=generator)


def main_output(output: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """The full-resolution logits (the first entry of a deep-supervision list)."""
    return output[0] if isinstance(output, list) else output
