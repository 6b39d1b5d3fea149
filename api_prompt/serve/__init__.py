"""``api-prompt serve``: attention prompting as an OpenAI-compatible proxy (optional extra ``serve``).

Point any OpenAI-compatible client (the ``openai`` SDK, evaluation frameworks, chat front ends)
at the proxy; it prompts the images of each request and forwards it to the real server.

- :mod:`~api_prompt.serve.app`: the Starlette application (:func:`create_app`, :class:`ServeConfig`)
- :mod:`~api_prompt.serve.batcher`: the micro-batcher
- :mod:`~api_prompt.serve.messages`: finding and replacing images in chat requests (pure)
- :mod:`~api_prompt.serve.fetch`: fetching http(s) image URLs with limits, from public addresses only
- :mod:`~api_prompt.serve.styles`: the server's prompt style and a request's ``api_prompt`` choice

Needs ``pip install "api-prompt[serve]"`` (Starlette and uvicorn).
"""

from __future__ import annotations

from .batcher import MicroBatcher, QueueFull
from .messages import ImagePart, RequestError, find_images, replace_images

__all__ = [
    "MicroBatcher",
    "QueueFull",
    "ImagePart",
    "RequestError",
    "find_images",
    "replace_images",
    "ServeConfig",
    "create_app",
]


def __getattr__(name: str):
    if name in ("ServeConfig", "create_app"):  # imports Starlette: only when used
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'api_prompt.serve' has no attribute {name!r}")
