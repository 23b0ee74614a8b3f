"""EpochSampler on one process: every case once per pass, an order that depends only on (seed, epoch), whole
permutations concatenated for longer epochs, and a resumed sampler that repeats the uninterrupted one (order,
dataset reseeding and the DataLoader's generator). Sharding across ranks: tests/engine/test_distributed.py."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from dragsaw.engine.datamodule import EpochSampler

from .conftest import Items




def _sampler(n: int = 9, seed: int = 4, num_samples: int | None = None) -> EpochSampler:
    return EpochSampler(Items(n), seed=seed, generator=torch.Generator(), num_samples=num_samples)


def _epoch(sampler: EpochSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("n", [1, 2, 9])
def test_every_case_once_per_epoch(n):
    sampler = _sampler(n)
    for epoch in range(4):
        order = _epoch(sampler, epoch)
        assert len(sampler) == n and sorted(order) == list(range(n))


def test_order_depends_only_on_seed_and_epoch():
    a, b = _sampler(), _sampler()
    orders = [_epoch(a, e) for e in range(5)]
    assert [_epoch(b, e) for e in reversed(range(5))] == orders[::-1]  # another instance, visited in another order
    assert _epoch(a, 2) == orders[2] and list(a) == orders[2]  # iterating twice changes nothing
    assert len({tuple(o) for o in orders}) == 5  # every epoch its own order (9! orders: a repeat would be a bug)
    assert _epoch(_sampler(seed=5), 0) != orders[0]  # another seed, another order
    assert orders[0] != list(range(9))  # shuffled


@pytest.mark.parametrize("n,num_samples", [(5, 12), (4, 8), (7, 7), (6, 3)])
def test_longer_epochs_concatenate_whole_permutations(n, num_samples):
    sampler = _sampler(n, num_samples=num_samples)
    order = _epoch(sampler, 3)
    assert len(order) == len(sampler) == num_samples
    chunks = [order[i:i + n] for i in range(0, num_samples, n)]
    for chunk in chunks[:-1] if num_samples % n else chunks:
        assert sorted(chunk) == list(range(n))  # each whole pass visits every case once
    assert len(set(chunks[-1])) == len(chunks[-1])  # a cut pass repeats no case either
    if num_samples >= 2 * n:
        assert chunks[0] != chunks[1]  # each pass its own permutation (4 or 5 cases: 24 or 120 orders)


def test_a_resumed_sampler_repeats_the_uninterrupted_epoch():
    # uninterrupted: epochs 0..3 through a DataLoader (which draws its base seed from the generator each epoch)
    generator = torch.Generator()
    sampler = EpochSampler(Items(7), seed=11, generator=generator, num_samples=10)
    loader = DataLoader(sampler.dataset, batch_size=3, sampler=sampler, generator=generator)
    batches = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches.append([[t.tolist() for t in batch] for batch in loader])
    sampler.set_epoch(3)
    state = generator.get_state()

    # resumed at epoch 3: a fresh sampler, dataset and generator
    fresh_gen = torch.Generator()
    fresh = EpochSampler(Items(7), seed=11, generator=fresh_gen, num_samples=10)
    fresh.set_epoch(3)
    assert torch.equal(fresh_gen.get_state(), state)  # worker seeds are drawn from the same state
    assert fresh.dataset.seeds[-1] == sampler.dataset.seeds[-1]  # the same augmentation stream
    fresh_loader = DataLoader(fresh.dataset, batch_size=3, sampler=fresh, generator=fresh_gen)
    assert [[t.tolist() for t in batch] for batch in fresh_loader] == batches[3]
    assert batches[3] != batches[2]  # (so the equality above is not trivial)
    assert len({sampler.dataset.seeds[i] for i in (1, 2, 3, 4)}) == 4  # each epoch reseeds the dataset anew
