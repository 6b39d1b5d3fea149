"""The pure map operations (docs/ALGORITHM.md §1 "Combining", §2 "Mask")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from api_prompt.errors import ConfigError
from api_prompt.maps import (
    box_filter,
    combine_clip,
    combine_llava,
    enhance,
    get_recipe,
    minmax,
    soft_or,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
grids = st.integers(2, 12).flatmap(lambda p: arrays(np.float32, (p, p), elements=finite))
odd_kernels = st.sampled_from([1, 3, 5, 7])


@given(grids)
def test_minmax_spans_zero_to_one_and_keeps_order(x):
    y = minmax(x)
    assert y.dtype == np.float32 and np.all((y >= 0) & (y <= 1))
    if x.max() > x.min():
        assert y.flat[np.argmax(x)] == 1.0 and y.flat[np.argmin(x)] == 0.0
        assert np.all(np.diff(y.ravel()[np.argsort(x.ravel(), kind="stable")]) >= -1e-6)


@given(grids)
def test_inverted_minmax_mirrors_minmax(x):
    assume(x.max() > x.min())
    np.testing.assert_allclose(minmax(x, invert=True), 1.0 - minmax(x), atol=1e-6)


@given(grids, st.floats(0.1, 20))
def test_enhance_stays_in_unit_range(x, coe):
    y = enhance(minmax(x), coe)
    assert np.all(np.isfinite(y)) and np.all((y >= 0) & (y <= 1))


def test_enhance_uses_unbiased_std():
    a = np.array([[0.0, 1.0], [0.0, 1.0]])
    z = (a - 0.5) / np.std(a, ddof=1)
    np.testing.assert_allclose(enhance(a, 2.0), 1 / (1 + np.exp(-2.0 * z)), rtol=1e-12)


@given(grids, odd_kernels)
def test_box_filter_preserves_range_and_constants(x, k):
    y = box_filter(x, k)
    assert y.shape == x.shape
    assert y.min() >= x.min() - 1e-3 and y.max() <= x.max() + 1e-3


@given(grids)
def test_kernel_one_is_identity(x):
    np.testing.assert_array_equal(box_filter(x, 1), x)


def test_box_filter_replicates_the_border():
    x = np.zeros((5, 5))
    x[0, 0] = 9.0
    y = box_filter(x, 3)
    # Replicate padding: the corner's 3×3 window sees the corner value four times.
    assert y[0, 0] == pytest.approx(4.0)
    assert y[1, 1] == pytest.approx(1.0)
    assert y[0, 1] == pytest.approx(2.0)


def test_box_filter_matches_a_direct_mean():
    rng = np.random.default_rng(0)
    x = rng.random((7, 7))
    padded = np.pad(x, 2, mode="edge")
    direct = np.array([[padded[i : i + 5, j : j + 5].mean() for j in range(7)] for i in range(7)])
    np.testing.assert_allclose(box_filter(x, 5), direct, rtol=1e-12)


@pytest.mark.parametrize("k", [0, 2, 4, -1, 2.0, True])
def test_box_filter_refuses_invalid_kernels(k):
    with pytest.raises(ConfigError, match="odd integer"):
        box_filter(np.ones((4, 4)), k)


@given(grids, grids)
def test_soft_or_is_an_or(a, b):
    if a.shape != b.shape:
        return
    a, b = minmax(a), minmax(b)
    y = soft_or(a, b)
    assert np.all(y >= np.maximum(a, b) - 1e-6) and np.all(y <= 1 + 1e-6)


@pytest.mark.parametrize("value", [0.0, 3.5, -2.0])
def test_constant_maps_mean_no_masking(value):
    const = np.full((6, 6), value, dtype=np.float32)
    assert np.all(minmax(const) == 1.0) and np.all(minmax(const, invert=True) == 1.0)
    np.testing.assert_array_equal(enhance(const, 10.0), const)
    assert np.all(combine_clip(const, const, coe=10, kernel_size=3) == 1.0)
    assert np.all(combine_llava(const, coe=10, kernel_size=3) == 1.0)


def test_one_constant_part_does_not_poison_the_mask():
    ramp = np.arange(36, dtype=np.float32).reshape(6, 6)
    mask = combine_clip(ramp, np.zeros_like(ramp), coe=5, kernel_size=3)
    assert np.all(np.isfinite(mask)) and mask.min() == 0.0 and mask.max() == 1.0


def test_batched_equals_one_by_one():
    rng = np.random.default_rng(1)
    cls, comp = rng.random((2, 3, 4, 8, 8)).astype(np.float32)
    batched = combine_clip(cls, comp, coe=10, kernel_size=3)
    for i in range(3):
        for j in range(4):
            single = combine_clip(cls[i, j], comp[i, j], coe=10, kernel_size=3)
            np.testing.assert_allclose(batched[i, j], single, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_in_torch_out_keeps_dtype(dtype):
    x = torch.rand(2, 5, 5, dtype=dtype)
    for y in (minmax(x), enhance(x, 3.0), box_filter(x, 3), combine_llava(x, coe=1, kernel_size=3)):
        assert isinstance(y, torch.Tensor) and y.dtype == dtype


def test_numpy_in_numpy_out_keeps_dtype():
    x = np.random.default_rng(2).random((5, 5))
    assert combine_clip(x, x, coe=1, kernel_size=3).dtype == np.float64
    assert (
        combine_clip(x.astype(np.float32), x.astype(np.float32), coe=1, kernel_size=3).dtype
        == np.float32
    )


def test_combine_reproduces_the_reference_masks(clip_cases, expected_npz):
    """The golden fixture's masks follow from its raw maps through combine_clip (within 1e-5)."""
    for case in clip_cases:
        name = case["name"]
        mask = combine_clip(
            expected_npz[f"{name}_psi_cls"],
            expected_npz[f"{name}_psi_comp"],
            coe=case["enhance"],
            kernel_size=case["kernel_size"],
        )
        np.testing.assert_allclose(mask, expected_npz[f"{name}_mask"], atol=1e-5)


def test_combine_llava_order_of_steps():
    rng = np.random.default_rng(3)
    att = rng.random((6, 6))
    expected = box_filter(enhance(minmax(att), 10.0), 3)
    np.testing.assert_array_equal(combine_llava(att, coe=10.0, kernel_size=3), expected)


@pytest.mark.parametrize("recipe_name", ["clip-soft-or", "siglip-soft-or", "llava"])
@pytest.mark.parametrize("exact", [None, True, False])
def test_batched_combine_gives_each_map_the_mask_it_gets_alone(recipe_name, exact):
    """The Prompter combines a batch's maps in one recipe call per grid size; every mask equals
    the one combine_map makes for that map alone: bit for bit for the parts combined in float64
    (those with ``exact_parts``, the CLIP family's), within 1e-6 (float32 rounding) for float32 parts
    (torch sums a stack in another order). Maps of three grid sizes, a map with only a mask, and
    a single map of its grid are mixed in the same batch."""
    from api_prompt.attention_map import AttentionMap
    from api_prompt.maps import combine_map, combine_maps

    recipe = get_recipe(recipe_name)
    rng = np.random.default_rng(len(recipe_name))
    extra = {} if exact is None else {"exact_parts": exact}

    def raw(grid: int) -> AttentionMap:
        parts = {name: rng.normal(size=(grid, grid)).astype(np.float32) for name in recipe.parts}
        return AttentionMap(None, parts, (64, 48), (0.0, 0.0, 64.0, 48.0), extra=dict(extra))

    only_mask = AttentionMap(
        rng.random((7, 7)).astype(np.float32), {}, (64, 48), (0.0, 0.0, 64.0, 48.0)
    )
    maps = [raw(7), raw(5), raw(7), only_mask, raw(7), raw(9), raw(5)]
    batched = combine_maps(maps, recipe, enhance=3.0, kernel_size=3)
    assert batched[3] is only_mask
    for amap, got in zip(maps, batched):
        alone = combine_map(amap, recipe, enhance=3.0, kernel_size=3)
        assert got.recipe == alone.recipe and got.parts is amap.parts
        if exact is None:
            np.testing.assert_allclose(got.mask, alone.mask, rtol=0, atol=1e-6)
        else:
            np.testing.assert_array_equal(got.mask, alone.mask)
