"""CI's guard against quiet skips (``API_PROMPT_NO_SKIPS=1``, set by ``.ci/run``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


def _pytest(folder: Path, no_skips: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "API_PROMPT_NO_SKIPS": no_skips,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "conftest",
            "--rootdir",
            str(folder),
            str(folder),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
    )  # not the repository root, whose own conftest.py would be found first


@pytest.mark.slow
def test_a_skip_fails_the_run_only_under_the_guard_and_only_if_unexpected(tmp_path):
    (tmp_path / "test_missing_extra.py").write_text(
        "import pytest\npytest.importorskip('no_such_extra_module')\ndef test_never(): pass\n"
    )
    (tmp_path / "test_root.py").write_text(
        "import pytest\n@pytest.mark.skipif(True, reason='root may write anywhere')\ndef test_root(): pass\n"
        "def test_ok(): pass\n"
    )
    guarded = _pytest(tmp_path, "1")
    assert guarded.returncode == 1, guarded.stdout
    assert "1 unexpected skip(s): test_missing_extra.py" in guarded.stdout
    assert _pytest(tmp_path, "0").returncode == 0
    (tmp_path / "test_missing_extra.py").unlink()
    assert _pytest(tmp_path, "1").returncode == 0  # the root-only skip is expected
