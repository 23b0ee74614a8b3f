"""Shim found by nnU-Net's ``nnUNet_extTrainer`` lookup: the trainers live in :mod:`dragsaw.integrations.nnunet`.

Absolute imports only: nnU-Net imports this file as a top-level module named ``dragsaw_nnunet_trainers``.
"""

from dragsaw.integrations.nnunet import (
    nnUNetTrainerDragsaw,
    nnUNetTrainerDragsaw_5it,
    nnUNetTrainerDragsaw_PDCR,
    nnUNetTrainerDragsaw_UAFS,
)

__all__ = ["nnUNetTrainerDragsaw", "nnUNetTrainerDragsaw_5it", "nnUNetTrainerDragsaw_PDCR", "nnUNetTrainerDragsaw_UAFS"]
