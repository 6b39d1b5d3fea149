"""A page in the browser to try attention prompting: upload, ask, see where the model looks.

``api-prompt playground`` starts it (``pip install 'api-prompt[playground]'`` for Gradio). With no
model given it uses the small CLIP shipped with api-prompt and offers synthetic example scenes,
so it works offline.

>>> from api_prompt.playground import Playground, build_app          # doctest: +SKIP
>>> build_app(Playground(device="cpu")).launch()                     # doctest: +SKIP

:class:`Playground` (the model and the three stages) needs no Gradio; :func:`build_app` does,
and is imported only when used.
"""

from __future__ import annotations

from .engine import Playground, View, default_model_dir

__all__ = ["Playground", "View", "build_app", "default_model_dir"]


def build_app(playground: Playground, **options):
    """The Gradio page for ``playground`` (see :mod:`api_prompt.playground.app`)."""
    from .app import build_app as build

    return build(playground, **options)
