"""Backends as specs (:mod:`api_prompt.attribution.registry`) and the torch-free data modules."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def modules_imported_by(code: str) -> set[str]:
    """Top-level module names a fresh Python has in ``sys.modules`` after running ``code``."""
    probe = textwrap.dedent(code) + "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


@pytest.mark.parametrize("code", [
    "import api_prompt.targets; from api_prompt.targets import wrap, as_target, OpenAITarget",
    "from api_prompt import AttentionMap; from api_prompt.attention_map import AttentionMap",
])
def test_targets_and_maps_as_data_never_import_torch(code: str) -> None:
    imported = modules_imported_by(code)
    assert "api_prompt" in imported  # the probe ran
    assert "torch" not in imported
