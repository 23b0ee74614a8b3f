"""Fixtures for end-to-end runs: a tiny synthetic dataset and fast overrides."""

from __future__ import annotations

import pytest
from torch.utils.data import Dataset

from dragsaw.data import write_folder

FAST = [
    "model.options.channels=[4, 8, 16]",
    "data.input_size=[32, 32]",
    "train.epochs=1",
    "train.batch_size=4",
    "pdcr.encoder_samples=[16, 8]",
    "pdcr.decoder_samples=[8, 4]",
    "pdcr.cross_samples=8",
    "pdcr.layers=null",  # a 3-stage U-Net has no encoder.3 (the cpu profile's taps): the host's declared taps
    "pdcr.cross_layers=null",
]


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """12 training + 4 test synthetic pairs of 40x48 in the generic folder layout."""
    return write_folder(tmp_path_factory.mktemp("synth") / "data", n_train=12, n_test=4, size=(40, 48), seed=1)


class Items(Dataset):
    """Item ``i`` is ``(i, the seed of the latest reseed)``; every reseed is recorded."""

    def __init__(self, n: int) -> None:
        self.n, self.seeds = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return i, self.seeds[-1]

    def reseed(self, seed: int) -> None:
        self.seeds.append(seed)
