"""PatchSampler on one process: ``draws`` case indices per epoch drawn with replacement (nnU-Net's patch sampling,
so a pass need not visit every case once), an order that depends only on (seed, epoch), and a resumed sampler that
repeats the uninterrupted one (draws, dataset reseeding and the DataLoader's generator). Sharding across ranks:
tests/engine/test_distributed.py."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from dragsaw.engine.data3d import PatchSampler

from .conftest import Items




def _sampler(n: int = 6, draws: int = 10, seed: int = 2) -> PatchSampler:
    return PatchSampler(Items(n), draws=draws, seed=seed, generator=torch.Generator())


def _epoch(sampler: PatchSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("n,draws", [(1, 4), (3, 2), (6, 10)])
def test_draws_per_epoch_are_case_indices(n, draws):
    sampler = _sampler(n, draws)
    for epoch in range(3):
        order = _epoch(sampler, epoch)
        assert len(order) == len(sampler) == draws and set(order) <= set(range(n))


def test_draws_cover_every_case_about_equally_over_many_draws():
    counts = Counter(_epoch(_sampler(5, 5000), 0))
    assert set(counts) == set(range(5))
    assert all(abs(c - 1000) < 150 for c in counts.values()), counts  # uniform: sd ~28 per case


def test_draws_depend_only_on_seed_and_epoch():
    a, b = _sampler(), _sampler()
    orders = [_epoch(a, e) for e in range(5)]
    assert [_epoch(b, e) for e in reversed(range(5))] == orders[::-1]  # another instance, visited in another order
    assert _epoch(a, 1) == orders[1] and list(a) == orders[1]  # iterating twice changes nothing
    assert len({tuple(o) for o in orders}) == 5  # every epoch its own draws
    assert _epoch(_sampler(seed=3), 0) != orders[0]  # another seed, other draws
    assert any(len(set(o)) < len(o) for o in orders)  # with replacement: 10 draws of 6 cases repeat some


def test_a_resumed_sampler_repeats_the_uninterrupted_epoch():
    generator = torch.Generator()
    sampler = PatchSampler(Items(5), draws=8, seed=7, generator=generator)
    loader = DataLoader(sampler.dataset, batch_size=2, sampler=sampler, generator=generator)
    batches = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches.append([[t.tolist() for t in batch] for batch in loader])
    sampler.set_epoch(2)
    state = generator.get_state()

    fresh_gen = torch.Generator()
    fresh = PatchSampler(Items(5), draws=8, seed=7, generator=fresh_gen)
    fresh.set_epoch(2)
    assert torch.equal(fresh_gen.get_state(), state)
    assert fresh.dataset.seeds[-1] == sampler.dataset.seeds[-1]
    fresh_loader = DataLoader(fresh.dataset, batch_size=2, sampler=fresh, generator=fresh_gen)
    assert [[t.tolist() for t in batch] for batch in fresh_loader] == batches[2]
    assert batches[2] != batches[1]
