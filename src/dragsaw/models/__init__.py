"""Host networks by registry name, with the PDCR/UAFS host description each one publishes.

>>> from dragsaw.models import create_model
>>> model = create_model("unet", in_channels=1, num_classes=2, channels=(4, 8, 16))
>>> [t.name for t in model.pdcr_taps()]
['encoder.1', 'encoder.2', 'decoder.0', 'decoder.1']
"""

from __future__ import annotations

from .base import HostNetwork, TapSpec
from .deeplabv3plus import DeepLabV3Plus  # importing a network module registers it
from .dynunet import DynUNet, plan_dynunet
from .library import LibraryHost
from .monai_hosts import MonaiUNet, SegResNetHost, SwinUNETRHost
from .registry import available_models, create_model, plan_topology, register_model
from .unet import UNet

__all__ = [
    "DeepLabV3Plus",
    "DynUNet",
    "HostNetwork",
    "LibraryHost",
    "MonaiUNet",
    "SegResNetHost",
    "SwinUNETRHost",
    "TapSpec",
    "UNet",
    "available_models",
    "create_model",
    "plan_dynunet",
    "plan_topology",
    "register_model",
]
