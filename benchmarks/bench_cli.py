"""Cold start of the ``api-prompt`` command: ``--help`` and each mistake that needs no model.

Every case is a fresh process, timed from outside from its start to its exit (wall clock,
``time.perf_counter``), as a user waits for it, with the CPU seconds (user + system) and the
peak memory the operating system accounted to it (``os.wait4``); on a busy machine the CPU
seconds say more than the wall clock. With ``--baseline REV``
the same cases also run on the code of an earlier commit (extracted with ``git archive`` into a
temporary folder and put first on ``PYTHONPATH``; the installed dependencies are shared), the two
versions taking turns run by run, so the ratio compares them under the same machine load.

    python benchmarks/bench_cli.py --repeats 7
    python benchmarks/bench_cli.py --repeats 7 --baseline d51afa3~1

Prints, per case, the exit code and the last line of stderr of the first run (so a case that
does not fail the way it should is seen), the median (min-max) wall seconds, the median CPU
seconds and peak memory and, with a baseline, the medians of the per-pair ratios (this / baseline). The goal: under 1 s for every
error that needs no model, on an idle machine. It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_CLI = "import sys; from api_prompt.cli.app import main; sys.argv[0] = 'api-prompt'; main()"


def cases(work: Path) -> dict[str, list[str]]:
    """The command lines to time, by name (run in ``work``)."""
    clip_question = "Which shape? (no options)"
    return {
        "help": ["--help"],
        "missing image": ["missing.png", "a red square"],
        "image URL": ["https://example.com/a.jpg", "a red square"],
        "unknown device": ["scene.png", "a red square", "--device", "gpu"],
        "missing local-dir": ["scene.png", "a red square", "-m", "local-dir:/no/such/folder"],
        "folder as model": ["scene.png", "a red square", "-m", str(work)],
        "even kernel": ["scene.png", "a red square", "-k", "4"],
        "ask clip-zeroshot, no options": [
            "ask",
            "scene.png",
            clip_question,
            "--target",
            "clip-zeroshot:local-dir:" + str(ROOT / "assets" / "synthshapes-clip"),
        ],
        "batch rerun, other parameters": [
            "batch",
            "questions.jsonl",
            "--out",
            "done",
            "--enhance",
            "3",
            "-m",
            "local-dir:" + str(ROOT / "assets" / "synthshapes-clip"),
        ],
    }


def prepare(work: Path) -> None:
    """The files the cases need: an image, a one-line dataset and a finished batch run of it."""
    shutil.copyfile(ROOT / "docs" / "images" / "scene.png", work / "scene.png")
    (work / "questions.jsonl").write_text(
        json.dumps({"id": "a", "image": "scene.png", "question": "a red square"}) + "\n"
    )
    model = "local-dir:" + str(ROOT / "assets" / "synthshapes-clip")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_CLI,
            "batch",
            "questions.jsonl",
            "--out",
            "done",
            "-m",
            model,
            "--device",
            "cpu",
            "-q",
        ],
        cwd=work,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"could not prepare the finished batch run: {done.stderr.strip()}")


def baseline_tree(revision: str, into: Path) -> Path:
    """``api_prompt`` and ``cli`` of ``revision``, laid out as installed (``cli`` as ``api_prompt.cli``)."""
    into.mkdir()
    archive = subprocess.run(
        ["git", "archive", revision, "api_prompt", "cli"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    shutil.move(str(into / "cli"), str(into / "api_prompt" / "cli"))
    return into


def run_once(
    args: list[str], work: Path, pythonpath: str | None
) -> tuple[float, float, float, int, str]:
    """(wall s, CPU s, peak MiB, exit code, last line of stderr) of one fresh process."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-c", RUN_CLI, *args],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
    return (
        seconds,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        child.returncode,
        (lines or [""])[-1],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7, help="runs per case and version")
    parser.add_argument("--baseline", metavar="REV", help="also time the code of this git revision")
    parser.add_argument("--only", nargs="*", help="time only these cases (by name)")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary) / "work"
        work.mkdir()
        prepare(work)
        old = (
            str(baseline_tree(options.baseline, Path(temporary) / "baseline"))
            if options.baseline
            else None
        )
        versions = {"this": None, **({"baseline": old} if old else {})}
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.1f} at the start; {options.repeats} runs per case"
            + (f"; baseline {options.baseline}" if old else "")
        )
        print(
            f"{'case':32} {'version':9} {'exit':>4} {'wall s (min-max)':>18} {'ratio':>6} {'cpu s':>6} "
            f"{'ratio':>6} {'peak MiB':>8}  last line of stderr"
        )
        for name, args in cases(work).items():
            if options.only and name not in options.only:
                continue
            runs: dict[str, list[tuple]] = {version: [] for version in versions}
            for _ in range(options.repeats):
                for version, path in versions.items():  # the versions take turns
                    runs[version].append(run_once(args, work, path))
            ratios = {"wall": "", "cpu": ""}
            if old:
                for column, index in (("wall", 0), ("cpu", 1)):
                    pairs = zip(runs["this"], runs["baseline"])
                    ratios[column] = (
                        f"{statistics.median(a[index] / b[index] for a, b in pairs):.3f}"
                    )
            for version in versions:
                wall = [run[0] for run in runs[version]]
                cpu = statistics.median(run[1] for run in runs[version])
                peak = statistics.median(run[2] for run in runs[version])
                code, last = runs[version][0][3], runs[version][0][4]
                mine = version == "this"
                spread = f"{statistics.median(wall):.2f} ({min(wall):.2f}-{max(wall):.2f})"
                print(
                    f"{name:32} {version:9} {code:>4} {spread:>18} {ratios['wall'] if mine else '':>6} {cpu:>6.2f} "
                    f"{ratios['cpu'] if mine else '':>6} {peak:>8.0f}  {last[:80]}"
                )


if __name__ == "__main__":
    main()
