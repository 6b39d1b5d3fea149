"""What the first screen promises, done as a new user would: build the package, install it into a
fresh virtual environment, and run the first command offline from another folder; then every
block of docs/getting-started.md, in order, against that installation.

The fresh environment has no packages of its own: a ``.pth`` file lets it see the dependencies
already installed for the tests (torch, open_clip, ...), which keeps the test offline and quick,
but not this repository's editable install (``.pth`` files of the shared folder are not read),
so ``api_prompt`` can only come from the wheel. ``pip install .`` runs as
``pip install --no-deps --no-build-isolation .`` for the same reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_docs import NOT_TESTED, code_blocks

ROOT = Path(__file__).resolve().parents[1]
FIRST_COMMAND = 'api-prompt example:synthshapes-23 "a red square" -m synthshapes'

pytestmark = [pytest.mark.slow, pytest.mark.installed]


def sh(
    command: list[str] | str, cwd: Path, env: dict, timeout: int = 900
) -> subprocess.CompletedProcess:
    return subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        shell=isinstance(command, str),
        executable="/bin/bash" if isinstance(command, str) else None,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip(
        "build", reason="building the package needs the dev extra: pip install -e '.[dev]'"
    )
    base = tmp_path_factory.mktemp("first-run")
    source = base / "source"  # what a clone holds: the tracked files plus new ones not ignored
    listed = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)

    env = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    dist = base / "dist"
    built = sh(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
        base,
        env,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    twine = sh(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists)], base, env
    )
    assert twine.returncode == 0, twine.stdout + twine.stderr

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "shared_test_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    env = {
        **env,
        "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "200",
    }
    done = sh(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheels[0])], base, env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    return {"source": source, "venv": venv, "python": python, "env": env, "elsewhere": elsewhere}


def test_the_installed_wheel_runs_the_first_command_offline_from_another_folder(
    installed: dict,
) -> None:
    env, cwd, python = installed["env"], installed["elsewhere"], installed["python"]
    where = sh(
        [
            str(python),
            "-c",
            "import api_prompt; print(api_prompt.__file__, api_prompt.__version__)",
        ],
        cwd,
        env,
    )
    module, version = where.stdout.split()
    assert Path(module).is_relative_to(installed["venv"]), "api_prompt must come from the wheel"
    assert f'version = "{version}"' in (ROOT / "pyproject.toml").read_text()  # one place holds it
    assert sh(["api-prompt", "--version"], cwd, env).stdout.strip() == f"api-prompt {version}"

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"pip install . && {FIRST_COMMAND}" in readme
    done = sh(FIRST_COMMAND, cwd, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Wrote synthshapes-23_api.png"
    with (
        Image.open(cwd / "synthshapes-23_api.png") as written,
        Image.open(ROOT / "docs" / "images" / "quickstart_api.png") as shown,
    ):
        assert written.size == shown.size == (256, 256)
        # the picture the README shows is what the command writes
        assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(shown.convert("RGB")))


def test_every_getting_started_block_runs_as_written(installed: dict) -> None:
    env, cwd = installed["env"], installed["elsewhere"]
    for leftover in cwd.iterdir():  # what the other test wrote
        leftover.unlink()
    blocks = code_blocks(ROOT / "docs" / "getting-started.md")
    ran = 0
    for language, text in blocks:
        if NOT_TESTED in text:
            continue
        ran += 1
        if text.strip() == "pip install .":
            done = sh(
                [
                    str(installed["python"]),
                    "-m",
                    "pip",
                    "install",
                    "--no-deps",
                    "--no-build-isolation",
                    ".",
                ],
                installed["source"],
                env,
            )
            assert done.returncode == 0, done.stderr[-3000:]
        elif language == "python":
            done = sh([str(installed["python"]), "-c", text], cwd, env)
            assert done.returncode == 0, done.stderr
            assert "(8, 8) float32" in done.stdout and "['psi_cls', 'psi_comp']" in done.stdout
            assert (cwd / "scene_api.png").is_file()
        elif "downloads about 1.7 GB" in text:
            # offline here: the paper's weights are not on this machine, so it must stop at once,
            # in one line of command-line advice, and write nothing
            done = sh(text, cwd, env)
            assert done.returncode == 2
            error = done.stderr.strip().splitlines()[-1]
            assert (
                error.startswith("error: ")
                and "HF_HUB_OFFLINE" in error
                and "--model local-dir:" in error
            )
            assert not (cwd / "paper_api.png").exists()
        else:
            done = sh(text, cwd, env)
            assert done.returncode == 0, (text, done.stderr)
            if "missing.png" in text:
                assert done.stdout.strip() == "exit code 2"
                assert done.stderr.strip().startswith("error: cannot load image 'missing.png'")
            else:
                assert FIRST_COMMAND in text
                assert (cwd / "synthshapes-23_api.png").is_file()
    assert ran == len(blocks) - 1
