"""The folder to put in nnU-Net's ``nnUNet_extTrainer`` environment variable (see docs/nnunet.md).

nnU-Net v2 (>= 2.8) looks up ``-tr NAME`` in its own trainer package first, then imports every module of each
folder listed in ``nnUNet_extTrainer`` (by its bare name, with the folder put on ``sys.path`` for the lookup) and
takes the first module that has an attribute ``NAME``. This folder holds one such module,
``dragsaw_nnunet_trainers``, which re-exports the trainers of :mod:`dragsaw.integrations.nnunet`; print its path with
``python -m dragsaw.integrations.nnunet path``.
"""
