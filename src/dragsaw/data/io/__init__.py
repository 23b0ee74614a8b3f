"""Reading files: 2D images and masks (Pillow), volumes (nibabel/MONAI), label values, and volume geometry
(mapping predictions back to a file's own grid, writing NIfTI)."""
