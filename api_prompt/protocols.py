"""What the shells (batch, evaluation, the proxy, the playground, ``wrap``) need of a prompter.

:class:`PrompterLike` is the part of :class:`~api_prompt.Prompter` they call, as a structural
type: annotate with it instead of ``Any``, and a test double with the same methods type-checks.
Torch-free (the names it mentions are imported only for type checkers).

>>> from api_prompt.protocols import PrompterLike
>>> from api_prompt import Prompter
>>> needed = [name for name in vars(PrompterLike) if not name.startswith("_")] + ["style", "__call__"]
>>> sorted(needed), all(hasattr(Prompter, name) for name in needed if name != "style")
(['__call__', 'attribute', 'batch', 'combine', 'describe', 'render', 'style', 'style_named'], True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from .attention_map import AttentionMap
    from .prompter import PromptResult
    from .styles.base import Style

__all__ = ["PrompterLike", "PromptFunction", "PrompterOrFunction"]


class PrompterLike(Protocol):
    """The stages of a :class:`~api_prompt.Prompter`: attribute (the model), combine (the
    recipe), render (the overlay) and all three at once (:meth:`batch`)."""

    style: Style

    def __call__(self, image: Any, query: str, *, exact_parts: bool | None = None) -> PromptResult:
        """Prompt one image for one query."""
        ...

    def attribute(
        self,
        images: Any,
        queries: Sequence[str] | str,
        *,
        warn: bool = True,
        exact_parts: bool | None = None,
    ) -> list[AttentionMap]:
        """One map per (image, query), its mask made by the prompter's recipe."""
        ...

    def combine(self, attention_map: AttentionMap, **settings: Any) -> AttentionMap:
        """The map with its mask made again from its raw parts (no model)."""
        ...

    def render(
        self, image: Any, attention_map: AttentionMap, **overlay_settings: Any
    ) -> Image.Image:
        """The prompted image (no model)."""
        ...

    def batch(
        self,
        images: Sequence[Any],
        queries: Sequence[str] | str,
        *,
        exact_parts: bool | None = None,
    ) -> list[PromptResult]:
        """Prompt many images at once."""
        ...

    def style_named(self, name: str) -> Style:
        """Another style with this prompter's settings."""
        ...

    def describe(self) -> dict[str, Any]:
        """Every setting that shapes the output."""
        ...


#: what :func:`~api_prompt.wrap` also takes: a function ``(image, question)`` returning a
#: prompted PIL image or a :class:`~api_prompt.PromptResult`
PromptFunction = Callable[["Image.Image", str], Any]
PrompterOrFunction = PrompterLike | PromptFunction
