"""MONAI pipelines: resizing, normalisation and augmentation of images; preprocessing and patch sampling of
volumes; the intensity augmentations and controlled shifts shared by both."""
