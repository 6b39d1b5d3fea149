"""Helpers for the batch tests (no tests here): a fake attributor and a CLI launcher.

``PatternAttributor`` is deterministic, fast and needs no model: its map depends on the image
(a coarse gray thumbnail) and on the query (a per-query ramp), so wrong pairings show up in the
outputs. ``python tests/batch_support.py batch ...`` runs the real ``api-prompt`` CLI with
the ``clip`` backend replaced by it (``API_PROMPT_FAKE_DELAY`` seconds of sleep per batch);
``python tests/batch_support.py ray-run SOURCE OUT ADDRESS`` runs ``engine="ray"`` as a driver
of an existing Ray cluster.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from api_prompt.attribution.base import AttentionMap, Attributor


class PatternAttributor(Attributor):
    """A model-free attributor for tests: the map mixes the image's thumbnail and the query."""

    name = "pattern"

    def __init__(
        self, grid: int = 6, delay: float = 0.0, fail_on: str | None = None, **options
    ) -> None:
        self.grid, self.delay, self.fail_on = grid, delay, fail_on
        self.options = {
            key: value for key, value in options.items() if key not in ("device", "batch_size")
        }
        self.calls: list[int] = []

    def attribute(self, images, queries):
        self.calls.append(len(images))
        if self.delay:
            time.sleep(self.delay)
        maps = []
        for image, query in zip(images, queries):
            if self.fail_on and self.fail_on in query:
                raise ValueError(f"cannot attribute {query!r}")
            thumb = (
                np.asarray(
                    image.convert("L").resize((self.grid, self.grid), Image.Resampling.BILINEAR),
                    dtype=np.float32,
                )
                / 255
            )
            seed = int(hashlib.sha256(query.encode()).hexdigest()[:8], 16)
            ramp = np.roll(np.linspace(0, 1, self.grid * self.grid, dtype=np.float32), seed % 17)
            mask = thumb + ramp.reshape(self.grid, self.grid)
            mask = (mask - mask.min()) / (mask.max() - mask.min() + 1e-6)
            maps.append(
                AttentionMap(
                    mask.astype(np.float32),
                    {"raw": mask},
                    image.size,
                    (0.0, 0.0, float(image.width), float(image.height)),
                    query,
                )
            )
        return maps

    def describe(self):
        return {"backend": "pattern", "grid": self.grid, **self.options}


def run_cli(argv: list[str]) -> None:
    """Run the api-prompt CLI with the ``clip`` backend served by :class:`PatternAttributor`."""
    from api_prompt.attribution import base

    base.BACKENDS["clip"] = f"{Path(__file__).stem}:SlowPatternAttributor"
    try:
        from api_prompt.cli.app import app
    except ImportError:  # a source tree that was not pip-installed
        from cli.app import app
    app(argv, prog_name="api-prompt")


class CountingPatternAttributor(PatternAttributor):
    """PatternAttributor that counts how often a model was "loaded" (constructed)."""

    loads = 0

    def __init__(self, **options) -> None:
        type(self).loads += 1
        super().__init__(**options)


class SlowPatternAttributor(PatternAttributor):
    """PatternAttributor with the delay taken from ``API_PROMPT_FAKE_DELAY``."""

    def __init__(self, **options) -> None:
        super().__init__(delay=float(os.environ.get("API_PROMPT_FAKE_DELAY", "0")), **options)


class PidPatternAttributor(PatternAttributor):
    """PatternAttributor whose description names the process it lives in (a model that differs
    between the driver and the actors, as other weights on another node would)."""

    def describe(self):
        return {**super().describe(), "pid": os.getpid()}


def pattern_prompter(grid: int = 6, refuse_pid: int | None = None, fail: str | None = None):
    """A Prompter around :class:`PatternAttributor`, for a LazyPrompter's ``build``: it raises
    when called in process ``refuse_pid`` (the driver, which must not load the model) and raises
    ``fail`` as a load error (missing weights, say)."""
    from api_prompt.errors import ConfigError
    from api_prompt.prompter import Prompter

    if refuse_pid == os.getpid():
        raise AssertionError("the model was loaded in the driver")
    if fail is not None:
        raise ConfigError(fail)
    return Prompter(attributor=PatternAttributor(grid=grid))


def run_on_ray(source: str, out: str, address: str) -> None:
    """``run(engine="ray")`` as a separate driver joining the Ray cluster at ``address``."""
    from api_prompt.batch import run
    from api_prompt.prompter import Prompter

    attributor = SlowPatternAttributor()
    run(
        source,
        out,
        Prompter(attributor=attributor),
        engine="ray",
        address=address,
        batch_size=2,
        progress=False,
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    if sys.argv[1:2] == ["ray-run"]:
        run_on_ray(*sys.argv[2:5])
    else:
        run_cli(sys.argv[1:])
