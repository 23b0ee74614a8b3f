"""PDCR: patch-dragsaw contrastive regularisation of hidden feature maps (METHOD.md section 0).

Pure functions (:func:`label_composition`, :func:`dragsaw_loss`) hold the math; :class:`PatchDragsawLoss`
orchestrates sampling, patch series / receptive fields, layers, projections and weights.
"""

from .composition import LabelIntegral, label_composition
from .loss import dragsaw_loss
from .module import PatchDragsawLoss, PDCROutput
from .sampling import grid_positions, random_positions

__all__ = [
    "LabelIntegral",
    "PDCROutput",
    "PatchDragsawLoss",
    "dragsaw_loss",
    "grid_positions",
    "label_composition",
    "random_positions",
]
