"""The docstrings' runnable examples are tests (``--doctest-modules`` in pyproject.toml).

pytest collects the examples of every module in ``api_prompt/`` and ``cli/`` (both are in
``testpaths``), so no list of modules is kept by hand. This file adjusts that collection:

- ``cli/`` installs as ``api_prompt.cli``: its modules are imported under that name (not as a
  second copy, ``cli.*``), and so is every package module, by its dotted name;
- a file with no ``>>>`` is not imported at all (collection stays cheap, and modules of extras
  without examples, such as the Ray engine, are not imported);
- a module that needs an optional extra which is not installed skips, naming the extra (with
  ``API_PROMPT_NO_SKIPS=1``, as in CI, that skip fails the run: see tests/conftest.py);
- a docstring whose examples are all ``# doctest: +SKIP`` is illustration, not a test: it is not
  collected (it would only ever report a skip);
- the examples run from the repository root (some load ``assets/``), with PIL's process-wide
  defaults, and with no OpenAI endpoint taken from the environment.

It also marks the notebook slow, so ``python -m pytest -m "not slow"`` is the quick loop.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest
from _pytest.doctest import DoctestItem, DoctestModule
from PIL import Image

ROOT = Path(__file__).parent
_PIL_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS  # read before any import can lift it

#: The optional extra that installs each importable name a module may need (pyproject.toml).
OPTIONAL_EXTRAS = {
    "ray": "ray",
    "starlette": "serve",
    "uvicorn": "serve",
    "gradio": "playground",
    "lmms_eval": "lmms-eval",
    "datasets": "datasets",
    "pyarrow": "datasets",
}


def installed_module_name(path: Path) -> str | None:
    """The name a file of the source tree has once installed, or None outside the package.

    >>> installed_module_name(ROOT / "cli" / "common.py")
    'api_prompt.cli.common'
    >>> installed_module_name(ROOT / "api_prompt" / "styles" / "__init__.py")
    'api_prompt.styles'
    >>> installed_module_name(ROOT / "tests" / "tiny_hf.py") is None
    True
    """
    try:
        relative = path.resolve().relative_to(ROOT.resolve())
    except ValueError:
        return None
    parts = list(relative.with_suffix("").parts)
    if parts[0] == "cli":
        parts.insert(0, "api_prompt")
    elif parts[0] != "api_prompt":
        return None
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


class PackageDoctests(DoctestModule):
    """The examples of one module, imported by its installed name; skips without its extra."""

    def _getobj(self):
        name = installed_module_name(self.path)
        try:
            if name and name.startswith("api_prompt.cli."):
                # as the api-prompt command loads them: the app first, which registers each command
                importlib.import_module("api_prompt.cli.app")
            return importlib.import_module(name) if name else super()._getobj()
        except ModuleNotFoundError as error:
            extra = OPTIONAL_EXTRAS.get((error.name or "").split(".")[0])
            if extra is None:
                raise
            pytest.skip(
                f"the examples of {self.path.name} need the {extra} extra: "
                f"pip install -e '.[{extra}]'"
            )

    def collect(self):
        for item in super().collect():
            if not all(example.options.get(doctest.SKIP) for example in item.dtest.examples):
                yield item


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent):
    collected = yield
    adjusted = []
    for node in collected or []:
        if type(node) is DoctestModule:
            if ">>>" not in file_path.read_text(encoding="utf-8"):
                continue
            node = PackageDoctests.from_parent(parent, path=file_path)
        adjusted.append(node)
    return adjusted


@pytest.fixture(autouse=True)
def pil_default_truncated_image_handling():
    """Importing lmms-eval (its plugin tests do) turns on PIL's process-wide
    ``LOAD_TRUNCATED_IMAGES``, and some imports lift PIL's bomb limit; every test, doctests
    included, starts from PIL's defaults, whatever ran before."""
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    Image.MAX_IMAGE_PIXELS = _PIL_MAX_IMAGE_PIXELS


@pytest.fixture(autouse=True)
def doctest_surroundings(request, monkeypatch):
    """Docstring examples run from the repository root, with no OpenAI endpoint from outside."""
    if isinstance(request.node, DoctestItem):
        monkeypatch.chdir(ROOT)
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if type(item).__name__ == "NotebookItem":  # nbmake's: the walkthrough runs every cell
            item.add_marker(pytest.mark.slow)
