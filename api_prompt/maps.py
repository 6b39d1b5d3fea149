"""Pure tensor operations on attention maps (docs/ALGORITHM.md §1 "Combining" and §2 "Mask"), and
the named recipes that combine a backend's raw parts into the mask (:data:`RECIPES`).

Every function works on the last two dimensions (the P×P grid) and broadcasts over any leading
dimensions, so a batch of maps is processed in one call. Inputs may be torch tensors or numpy
arrays; the result has the same type, dtype (float32 or float64) and device as the input.

Constant maps: a map without contrast carries no information about where to look, so every
normalisation turns it into **all ones** (no masking) and :func:`enhance` leaves it unchanged.
Nothing here ever produces NaN.

>>> import numpy as np
>>> from api_prompt.maps import minmax, box_filter
>>> minmax(np.array([[0.0, 2.0], [4.0, 8.0]])).tolist()
[[0.0, 0.25], [0.5, 1.0]]
>>> box_filter(np.array([[0.0, 0.0], [0.0, 9.0]]), 3).round(3).tolist()
[[1.0, 2.0], [2.0, 4.0]]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import torch

from .attention_map import AttentionMap
from .errors import ConfigError
from .settings import check_kernel_size

Map = TypeVar("Map", torch.Tensor, np.ndarray)

__all__ = [
    "minmax",
    "enhance",
    "box_filter",
    "soft_or",
    "combine_clip",
    "combine_llava",
    "combine_attention_pool",
    "check_kernel_size",
    "Recipe",
    "RECIPES",
    "get_recipe",
    "register_recipe",
    "combine_map",
    "combine_maps",
]


F = TypeVar("F", bound=Callable[..., Any])


def _accepts_numpy(fn: F) -> F:
    """Let a torch implementation take numpy arrays too, and give numpy back for them: the body
    always sees tensors (:func:`_tensor`), the caller gets the type it gave."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if any(isinstance(arg, np.ndarray) for arg in args):
            tensors = [
                torch.from_numpy(np.ascontiguousarray(arg)) if isinstance(arg, np.ndarray) else arg
                for arg in args
            ]
            return fn(*tensors, **kwargs).numpy()
        return fn(*args, **kwargs)

    return cast(F, wrapper)


def _tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The tensor a body of an :func:`_accepts_numpy` function is given (numpy is converted)."""
    if not isinstance(x, torch.Tensor):  # pragma: no cover - the decorator converts numpy first
        raise TypeError(f"expected a tensor, got {type(x).__name__}")
    return x


def _grid_stats(x: torch.Tensor, reduce: Callable[..., torch.Tensor]) -> torch.Tensor:
    return reduce(x.flatten(-2), dim=-1, keepdim=True).unsqueeze(-1)


@_accepts_numpy
def minmax(x: Map, *, invert: bool = False) -> Map:
    """Scale each P×P map to [0, 1]: ``(x - min) / (max - min)``.

    With ``invert=True`` the scale is flipped, ``(max - x) / (max - min)``: the highest input
    becomes 0 (used for Ψcomp, which is high on low-information patches).
    A constant map becomes all ones.
    """
    t = _tensor(x)
    lo = _grid_stats(t, torch.amin)
    hi = _grid_stats(t, torch.amax)
    span = hi - lo
    scaled = (hi - t) / span if invert else (t - lo) / span
    return cast(Map, torch.where(span > 0, scaled, torch.ones_like(t)))


@_accepts_numpy
def enhance(x: Map, coe: float) -> Map:
    """Sharpen contrast: ``clamp(sigmoid(coe * (x - mean) / std), 0, 1)``, std unbiased (N − 1).

    A map with zero spread is returned unchanged (there is no contrast to enhance).
    """
    t = _tensor(x)
    mean = _grid_stats(t, torch.mean)
    std = t.flatten(-2).std(dim=-1, unbiased=True, keepdim=True).unsqueeze(-1)
    enhanced = torch.sigmoid(coe * (t - mean) / std).clamp(0.0, 1.0)
    return cast(Map, torch.where(std > 0, enhanced, t))


@_accepts_numpy
def box_filter(x: Map, kernel_size: int) -> Map:
    """Mean filter with a k×k kernel (weights 1/k²), stride 1, replicate padding of (k − 1)/2.

    ``kernel_size`` must be odd; 1 returns the map unchanged.
    """
    k = check_kernel_size(kernel_size)
    t = _tensor(x)
    if k == 1:
        return cast(Map, t.clone())
    leading, (rows, columns) = t.shape[:-2], t.shape[-2:]
    flat = t.reshape(-1, rows, columns)
    pad = (k - 1) // 2
    # Replicate padding by clamped indices and the mean as a sum of the k² shifted views, not
    # F.pad + conv2d: on the CPU those two wake the whole intra-op thread pool even for a 24×24
    # map, and with the cores busy (a batch run's decode/encode threads) one call waited ~100 ms
    # for them; index_select and elementwise adds of a small map stay on the calling thread.
    row_index = torch.arange(-pad, rows + pad, device=t.device).clamp(0, rows - 1)
    column_index = torch.arange(-pad, columns + pad, device=t.device).clamp(0, columns - 1)
    padded = flat.index_select(1, row_index).index_select(2, column_index)
    total = padded[:, 0:rows, 0:columns]
    for i, j in ((i, j) for i in range(k) for j in range(k) if (i, j) != (0, 0)):
        total = total + padded[:, i : i + rows, j : j + columns]
    return cast(Map, (total / (k * k)).reshape(*leading, rows, columns))


@_accepts_numpy
def soft_or(a: Map, b: Map) -> Map:
    """Probabilistic OR of two maps in [0, 1]: ``a + b − a·b``."""
    ta, tb = _tensor(a), _tensor(b)
    return cast(Map, ta + tb - ta * tb)


@_accepts_numpy
def combine_clip(psi_cls: Map, psi_comp: Map, *, coe: float, kernel_size: int) -> Map:
    """The CLIP mask from the raw maps (docs/ALGORITHM.md §1, steps 1–5).

    ``a = enhance(minmax(Ψcls))``, ``b = minmax(Ψcomp, invert=True)``, both box-filtered, then
    ``minmax(soft_or(a, b))``.
    """
    a = box_filter(enhance(minmax(psi_cls), coe), kernel_size)
    b = box_filter(minmax(psi_comp, invert=True), kernel_size)
    return minmax(soft_or(a, b))


@_accepts_numpy
def combine_llava(attention: Map, *, coe: float, kernel_size: int) -> Map:
    """The LLaVA mask from the averaged attention map: min-max, enhance, box filter (§2).

    No soft OR and no final normalisation, as in the reference.
    """
    return box_filter(enhance(minmax(attention), coe), kernel_size)


@_accepts_numpy
def combine_attention_pool(psi_pool: Map, psi_token: Map, *, coe: float, kernel_size: int) -> Map:
    """The default mask for attention-pooled towers from ``psi_pool`` and ``psi_token`` (pure).

    ``a = box(enhance(minmax(ψ_pool)))``, ``b = box(minmax(ψ_token))``, mask = ``minmax(soft_or(a, b))``:
    the CLIP soft-OR recipe with the token part taken with its *positive* sign (not inverted).
    Chosen by the pointing game on the attention-pooled synthetic-shapes model, where the inverted
    token part is at chance and this mask is the best of the masks tried at every layer (README,
    "Does the map point at the right thing?"). The ``siglip-soft-or`` recipe; torch or numpy,
    batched over leading dimensions.

    >>> import numpy as np
    >>> pool = np.zeros((2, 4, 4), np.float32); pool[:, 1, 2] = 1.0
    >>> token = np.zeros((2, 4, 4), np.float32); token[:, 1, 2] = 0.5
    >>> mask = combine_attention_pool(pool, token, coe=10.0, kernel_size=1)
    >>> mask.shape, float(mask[0, 1, 2]), float(mask[0, 3, 3])
    ((2, 4, 4), 1.0, 0.0)
    """
    pool = box_filter(enhance(minmax(psi_pool), coe), kernel_size)
    token = box_filter(minmax(psi_token), kernel_size)
    return minmax(soft_or(pool, token))


# -- recipes: named ways to turn a backend's raw parts into the mask -----------------------------


@dataclass(frozen=True)
class Recipe:
    """A named, pure function from raw parts to the mask, with the settings every recipe takes.

    ``recipe(parts, enhance=coe, kernel_size=k)`` reads ``parts[name]`` for each name in
    :attr:`parts` (maps or batches of maps, numpy or torch) and returns the mask in [0, 1].

    >>> import numpy as np
    >>> parts = {"attention": np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)}
    >>> get_recipe("llava")(parts, enhance=10.0, kernel_size=1).astype(float).round(2).tolist()
    [[0.0, 0.02], [0.98, 1.0]]
    """

    name: str
    parts: tuple[str, ...]
    fn: Callable[..., Map]
    help: str

    def __call__(self, parts: Mapping[str, Map], *, enhance: float, kernel_size: int) -> Map:
        missing = [name for name in self.parts if name not in parts]
        if missing:
            raise ConfigError(
                f"recipe {self.name!r} needs the part(s) {', '.join(missing)}, but the map has "
                f"{', '.join(sorted(parts)) or 'none'}: choose a recipe made for this backend"
            )
        return self.fn(*(parts[name] for name in self.parts), coe=enhance, kernel_size=kernel_size)


#: recipe name -> :class:`Recipe`. A backend with new parts registers its own recipe.
RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to :data:`RECIPES` under its name (replacing one of the same name)."""
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``, or a ConfigError that lists the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}") from None


register_recipe(
    Recipe(
        "clip-soft-or",
        ("psi_cls", "psi_comp"),
        combine_clip,
        "the paper's CLIP mask: enhance(Ψcls) soft-OR inverted Ψcomp, box-filtered, min-max",
    )
)
register_recipe(
    Recipe(
        "siglip-soft-or",
        ("psi_pool", "psi_token"),
        combine_attention_pool,
        "attention-pooled towers (SigLIP): enhance(ψ_pool) soft-OR ψ_token (positive), box-filtered, min-max",
    )
)
register_recipe(
    Recipe(
        "llava",
        ("attention",),
        combine_llava,
        "the paper's decoder mask: min-max, enhance, box filter (no soft OR)",
    )
)


def combine_map(
    attention_map: AttentionMap, recipe: Recipe, *, enhance: float, kernel_size: int
) -> AttentionMap:
    """A copy of ``attention_map`` holding the mask ``recipe`` makes from its raw parts.

    The one place parts become a mask (the :class:`~api_prompt.Prompter` and an attributor used
    alone both call it). A map without raw parts is returned as it is. Parts that come in two
    equivalent scales (marked by ``extra["exact_parts"]``: exact, or early-exit) are combined in
    float64 on the small grid (microseconds), so the rounding is ~1e-8, not the ~1e-6 float32
    reaches after enhance's gain, and either scale gives the same mask.

    >>> amap = AttentionMap(None, {"attention": np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)},
    ...                     (2, 2), (0.0, 0.0, 2.0, 2.0))
    >>> combined = combine_map(amap, get_recipe("llava"), enhance=10.0, kernel_size=1)
    >>> combined.recipe, combined.mask.dtype, amap.mask is None
    ('llava', dtype('float32'), True)
    """
    if not attention_map.parts:
        return attention_map
    mask = recipe(_recipe_parts(attention_map), enhance=enhance, kernel_size=kernel_size)
    return attention_map.with_mask(mask, recipe.name)


def combine_maps(
    maps: Sequence[AttentionMap], recipe: Recipe, *, enhance: float, kernel_size: int
) -> list[AttentionMap]:
    """:func:`combine_map` on each map, with one recipe call (on the stacked parts) per group of
    maps whose parts agree in shape and precision: the same masks (parts combined in float64
    give the same bits in all the tests; float32 parts may differ by float32 rounding, as
    torch sums a stack in another order), a fraction of the calls.

    >>> amaps = [AttentionMap(None, {"attention": np.array([[0.0, v], [2.0, 3.0]], np.float32)},
    ...                       (2, 2), (0.0, 0.0, 2.0, 2.0)) for v in (1.0, 2.5)]
    >>> batched = combine_maps(amaps, get_recipe("llava"), enhance=10.0, kernel_size=1)
    >>> alone = [combine_map(m, get_recipe("llava"), enhance=10.0, kernel_size=1) for m in amaps]
    >>> all(np.array_equal(a.mask, b.mask) for a, b in zip(batched, alone))
    True
    """
    combined = list(maps)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, attention_map in enumerate(maps):
        parts = _recipe_parts(attention_map)
        if not parts:
            continue  # it keeps its mask, as with combine_map
        if any(name not in parts for name in recipe.parts):
            key: tuple[Any, ...] = ("alone", i)  # the recipe says what is missing
        else:
            key = tuple((parts[name].shape, parts[name].dtype) for name in recipe.parts)
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        if len(members) == 1:
            combined[members[0]] = combine_map(
                maps[members[0]], recipe, enhance=enhance, kernel_size=kernel_size
            )
            continue
        stacked = {
            name: np.stack([_recipe_parts(maps[i])[name] for i in members]) for name in recipe.parts
        }
        masks = np.asarray(recipe(stacked, enhance=enhance, kernel_size=kernel_size))
        for i, mask in zip(members, masks):
            combined[i] = maps[i].with_mask(mask, recipe.name)
    return combined


def _recipe_parts(attention_map: AttentionMap) -> Mapping[str, np.ndarray]:
    """The parts a recipe reads: as they are, or in float64 for parts that come in two
    equivalent scales (see :func:`combine_map`)."""
    parts: Mapping[str, np.ndarray] = attention_map.parts
    if "exact_parts" in attention_map.extra:
        parts = {name: np.asarray(part, dtype=np.float64) for name, part in parts.items()}
    return parts
