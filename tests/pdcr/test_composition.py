"""label_composition against a naive per-location loop written from the definition in METHOD.md section 0."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dragsaw.pdcr import LabelIntegral, label_composition


def naive_composition(labels, num_classes, stride, patch, ignore_index=None):
    """One location at a time: block start i*s, patch start i*s - floor((k-s)/2), length k, clipped."""
    batch, *size = labels.shape
    grid = [math.ceil(n / s) for n, s in zip(size, stride)]
    out = torch.zeros(batch, num_classes, *grid, dtype=torch.float64)
    for b in range(batch):
        for loc in itertools.product(*[range(g) for g in grid]):
            region = []
            for i, s, k, n in zip(loc, stride, patch, size):
                start = i * s - math.floor((k - s) / 2)
                region.append(slice(max(start, 0), min(start + k, n)))
            values = labels[b][tuple(region)].flatten().tolist()
            if ignore_index is not None:
                values = [v for v in values if v != ignore_index]
            for c in range(num_classes):
                if values:
                    out[(b, c, *loc)] = values.count(c) / len(values)
    return out


CASES_2D = [
    # size, stride, patch, K
    ((16, 16), (4, 4), (5, 5), 2),
    ((17, 23), (4, 4), (9, 9), 3),
    ((17, 23), (2, 4), (3, 8), 4),
    ((13, 9), (4, 4), (1, 1), 2),  # k < s
    ((13, 9), (4, 2), (3, 7), 2),  # odd k with even s
    ((10, 10), (1, 1), (7, 7), 5),
    ((8, 12), (16, 16), (9, 9), 2),  # stride larger than the image: one location
    ((20, 20), (3, 3), (40, 40), 3),  # patch larger than the image
]


@pytest.mark.parametrize("size,stride,patch,k", CASES_2D)
def test_matches_naive_loop_2d(size, stride, patch, k):
    gen = torch.Generator().manual_seed(hash((size, stride, patch, k)) % 2**31)
    labels = torch.randint(0, k, (2, *size), generator=gen)
    got = label_composition(labels, k, stride, patch)
    want = naive_composition(labels, k, stride, patch)
    assert got.shape == want.shape
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "size,stride,patch,k",
    [((9, 10, 11), (2, 2, 2), (5, 5, 5), 3), ((12, 7, 8), (4, 2, 1), (7, 3, 2), 4), ((6, 6, 6), 3, 1, 2)],
)
def test_matches_naive_loop_3d_anisotropic(size, stride, patch, k):
    labels = torch.randint(0, k, (2, *size), generator=torch.Generator().manual_seed(1))
    got = label_composition(labels, k, stride, patch)
    want = naive_composition(labels, k, (stride,) * 3 if isinstance(stride, int) else stride,
                             (patch,) * 3 if isinstance(patch, int) else patch)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)


def _clipped_lengths(size, stride, patch):
    start = torch.arange(-(-size // stride)) * stride - (patch - stride) // 2
    return (start + patch).clamp(max=size) - start.clamp(min=0)


@pytest.mark.parametrize(
    "size,stride,patch",
    [
        ((1023, 1), (16, 1), (1100, 1)),  # cumulative sum, counts of exactly 1023 stay packed to the end
        ((1023, 1), (256, 1), (2047, 1)),  # strided sums, the same
        ((1023, 2), (64, 1), (1023, 2)),  # 2046 per patch outgrows a field: unpacked after the first axis
    ],
)
@pytest.mark.parametrize("cls", [1, 2])
def test_full_count_fields_do_not_carry(size, stride, patch, cls):
    # three classes share one int32 word in 10-bit fields; a uniform map of the middle class or of the last class
    # (the highest field) fills its field to the limit and must not spill into a neighbouring one
    labels = torch.full((1, *size), cls)
    counts = LabelIntegral(labels, 3).grid(stride, patch)  # [1, 3, *grid]
    rows, cols = (_clipped_lengths(n, s, k) for n, s, k in zip(size, stride, patch))
    want = torch.zeros_like(counts)
    want[0, cls] = rows[:, None] * cols[None, :]
    assert torch.equal(counts, want)
    assert counts.max() >= 1023


@pytest.mark.parametrize("ignore", [None, 2, 7, -1])
def test_several_packed_words(ignore):
    # 300 rows: 9-bit fields, three classes per int32 word; seven classes span three words
    gen = torch.Generator().manual_seed(11)
    labels = torch.randint(0, 7, (2, 300, 6), generator=gen)
    if ignore is not None:
        labels[:, ::7] = ignore
    for stride, patch in [((8, 2), (9, 3)), ((4, 3), (40, 5)), ((2, 1), (1, 1))]:
        got = label_composition(labels, 7, stride, patch, ignore_index=ignore)
        want = naive_composition(labels, 7, stride, patch, ignore_index=ignore)
        torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)


def test_1d_hand_computed():
    # labels 0 0 1 1 1 0, stride 2, patch 3: locations 0,1,2 -> patch starts 0-0=0? floor((3-2)/2)=0
    labels = torch.tensor([[0, 0, 1, 1, 1, 0]])
    got = label_composition(labels, 2, 2, 3)
    # patches [0,3)={0,0,1} [2,5)={1,1,1} [4,6)={1,0}
    want = torch.tensor([[[2 / 3, 0.0, 0.5], [1 / 3, 1.0, 0.5]]])
    torch.testing.assert_close(got, want)


def test_ignore_index_and_empty_patches():
    labels = torch.tensor([[[255, 255, 0, 1], [255, 255, 1, 1]]])
    got = label_composition(labels, 2, 2, 2, ignore_index=255)
    want = naive_composition(labels, 2, (2, 2), (2, 2), ignore_index=255)
    torch.testing.assert_close(got.double(), want)
    assert got[0, :, 0, 0].sum() == 0  # no valid pixel: all-zero composition
    assert got[0, :, 0, 1].sum() == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(
    dims=st.integers(1, 3),
    data=st.data(),
)
def test_property_against_naive(dims, data):
    size = tuple(data.draw(st.integers(1, 9)) for _ in range(dims))
    stride = tuple(data.draw(st.integers(1, 5)) for _ in range(dims))
    patch = tuple(data.draw(st.integers(1, 8)) for _ in range(dims))
    k = data.draw(st.integers(1, 4))
    seed = data.draw(st.integers(0, 1000))
    labels = torch.randint(0, k, (1, *size), generator=torch.Generator().manual_seed(seed))
    got = label_composition(labels, k, stride, patch)
    torch.testing.assert_close(got.double(), naive_composition(labels, k, stride, patch), atol=1e-6, rtol=0)


def test_points_agree_with_grid():
    labels = torch.randint(0, 3, (2, 19, 21), generator=torch.Generator().manual_seed(3))
    integral = LabelIntegral(labels, 3)
    full = integral.grid((4, 4), (7, 7))  # [B, K, 5, 6]
    pos = torch.tensor([[[0, 0], [4, 5], [2, 3]], [[1, 1], [3, 0], [4, 4]]])
    pts = integral.points(pos, (4, 4), (7, 7))
    for b in range(2):
        for n in range(3):
            torch.testing.assert_close(pts[b, :, n], full[b, :, pos[b, n, 0], pos[b, n, 1]])


@pytest.mark.parametrize(
    "labels,kwargs,match",
    [
        (torch.zeros(2, 8, 8), {}, "dtype torch.float32"),
        (torch.full((2, 8, 8), 3), {}, r"values \[3\] outside 0..1"),
        (torch.full((2, 8, 8), -1), {}, "outside"),
        (torch.zeros(8, dtype=torch.long), {}, r"\[B, \*S\]"),
        (torch.zeros(2, 8, 8, dtype=torch.long), {"stride": (2, 2, 2)}, "stride=.*3 entries.*2 spatial axes"),
        (torch.zeros(2, 8, 8, dtype=torch.long), {"patch_size": 0}, "patch_size=.*>= 1"),
    ],
)
def test_errors_name_argument_and_fix(labels, kwargs, match):
    args = {"num_classes": 2, "stride": 2, "patch_size": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        label_composition(labels, **args)


@settings(max_examples=40, deadline=None)
@given(dims=st.integers(1, 3), data=st.data())
def test_patch_gather_path_equals_box_sums(dims, data):
    from dragsaw.pdcr.composition import patch_series_counts

    size = tuple(data.draw(st.integers(2, 9)) for _ in range(dims))
    stride = tuple(data.draw(st.integers(1, 4)) for _ in range(dims))
    patch = tuple(data.draw(st.integers(1, 7)) for _ in range(dims))
    k = data.draw(st.integers(2, 4))
    ignore = data.draw(st.sampled_from([None, 0, 255]))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 999)))
    labels = torch.randint(0, k, (2, *size), generator=gen)
    if ignore == 255:
        labels[labels == 1] = 255
    grid = [-(-n // s) for n, s in zip(size, stride)]
    positions = torch.stack([torch.randint(0, g, (2, 5), generator=gen) for g in grid], dim=-1)
    want = LabelIntegral(labels, k, ignore).points(positions, stride, patch)
    torch.testing.assert_close(patch_series_counts(labels, positions, stride, [patch], k, ignore)[0], want)


@settings(max_examples=40, deadline=None)
@given(dims=st.integers(1, 3), data=st.data())
def test_patch_series_gather_equals_box_sums_per_length(dims, data):
    from dragsaw.pdcr.composition import patch_series_counts

    size = tuple(data.draw(st.integers(2, 9)) for _ in range(dims))
    stride = tuple(data.draw(st.integers(1, 4)) for _ in range(dims))
    series = [tuple(data.draw(st.integers(1, 7)) for _ in range(dims)) for _ in range(data.draw(st.integers(1, 3)))]
    k = data.draw(st.integers(2, 4))
    ignore = data.draw(st.sampled_from([None, 1, -1]))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 999)))
    labels = torch.randint(0, k, (2, *size), generator=gen)
    if ignore == -1:
        labels[labels == 0] = -1
    grid = [-(-n // s) for n, s in zip(size, stride)]
    positions = torch.stack([torch.randint(0, g, (2, 5), generator=gen) for g in grid], dim=-1)
    got = patch_series_counts(labels, positions, stride, series, k, ignore)
    assert len(got) == len(series)
    for patch, counts in zip(series, got):
        torch.testing.assert_close(counts, LabelIntegral(labels, k, ignore).points(positions, stride, patch))


@pytest.mark.parametrize("k,size,stride,patch,ignore", [
    (40, (9, 11), (2, 3), (5, 4), None),  # 4-bit fields, seven classes per word: six words
    (33, (5, 6, 7), (2, 2, 3), (3, 5, 2), -1),
])
def test_many_classes(k, size, stride, patch, ignore):
    labels = torch.randint(0, k, (2, *size), generator=torch.Generator().manual_seed(k))
    if ignore is not None:
        labels[:, ::2] = ignore
    got = label_composition(labels, k, stride, patch, ignore_index=ignore)
    torch.testing.assert_close(got.double(), naive_composition(labels, k, stride, patch, ignore), atol=1e-6, rtol=0)
