"""Synthetic datasets with known ground truth for tests and demos: 2D lesion-like images, 3D multi-modal volumes."""
