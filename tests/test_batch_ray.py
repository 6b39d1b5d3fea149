"""The Ray engine on a local Ray cluster started by the test: the same bytes as the local engine,
and a resume after the driver was killed.

Needs the ``ray`` extra (``pip install 'api-prompt[ray]'``); CI installs it.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from api_prompt.batch import LazyPrompter, run
from api_prompt.errors import ConfigError
from api_prompt.prompter import Prompter
from batch_support import PatternAttributor, PidPatternAttributor, pattern_prompter
from test_batch import (
    _count_ok_lines,
    image_files,
    manifest,
    questions,
    signal_once_done,
    write_vlmeval_tsv,
)

TESTS = Path(__file__).parent
REPO = TESTS.parent

ray = pytest.importorskip(
    "ray", reason="the Ray engine needs the ray extra: pip install 'api-prompt[ray]'"
)
pytestmark = pytest.mark.slow  # starting Ray takes seconds


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs whose workers can import the test helpers."""
    path = os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = path  # the workers inherit it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous


def test_ray_engine_writes_what_the_local_engine_writes(cluster, tmp_path):
    write_vlmeval_tsv(tmp_path / "Bench.tsv")
    local = run(
        tmp_path / "Bench.tsv",
        tmp_path / "local",
        Prompter(attributor=PatternAttributor()),
        batch_size=2,
        progress=False,
        allow_partial=True,
    )
    remote = run(
        tmp_path / "Bench.tsv",
        tmp_path / "ray",
        Prompter(attributor=PatternAttributor()),
        batch_size=2,
        progress=False,
        allow_partial=True,
        engine="ray",
    )
    assert (
        (remote.ok, remote.error, remote.permanent)
        == (local.ok, local.error, local.permanent)
        == (3, 2, 2)
    )
    assert image_files(tmp_path / "ray") == image_files(tmp_path / "local")
    assert remote.tsv.read_bytes() == local.tsv.read_bytes()
    by_index = lambda out: sorted(manifest(out), key=lambda record: record["index"])  # noqa: E731
    assert by_index(tmp_path / "ray") == by_index(tmp_path / "local")
    info = json.loads((tmp_path / "ray/run.json").read_text())
    assert info["run"]["engine"] == "ray"
    assert info["parameters"] == json.loads((tmp_path / "local/run.json").read_text())["parameters"]


def test_ray_driver_killed_then_resumed_is_byte_identical(cluster, tmp_path):
    source = questions(16, tmp_path)
    command = [
        sys.executable,
        str(TESTS / "batch_support.py"),
        "ray-run",
        str(source),
        str(tmp_path / "out"),
        cluster,
    ]
    env = {**os.environ, "API_PROMPT_FAKE_DELAY": "0.3"}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    signal_once_done(driver, tmp_path / "out/manifest.jsonl", 2, signal.SIGKILL, timeout=120)
    driver.wait()
    assert 2 <= _count_ok_lines(tmp_path / "out/manifest.jsonl") < 16
    resumed = run(
        source,
        tmp_path / "out",
        Prompter(attributor=PatternAttributor()),
        engine="ray",
        batch_size=2,
        progress=False,
    )
    assert resumed.skipped >= 2 and resumed.ok + resumed.skipped == 16
    clean = run(
        source,
        tmp_path / "clean",
        Prompter(attributor=PatternAttributor()),
        batch_size=2,
        progress=False,
    )
    assert clean.ok == 16
    assert image_files(tmp_path / "out") == image_files(tmp_path / "clean")
    assert not [p for p in (tmp_path / "out").rglob(".*") if p.name != ".lock"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


def test_ray_driver_never_loads_the_model_and_records_the_actors(cluster, tmp_path):
    source = questions(6, tmp_path)
    lazy = LazyPrompter(functools.partial(pattern_prompter, refuse_pid=os.getpid()), {"grid": 6})
    remote = run(source, tmp_path / "ray", lazy, engine="ray", batch_size=2, progress=False)
    local = run(
        source,
        tmp_path / "local",
        Prompter(attributor=PatternAttributor()),
        batch_size=2,
        progress=False,
    )
    assert remote.ok == local.ok == 6 and remote.model_loaded
    assert image_files(tmp_path / "ray") == image_files(tmp_path / "local")
    parameters = lambda out: json.loads((out / "run.json").read_text())["parameters"]  # noqa: E731
    assert parameters(tmp_path / "ray") == parameters(tmp_path / "local")


def test_ray_run_refused_for_other_parameters_leaves_the_folder_as_it_was(cluster, tmp_path):
    source = questions(6, tmp_path)
    run(
        source,
        tmp_path / "out",
        Prompter(attributor=PatternAttributor(grid=6)),
        batch_size=2,
        limit=2,
        progress=False,
    )  # so that the Ray run has batches to do
    before = snapshot(tmp_path / "out")
    other = LazyPrompter(functools.partial(pattern_prompter, grid=5), {"grid": 5})
    with pytest.raises(ConfigError, match="holds a run with different parameters"):
        run(source, tmp_path / "out", other, engine="ray", batch_size=2, progress=False)
    time.sleep(1)  # the actors were held at the gate; nothing may land late either
    assert snapshot(tmp_path / "out") == before


def test_ray_model_load_failure_is_the_loaders_one_line_error(cluster, tmp_path):
    source = questions(4, tmp_path)
    message = "no weights for ViT-X: pass --pretrained /path/to/weights.safetensors"
    broken = LazyPrompter(functools.partial(pattern_prompter, fail=message), {})
    with pytest.raises(ConfigError) as raised:
        run(source, tmp_path / "out", broken, engine="ray", batch_size=2, progress=False)
    assert str(raised.value) == message
    assert not list((tmp_path / "out").rglob("*.png"))


def test_ray_actor_whose_model_differs_from_run_json_writes_nothing(cluster, tmp_path):
    source = questions(4, tmp_path)
    with pytest.raises(ConfigError, match="differs from the one recorded in run.json"):
        run(
            source,
            tmp_path / "out",
            Prompter(attributor=PidPatternAttributor()),
            engine="ray",
            batch_size=2,
            progress=False,
        )
    assert not list((tmp_path / "out").rglob("*.png"))


def test_cli_engine_ray_with_the_clip_fixture_matches_the_local_engine(
    cluster, clip_fixture_dir, tmp_path
):
    pytest.importorskip("open_clip")
    from typer.testing import CliRunner

    try:
        from api_prompt.cli.app import app
    except ImportError:
        from cli.app import app
    images = sorted((clip_fixture_dir / "images").glob("*.png"))
    rows = [
        {"id": f"{path.stem}-{k}", "image": str(path), "question": query}
        for k, query in enumerate(["a red circle", "what is on the left?"])
        for path in images
    ]
    source = tmp_path / "q.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = [
        str(source),
        "--model",
        f"local-dir:{clip_fixture_dir / 'model'}",
        "--layer",
        "4",
        "--device",
        "cpu",
        "--batch-size",
        "3",
        "-q",
    ]
    local = CliRunner().invoke(app, ["batch", *common, "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    # every actor loads its own model from the same options (the driver loads none)
    remote = CliRunner().invoke(
        app, ["batch", *common, "--out", str(tmp_path / "ray"), "--engine", "ray"]
    )
    assert remote.exit_code == 0, remote.output
    assert image_files(tmp_path / "ray") == image_files(tmp_path / "local")
    assert len(image_files(tmp_path / "ray")) == len(rows)


def _fixture_batch_command(clip_fixture_dir: Path, tmp_path: Path, *options: str) -> list[str]:
    images = sorted((clip_fixture_dir / "images").glob("*.png"))
    source = tmp_path / "q.jsonl"
    source.write_text(
        "".join(
            json.dumps({"id": path.stem, "image": str(path), "question": "a red circle"}) + "\n"
            for path in images
        )
    )
    return [
        "batch",
        str(source),
        "--out",
        str(tmp_path / "out"),
        "--model",
        f"local-dir:{clip_fixture_dir / 'model'}",
        "--layer",
        "4",
        "-q",
        "--engine",
        "ray",
        *options,
    ]


def test_cli_engine_ray_driver_runs_without_torch(cluster, clip_fixture_dir, tmp_path):
    """A head node needs neither a GPU nor torch: the command's checks and the driver never import it."""
    from test_registry import modules_imported_by

    argv = _fixture_batch_command(
        clip_fixture_dir, tmp_path, "--device", "cpu", "--address", cluster
    )
    imported = modules_imported_by(f"""
        import sys
        from api_prompt.cli.app import main
        sys.argv = ["api-prompt", *{argv!r}]
        try:
            main()
        except SystemExit as stop:
            assert stop.code in (0, None), stop.code
    """)
    assert "ray" in imported and "torch" not in imported
    assert len(list((tmp_path / "out/images").glob("*.png"))) == len(
        list((clip_fixture_dir / "images").glob("*.png"))
    )


def test_cli_engine_ray_checks_the_device_where_the_model_loads(
    cluster, clip_fixture_dir, tmp_path
):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("shows the error of a machine without CUDA")
    from typer.testing import CliRunner

    try:
        from api_prompt.cli.app import app
    except ImportError:
        from cli.app import app
    result = CliRunner().invoke(
        app, _fixture_batch_command(clip_fixture_dir, tmp_path, "--device", "cuda")
    )
    assert result.exit_code == 2
    assert "error: device 'cuda' requested but CUDA is not available here" in result.output
    assert not list(tmp_path.rglob("out/**/*.png"))
