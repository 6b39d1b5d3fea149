"""Deterministic synthetic scenes of coloured shapes ("synthshapes").

A *scene* is a small RGB image holding 1..N non-overlapping coloured shapes on a
low-saturation (gray-ish) background, together with the ground-truth list of
objects and their pixel bounding boxes.  It is used to train the tiny CLIP that
ships in ``assets/synthshapes-clip`` and to benchmark attention-map localization
(query one object by its phrase, check where the map points).

Everything is pure numpy + PIL and fully determined by the ``numpy.random.Generator``
that is passed in, so ``make_scene(np.random.default_rng(seed))`` always returns the
same scene for the same ``seed`` (and the same package version).

Vocabulary
----------
``SHAPES``  = ("circle", "square", "triangle")
``COLORS``  = ("red", "green", "blue", "yellow", "purple", "orange")
``PHRASES`` = the 18 ``"<color> <shape>"`` phrases, colour-major order.

Geometry
--------
Boxes are ``(x0, y0, x1, y1)`` integer pixel coordinates in the scene image,
``x0``/``y0`` inclusive and ``x1``/``y1`` exclusive (the PIL ``crop`` convention), so an
object covers columns ``x0..x1-1`` and rows ``y0..y1-1``.  Every shape exactly fills
its box in both directions: a circle is the disc inscribed in a square box, a square
is the box, a triangle is the upward isosceles triangle with its base on the box's
bottom edge and apex at the middle of the top edge.  ``Scene.mask(i)`` gives the
per-pixel coverage of object ``i``.  Boxes of different objects are separated by at
least ``gap`` pixels (default 2), so objects never overlap or touch.

Example
-------
>>> import numpy as np
>>> from benchmarks.synthshapes.scenes import make_scene, caption_for, object_phrase
>>> rng = np.random.default_rng(0)
>>> scene = make_scene(rng, size=64, n_objects=(1, 3))
>>> scene.image.size
(64, 64)
>>> [object_phrase(o) for o in scene.objects]        # doctest: +SKIP
['red circle', 'blue square']
>>> caption_for(scene, rng)                           # doctest: +SKIP
'a red circle'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SHAPES",
    "COLORS",
    "COLOR_RGB",
    "PHRASES",
    "ShapeObject",
    "Scene",
    "object_phrase",
    "phrase_caption",
    "make_scene",
    "caption_for",
    "scene_from_seed",
    "render_scene",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

#: Fill colour of each colour name (sRGB, 0..255).  Strongly saturated and mutually
#: distinct; backgrounds are kept low-saturation so they never look like one of these.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 75, 225),
    "yellow": (240, 215, 25),
    "purple": (145, 45, 190),
    "orange": (250, 135, 20),
}
COLORS: tuple[str, ...] = tuple(COLOR_RGB)

#: All ``"<color> <shape>"`` phrases (18), colour-major: "red circle", "red square", ...
PHRASES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)

_BACKGROUNDS = ("plain", "gradient", "noise")
_SUPERSAMPLE = 4  # shapes are drawn at 4x resolution and box-downsampled (anti-aliasing)

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene.

    Attributes:
        shape: one of ``SHAPES``.
        color: one of ``COLORS``.
        box: ``(x0, y0, x1, y1)`` pixel box, x1/y1 exclusive; the shape fills it.
    """

    shape: str
    color: str
    box: Box

    @property
    def phrase(self) -> str:
        """``"<color> <shape>"``, e.g. ``"red circle"``."""
        return f"{self.color} {self.shape}"

    @property
    def center(self) -> tuple[float, float]:
        """Box centre ``(x, y)`` in pixel coordinates (continuous, pixel i spans [i, i+1))."""
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)


@dataclass
class Scene:
    """A rendered scene.

    Attributes:
        image: PIL RGB image, ``size`` x ``size``.
        objects: the objects, in drawing order (they never overlap).
        size: image side in pixels.
        background: background kind, one of ``"plain"``, ``"gradient"``, ``"noise"``.
    """

    image: Image.Image
    objects: list[ShapeObject]
    size: int
    background: str = "plain"
    _masks: list[np.ndarray] | None = field(default=None, repr=False, compare=False)

    def mask(self, index: int) -> np.ndarray:
        """Coverage of object ``index`` as a float32 ``size`` x ``size`` array in [0, 1]
        (fractional at anti-aliased edges; ``> 0.5`` gives a binary mask)."""
        if self._masks is None:
            self._masks = [_object_coverage(o, self.size) for o in self.objects]
        return self._masks[index]

    def phrases(self) -> list[str]:
        """Phrases of all objects, in object order."""
        return [o.phrase for o in self.objects]

    def find(self, phrase: str) -> list[int]:
        """Indices of the objects whose phrase equals ``phrase`` (e.g. ``"red circle"``)."""
        return [i for i, o in enumerate(self.objects) if o.phrase == phrase]


def object_phrase(obj: ShapeObject) -> str:
    """``"red circle"``-style phrase naming ``obj`` (no article)."""
    return f"{obj.color} {obj.shape}"


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def phrase_caption(phrases: Sequence[str]) -> str:
    """Join phrases into a caption: ``["red circle"] -> "a red circle"`` (``"an orange
    square"``),
    ``["red circle", "blue square"] -> "a red circle and a blue square"``,
    three or more: ``"a red circle, a blue square and a green triangle"``."""
    items = [f"{_article(p)} {p}" for p in phrases]
    if not items:
        raise ValueError("need at least one phrase")
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


# ----------------------------------------------------------------------------- geometry


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Box, fill, scale: int) -> None:
    x0, y0, x1, y1 = (v * scale for v in box)
    if shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1 - 1) / 2.0, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _object_coverage(obj: ShapeObject, size: int) -> np.ndarray:
    s = _SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    _draw_shape(ImageDraw.Draw(canvas), obj.shape, obj.box, 255, s)
    big = np.asarray(canvas, dtype=np.float32) / 255.0
    return big.reshape(size, s, size, s).mean(axis=(1, 3))


def _boxes_clear(box: Box, others: Sequence[Box], gap: int) -> bool:
    x0, y0, x1, y1 = box
    for a0, b0, a1, b1 in others:
        if x0 < a1 + gap and a0 < x1 + gap and y0 < b1 + gap and b0 < y1 + gap:
            return False
    return True


# --------------------------------------------------------------------------- background


def _background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """Low-saturation background, float32 HxWx3 in 0..255."""

    def gray() -> np.ndarray:
        level = rng.uniform(70.0, 200.0)
        tint = rng.uniform(-12.0, 12.0, size=3)  # slight warm/cool cast, stays gray-ish
        return np.clip(level + tint, 0.0, 255.0)

    if kind == "plain":
        img = np.broadcast_to(gray(), (size, size, 3)).copy()
    elif kind == "gradient":
        c0, c1 = gray(), gray()
        angle = rng.uniform(0.0, 2.0 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
        t = (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = c0[None, None, :] * (1.0 - t[..., None]) + c1[None, None, :] * t[..., None]
    elif kind == "noise":
        base = gray()
        sigma = rng.uniform(6.0, 18.0)
        # gray (channel-correlated) noise plus a little per-channel noise
        lum = rng.normal(0.0, sigma, size=(size, size, 1))
        chroma = rng.normal(0.0, sigma * 0.25, size=(size, size, 3))
        img = base[None, None, :] + lum + chroma
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {_BACKGROUNDS}")
    return np.clip(img, 0.0, 255.0).astype(np.float32)


# ------------------------------------------------------------------------------ scenes


def render_scene(
    objects: Sequence[ShapeObject],
    size: int = 64,
    rng: np.random.Generator | None = None,
    background: str = "plain",
) -> Scene:
    """Render given objects (boxes must lie inside the image and not overlap) on a
    background of kind ``background`` drawn from ``rng`` (default: seed 0)."""
    rng = np.random.default_rng(0) if rng is None else rng
    s = _SUPERSAMPLE
    bg = _background(rng, size, background)
    layer = Image.new("RGB", (size * s, size * s), (0, 0, 0))
    alpha = Image.new("L", (size * s, size * s), 0)
    d_rgb, d_a = ImageDraw.Draw(layer), ImageDraw.Draw(alpha)
    for o in objects:
        x0, y0, x1, y1 = o.box
        if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
            raise ValueError(f"box {o.box} outside a {size}px image")
        if o.color not in COLOR_RGB:
            raise ValueError(f"unknown colour {o.color!r}; expected one of {COLORS}")
        _draw_shape(d_rgb, o.shape, o.box, COLOR_RGB[o.color], s)
        _draw_shape(d_a, o.shape, o.box, 255, s)
    fg = np.asarray(layer, dtype=np.float32).reshape(size, s, size, s, 3).mean(axis=(1, 3))
    a = np.asarray(alpha, dtype=np.float32).reshape(size, s, size, s).mean(axis=(1, 3)) / 255.0
    # fg was averaged with black where alpha = 0: un-premultiply by compositing fg + (1-a) bg
    out = fg + (1.0 - a[..., None]) * bg
    img = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")
    return Scene(image=img, objects=list(objects), size=size, background=background)


def make_scene(
    rng: np.random.Generator,
    size: int = 64,
    n_objects: int | tuple[int, int] = (1, 3),
    min_side: int | None = None,
    max_side: int | None = None,
    gap: int = 2,
    distinct: bool = True,
    shapes: Sequence[str] = SHAPES,
    colors: Sequence[str] = COLORS,
    background: str | None = None,
) -> Scene:
    """Draw a random scene.

    Args:
        rng: numpy ``Generator``; the scene is a pure function of its state.
        size: image side in pixels.
        n_objects: exact count, or inclusive ``(lo, hi)`` range drawn uniformly.
        min_side, max_side: box side range in pixels (default ``size*3//16`` ..
            ``size*3//8``, i.e. 12..24 px at 64 px).  Each box is square for circles and
            squares; triangles get a square box too.
        gap: minimum pixel gap between boxes.
        distinct: if True, no two objects share the same (colour, shape) phrase, so
            every phrase names exactly one object.
        shapes, colors: vocabulary subsets to draw from.
        background: ``"plain"``, ``"gradient"``, ``"noise"`` or None (random).

    Placement uses rejection sampling; if an object cannot be placed after many
    tries, it is left out (so ``len(scene.objects)`` can be below the drawn count
    for very crowded requests; never for the defaults).
    """
    if isinstance(n_objects, (int, np.integer)):
        lo = hi = int(n_objects)
    else:
        lo, hi = (int(v) for v in n_objects)
    if not 1 <= lo <= hi:
        raise ValueError(f"bad n_objects {n_objects!r}")
    min_side = max(4, size * 3 // 16) if min_side is None else int(min_side)
    max_side = max(min_side, size * 3 // 8) if max_side is None else int(max_side)
    count = int(rng.integers(lo, hi + 1))
    kind = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))] if background is None else background

    pairs = [(c, s) for c in colors for s in shapes]
    if distinct:
        if count > len(pairs):
            raise ValueError("more objects than distinct phrases")
        chosen = [pairs[i] for i in rng.permutation(len(pairs))[:count]]
    else:
        chosen = [pairs[int(rng.integers(len(pairs)))] for _ in range(count)]

    objects: list[ShapeObject] = []
    boxes: list[Box] = []
    for color, shape in chosen:
        for _ in range(200):
            side = int(rng.integers(min_side, max_side + 1))
            x0 = int(rng.integers(0, size - side + 1))
            y0 = int(rng.integers(0, size - side + 1))
            box = (x0, y0, x0 + side, y0 + side)
            if _boxes_clear(box, boxes, gap):
                boxes.append(box)
                objects.append(ShapeObject(shape=shape, color=color, box=box))
                break
    return render_scene(objects, size=size, rng=rng, background=kind)


def scene_from_seed(seed: int, **kwargs) -> Scene:
    """``make_scene(np.random.default_rng(seed), **kwargs)`` — one scene per integer seed."""
    return make_scene(np.random.default_rng(seed), **kwargs)


def caption_for(
    scene: Scene,
    rng: np.random.Generator,
    p_single: float = 0.7,
    max_named: int | None = None,
    shuffle: bool = True,
) -> str:
    """A caption naming a random non-empty subset of the scene's objects.

    With probability ``p_single`` (or always, for 1-object scenes) one object is named
    (``"a red circle"``); otherwise 2..``max_named`` objects (default all) are named,
    in random order if ``shuffle`` (``"a blue square and a red circle"``).
    """
    n = len(scene.objects)
    if n == 0:
        raise ValueError("scene has no objects")
    hi = n if max_named is None else max(1, min(n, int(max_named)))
    if hi == 1 or rng.random() < p_single:
        k = 1
    else:
        k = int(rng.integers(2, hi + 1))
    idx = rng.permutation(n)[:k] if shuffle else np.sort(rng.permutation(n)[:k])
    return phrase_caption([scene.objects[int(i)].phrase for i in idx])


if __name__ == "__main__":  # quick visual check: python -m benchmarks.synthshapes.scenes out.png
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/synthshapes_grid.png"
    rng = np.random.default_rng(0)
    grid = Image.new("RGB", (8 * 66, 8 * 66), (255, 255, 255))
    for i in range(64):
        sc = make_scene(rng)
        grid.paste(sc.image.resize((64, 64)), ((i % 8) * 66, (i // 8) * 66))
        print(i, sc.background, [o.phrase for o in sc.objects], "|", caption_for(sc, rng))
    grid.save(out)
    print("wrote", out)
