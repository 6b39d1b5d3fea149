"""Shared pytest fixtures (PIL's defaults and the docstring examples: ../conftest.py).

The golden CLIP fixture lives in ``tests/fixtures/clip_reference`` (a copy, so tests never read
outside the repository). See its README.md for what each file holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

CLIP_FIXTURE_DIR = Path(__file__).parent / "fixtures" / "clip_reference"

# Hypothesis's per-example deadline (200 ms) measures the machine, not the code: on a loaded
# 2-core machine a property test of a few tensor ops took 487 ms and failed at random. No property
# here is about speed, so no profile has a deadline; CI also prints the blob to replay a failure.
settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def clip_fixture_dir() -> Path:
    """Folder of the golden CLIP fixture (model/, images/, expected/, cases.json, expected.npz)."""
    return CLIP_FIXTURE_DIR


@pytest.fixture(scope="session")
def clip_cases(clip_fixture_dir: Path) -> list[dict]:
    """The parsed ``cases`` list of cases.json (each with name, image, query, layer, ...)."""
    return json.loads((clip_fixture_dir / "cases.json").read_text())["cases"]


@pytest.fixture(scope="session")
def expected_npz(clip_fixture_dir: Path) -> dict[str, np.ndarray]:
    """expected.npz loaded into a plain dict: ``<case>_psi_cls``, ``_psi_comp``, ``_mask``, ``_mask_u8``."""
    with np.load(clip_fixture_dir / "expected.npz") as data:
        return {key: data[key] for key in data.files}


#: Skips that are right where they happen: a test of file permissions run as root, a test of the
#: no-CUDA error run on a machine with CUDA.
EXPECTED_SKIPS = ("root may write anywhere", "shows the error of a machine without CUDA")


def pytest_sessionfinish(session, exitstatus):
    """With ``API_PROMPT_NO_SKIPS=1`` (CI sets it) any other skip fails the run.

    Most tests of an optional extra skip when it is not installed; in CI every extra is installed,
    so such a skip means a broken install, and it must not pass quietly.
    """
    if os.environ.get("API_PROMPT_NO_SKIPS") != "1" or exitstatus != pytest.ExitCode.OK:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    unexpected = [
        report.nodeid or str(report.fspath)
        for report in reporter.stats.get("skipped", [])
        if not any(reason in str(report.longrepr) for reason in EXPECTED_SKIPS)
    ]
    if unexpected:
        reporter.write_line(
            f"\nAPI_PROMPT_NO_SKIPS=1: {len(unexpected)} unexpected skip(s): {', '.join(unexpected)}",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
