"""dragsaw: label-guided contrastive (PDCR) and uncertainty-aware (UAFS) modules for medical image segmentation.

The core (:mod:`dragsaw.pdcr`, :mod:`dragsaw.uafs`, :mod:`dragsaw.taps`) depends on torch only and plugs into
any network without editing it. The pipelines (models, data, engine, CLI) need the ``pipeline`` extra.
"""

from .pdcr import PatchDragsawLoss, dragsaw_loss, label_composition
from .taps import FeatureTaps, insert_after, receptive_field
from .uafs import UncertaintySelect

__version__ = "0.1.0"

__all__ = [
    "FeatureTaps",
    "PatchDragsawLoss",
    "UncertaintySelect",
    "dragsaw_loss",
    "insert_after",
    "label_composition",
    "receptive_field",
]
