"""The official scoring code, imported for the tests that use it as their oracle.

Nothing here re-implements a scorer: each function returns the official module as its package
installs it (``lmms-eval``, VLMEvalKit as ``ms-vlmeval``, LLaVA as ``llava-torch``), and undoes the
process-wide settings those imports change, so the rest of the test session is not affected.
CI installs all three (see ``.ci/run``); where one is missing its tests skip, and CI fails on a skip.
"""

from __future__ import annotations

import importlib.util
import logging
import ssl
import sys
import types
from pathlib import Path

import pytest


def lmms_eval_module(name: str):
    """``lmms_eval.<name>`` (e.g. ``tasks.mme.utils``), PIL's truncated-image switch left as it was."""
    from PIL import ImageFile

    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    pytest.importorskip(
        "lmms_eval", reason="lmms-eval is not installed: pip install 'api-prompt[lmms-eval]'"
    )
    try:
        return importlib.import_module(f"lmms_eval.{name}")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated


def vlmevalkit():
    """VLMEvalKit's ``vlmeval`` package with its dataset and multiple-choice code imported.

    VLMEvalKit is ``pip install --no-deps ms-vlmeval`` plus the few modules its dataset code
    imports (its full dependency list pins versions this environment cannot have). Importing
    ``vlmeval.dataset`` imports every dataset class; one of them (HiPhO's physics verifier)
    imports ``math_verify``, which needs an ANTLR runtime that lmms-eval's pinned ``latex2sympy2``
    excludes. No code these tests run uses it, so when it cannot be imported an empty module
    stands in for it. ``import vlmeval`` also turns off TLS certificate checks for urllib and sets
    up root logging: both are restored here.
    """
    if "vlmeval.dataset" not in sys.modules:
        if importlib.util.find_spec("vlmeval") is None:
            pytest.skip("VLMEvalKit is not installed: pip install --no-deps ms-vlmeval")
        try:
            import math_verify  # noqa: F401
        except ImportError:
            stand_in = types.ModuleType("math_verify")
            for name in ("ExprExtractionConfig", "LatexExtractionConfig", "parse", "verify"):
                setattr(stand_in, name, None)
            sys.modules["math_verify"] = stand_in
        https_context = ssl._create_default_https_context
        handlers, level = list(logging.root.handlers), logging.root.level
        try:
            importlib.import_module("vlmeval")
            importlib.import_module("vlmeval.dataset")
            importlib.import_module("vlmeval.dataset.utils.multiple_choice")
            importlib.import_module("vlmeval.utils.matching_util")
        finally:
            ssl._create_default_https_context = https_context
            logging.root.handlers[:] = handlers
            logging.root.setLevel(level)
    return sys.modules["vlmeval"]


def llava_eval_pope():
    """LLaVA's ``llava/eval/eval_pope.py`` (from ``llava-torch``), loaded as a file.

    Importing it as ``llava.eval.eval_pope`` would first run ``llava/__init__.py``, which loads
    LLaVA's model code (pinned to transformers 4.36); the script itself imports only the
    standard library.
    """
    spec = importlib.util.find_spec("llava")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "LLaVA's evaluation scripts are not installed: pip install --no-deps llava-torch==1.2.2.post1"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "eval" / "eval_pope.py"
    module_spec = importlib.util.spec_from_file_location("llava_eval_pope", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
