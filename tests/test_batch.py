"""Tests of the batch runner: inputs, outputs, resume, crash safety, sharding, the CLI.

Most tests use :class:`PatternAttributor` (no model); a few use the tiny CLIP fixture.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from api_prompt.attribution import base as attribution_base
from api_prompt.batch import merge, open_source, run, safe_name
from api_prompt.batch.runner import encode_image
from api_prompt.errors import ConfigError
from api_prompt.prompter import Prompter
from batch_support import PatternAttributor

TESTS = Path(__file__).parent
REPO = TESTS.parent


# ------------------------------------------------------------------------------------------------
# helpers


def picture(i: int, size=(40, 30)) -> Image.Image:
    """A small image that differs per ``i``."""
    array = np.zeros((size[1], size[0], 3), np.uint8)
    array[..., 0] = (np.arange(size[0]) * (3 + i)) % 256
    array[..., 1] = ((np.arange(size[1]) * (5 + 2 * i)) % 256)[:, None]
    array[..., 2] = 40 * i % 256
    return Image.fromarray(array)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        picture(i).save(folder / f"img{i}.png")
        names.append(f"img{i}.png")
    return names


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def questions(n: int, folder: Path) -> Path:
    """A JSONL of n samples with images in folder/pics/."""
    names = write_images(folder / "pics", n)
    rows = [
        {"id": f"s{i}", "image": f"pics/{name}", "question": f"where is thing {i}?", "answer": i}
        for i, name in enumerate(names)
    ]
    return write_jsonl(folder / "q.jsonl", rows)


def prompter(**options) -> Prompter:
    return Prompter(attributor=PatternAttributor(**options))


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def ok_ids(out: Path) -> set[str]:
    latest = {record["name"]: record for record in manifest(out)}
    return {record["id"] for record in latest.values() if record["status"] == "ok"}


def image_files(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((out / "images").iterdir())}


def expected_png(image: Image.Image, query: str, **options) -> bytes:
    """What a single, unbatched Prompter call gives, encoded as the runner encodes."""
    return encode_image(prompter(**options)(image, query).image)


# ------------------------------------------------------------------------------------------------
# inputs


def test_jsonl_outputs_manifest_and_run_json(tmp_path):
    source = questions(5, tmp_path)
    summary = run(source, tmp_path / "out", prompter(), batch_size=2, workers=2, progress=False)
    assert (summary.ok, summary.error, summary.skipped, summary.total) == (5, 0, 0, 5)
    out = tmp_path / "out"
    records = manifest(out)
    assert [r["id"] for r in records] == [f"s{i}" for i in range(5)]
    first = records[0]
    assert first["status"] == "ok" and first["file"] == "images/s0.png" and first["error"] is None
    assert first["grid"] == 6 and 0 <= first["mask_mean"] <= 1 and len(first["argmax"]) == 2
    assert first["extra"] == {"answer": 0}
    assert (out / "images/s3.png").read_bytes() == expected_png(picture(3), "where is thing 3?")
    info = json.loads((out / "run.json").read_text())
    assert info["parameters"]["prompter"]["backend"] == "pattern"
    assert info["parameters"]["prompter"]["enhance"] == 10.0
    assert info["parameters"]["source"]["format"] == "jsonl"
    assert info["run"]["batch_size"] == 2
    assert {"api_prompt", "torch", "open_clip", "transformers", "pillow", "numpy"} <= set(
        info["versions"]
    )
    assert not list(out.glob(".*.tmp")) and not list((out / "images").glob(".*"))


def test_csv_with_image_root_base64_and_data_urls(tmp_path):
    write_images(tmp_path / "root", 2)
    inline = base64.b64encode(png_bytes(picture(7))).decode()
    with open(tmp_path / "q.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["qid", "picture", "prompt"])
        writer.writerow(["a", "img0.png", "first, with a comma"])
        writer.writerow(["b", "img1.png", "multi\nline"])
        writer.writerow(["c", inline, "inline"])
        writer.writerow(["d", "data:image/png;base64," + inline, "inline"])
    summary = run(
        tmp_path / "q.csv",
        tmp_path / "out",
        prompter(),
        progress=False,
        image_root=tmp_path / "root",
        id_column="qid",
        image_column="picture",
        question_column="prompt",
        image_format="jpg",
        jpeg_quality=80,
    )
    assert summary.ok == 4, summary.errors
    assert sorted(image_files(tmp_path / "out")) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert image_files(tmp_path / "out")["c.jpg"] == image_files(tmp_path / "out")["d.jpg"]
    assert manifest(tmp_path / "out")[1]["question"] == "multi\nline"
    with Image.open(tmp_path / "out/images/a.jpg") as image:
        assert image.format == "JPEG"
    with pytest.raises(
        ConfigError, match="no column 'question'; its columns are 'qid', 'picture', 'prompt'"
    ):
        open_source(tmp_path / "q.csv", image_column="picture")


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = {
        "question_id": [10, 11, 12],
        "image": [picture(i) for i in range(3)],
        "question": ["one", "two", "three"],
        "answer": ["x", "y", "z"],
    }
    features = datasets.Features(
        {
            "question_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
        }
    )
    dataset = datasets.Dataset.from_dict(data, features=features)
    datasets.DatasetDict({"test": dataset, "train": dataset}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ConfigError, match="--split"):
        open_source(tmp_path / "ds", id_column="question_id")
    summary = run(
        tmp_path / "ds",
        tmp_path / "out",
        prompter(),
        progress=False,
        id_column="question_id",
        split="test",
    )
    assert summary.ok == 3
    assert sorted(image_files(tmp_path / "out")) == ["10.png", "11.png", "12.png"]
    assert (tmp_path / "out/images/11.png").read_bytes() == expected_png(picture(1), "two")
    assert manifest(tmp_path / "out")[2]["extra"] == {"answer": "z"}


def test_parquet_structs_paths_and_folder(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    write_images(tmp_path / "data", 2)
    images = [
        {"bytes": png_bytes(picture(0)), "path": "a.png"},
        {"bytes": None, "path": "img1.png"},
    ]
    pq.write_table(
        pa.table({"id": ["a", "b"], "image": images, "question": ["q a", "q b"]}),
        tmp_path / "data/part-0.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "id": ["c"],
                "image": [{"bytes": png_bytes(picture(2)), "path": None}],
                "question": ["q c"],
            }
        ),
        tmp_path / "data/part-1.parquet",
    )
    summary = run(tmp_path / "data", tmp_path / "out", prompter(), progress=False)
    assert summary.ok == 3, summary.errors
    assert (tmp_path / "out/images/b.png").read_bytes() == expected_png(picture(1), "q b")
    assert [r["index"] for r in manifest(tmp_path / "out")] == [0, 1, 2]


def write_vlmeval_tsv(path: Path) -> list[list[str]]:
    header = ["index", "image", "question", "hint", "A", "B", "answer", "category"]
    b64 = [base64.b64encode(png_bytes(picture(i))).decode() for i in range(3)]
    rows = [
        ["0", b64[0], "What is shown?", "", "cat", "dog", "A", "perception"],
        ["1", b64[1], 'Count the\n"things"', "a hint\twith tab", "1", "2", "B", "reasoning"],
        [
            "2",
            "0",
            "Same picture, new question",
            "",
            "x",
            "y",
            "A",
            "perception",
        ],  # reference to row 0
        ["3", b64[2], "", "", "", "", "", "empty question"],
        ["4", "not base64 at all!" * 5, "broken image", "", "", "", "", "bad"],
    ]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return [header] + rows


def test_vlmevalkit_tsv_round_trip(tmp_path):
    pandas = pytest.importorskip("pandas")
    table = write_vlmeval_tsv(tmp_path / "MyBench.tsv")
    summary = run(
        tmp_path / "MyBench.tsv", tmp_path / "out", prompter(), progress=False, batch_size=2
    )
    assert (summary.ok, summary.error, summary.permanent) == (3, 2, 2)
    # two rows failed: no table that VLMEvalKit would score as if complete
    assert summary.tsv is None and not (tmp_path / "out/MyBench_API.tsv").exists()
    assert (
        "2 of 5 samples are not done" in summary.not_exported
        and "--allow-partial" in summary.not_exported
    )
    errors = {
        r["id"]: (r["error"], r["error_kind"])
        for r in manifest(tmp_path / "out")
        if r["status"] == "error"
    }
    assert errors["3"] == ("the question is empty", "permanent") and "base64" in errors["4"][0]

    summary = run(
        tmp_path / "MyBench.tsv",
        tmp_path / "out",
        prompter(),
        progress=False,
        batch_size=2,
        allow_partial=True,
    )
    assert summary.tsv == tmp_path / "out/MyBench_API.tsv" and summary.partial
    frame = pandas.read_csv(summary.tsv, sep="\t")  # how VLMEvalKit loads it
    assert list(frame.columns) == table[0][:2] + ["image_path"] + table[0][2:] + [
        "api_prompt_status"
    ]
    assert frame["index"].tolist() == [0, 1, 2, 3, 4]  # nothing left out
    assert frame["question"].tolist()[:3] == [
        "What is shown?",
        'Count the\n"things"',
        "Same picture, new question",
    ]
    assert (
        frame["hint"].tolist()[1] == "a hint\twith tab"
        and frame["category"].tolist()[2] == "perception"
    )
    assert frame["api_prompt_status"].tolist()[:3] == ["ok"] * 3
    assert frame["api_prompt_status"][3] == "failed (permanent): the question is empty"
    for index, query, source_image in [
        (0, "What is shown?", 0),
        (2, "Same picture, new question", 0),
    ]:
        decoded = base64.b64decode(frame["image"][index])
        assert decoded == expected_png(picture(source_image), query)
        assert decoded == (tmp_path / f"out/images/{index}.png").read_bytes()
    assert base64.b64decode(frame["image"][3]) == png_bytes(
        picture(2)
    )  # the failed row keeps its original
    assert len(set(frame["image_path"])) == 5
    # the output is itself a valid input of the same shape
    again = run(summary.tsv, tmp_path / "out2", prompter(), progress=False, allow_partial=True)
    assert again.ok == 3 and list(pandas.read_csv(again.tsv, sep="\t").columns) == list(
        frame.columns
    )


# ------------------------------------------------------------------------------------------------
# names, bad samples


HOSTILE = [
    "../../escape",
    "/etc/passwd",
    "a/b\\c",
    "",
    "nul\x00byte",
    "x" * 1000,
    "dup",
    "dup",
    "Case",
    "case",
    "CON",
    ".hidden",
    "..",
    "élan",
    "ok-id_1.2",
]


def test_hostile_ids_stay_inside_and_unique(tmp_path):
    write_images(tmp_path / "pics", 1)
    rows = [
        {"id": sample_id, "image": "pics/img0.png", "question": f"q{i}"}
        for i, sample_id in enumerate(HOSTILE)
    ]
    source = write_jsonl(tmp_path / "q.jsonl", rows)
    summary = run(source, tmp_path / "deep/out", prompter(), progress=False, batch_size=4)
    assert summary.ok == len(HOSTILE)
    written = [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and p.suffix == ".png" and "pics" not in p.parts
    ]
    assert len(written) == len(HOSTILE)
    assert all(p.parent == tmp_path / "deep/out/images" for p in written)
    names = [r["name"] for r in manifest(tmp_path / "deep/out")]
    assert len({name.casefold() for name in names}) == len(HOSTILE)
    assert all(len(name) < 120 and not name.startswith(".") for name in names)
    assert [r["id"] for r in manifest(tmp_path / "deep/out")] == HOSTILE
    assert names[-1] == "ok-id_1.2" and names[6] == "dup" and names[7] != "dup"
    # the same input always gives the same names
    run(source, tmp_path / "again", prompter(), progress=False, batch_size=3)
    assert [r["name"] for r in manifest(tmp_path / "again")] == names
    assert safe_name("../../escape") == safe_name("../../escape") != "escape"


def test_bad_samples_are_recorded_and_the_run_continues(tmp_path):
    write_images(tmp_path / "pics", 3)
    (tmp_path / "pics/corrupt.png").write_bytes(png_bytes(picture(0))[:60])
    rows = [
        {"id": "good0", "image": "pics/img0.png", "question": "fine"},
        {"id": "missing", "image": "pics/nope.png", "question": "fine"},
        {"id": "corrupt", "image": "pics/corrupt.png", "question": "fine"},
        {"id": "blank", "image": "pics/img1.png", "question": "   "},
        {"id": "noimage", "question": "fine"},
        {"id": "boom", "image": "pics/img1.png", "question": "please EXPLODE"},
        {"id": "good1", "image": "pics/img2.png", "question": "fine too"},
    ]
    source = write_jsonl(tmp_path / "q.jsonl", rows)
    with open(source, "a") as handle:
        handle.write("{not json\n")
    summary = run(
        source, tmp_path / "out", prompter(fail_on="EXPLODE"), progress=False, batch_size=4
    )
    assert (summary.ok, summary.error) == (2, 6)
    errors = {r["id"]: r["error"] for r in manifest(tmp_path / "out") if r["status"] == "error"}
    assert "nope.png" in errors["missing"] and "no such file" in errors["missing"]
    assert "corrupt.png" in errors["corrupt"]
    assert errors["blank"] == "the question is empty"
    assert "image" in errors["noimage"] and "EXPLODE" in errors["boom"]
    assert "line 8 is not a JSON object" in errors["7"]
    assert sorted(image_files(tmp_path / "out")) == ["good0.png", "good1.png"]
    assert (tmp_path / "out/images/good1.png").read_bytes() == expected_png(picture(2), "fine too")


# ------------------------------------------------------------------------------------------------
# resume, parameters


def test_rerun_skips_done_samples_and_retries_failed(tmp_path):
    source = questions(6, tmp_path)
    (tmp_path / "pics/img4.png").rename(tmp_path / "pics/hidden.png")
    first = run(source, tmp_path / "out", prompter(), progress=False, batch_size=2)
    assert (first.ok, first.error) == (5, 1)
    before = image_files(tmp_path / "out")
    (tmp_path / "pics/hidden.png").rename(tmp_path / "pics/img4.png")
    again = prompter()
    second = run(source, tmp_path / "out", again, progress=False, batch_size=2)
    assert (second.ok, second.error, second.skipped) == (1, 0, 5)
    assert again.attributor.calls == [2]  # only the batch holding s4 ran
    after = image_files(tmp_path / "out")
    assert {k: after[k] for k in before} == before and "s4.png" in after
    third = run(source, tmp_path / "out", prompter(), progress=False, batch_size=2)
    assert (third.ok, third.skipped) == (0, 6)
    assert ok_ids(tmp_path / "out") == {f"s{i}" for i in range(6)}


def test_changed_parameters_are_refused_unless_overwrite(tmp_path):
    source = questions(3, tmp_path)
    out = tmp_path / "out"
    run(source, out, prompter(), progress=False)
    # operational options may change
    assert (
        run(source, out, prompter(), progress=False, batch_size=1, workers=1, limit=2).skipped == 2
    )
    with pytest.raises(
        ConfigError, match=r"different parameters \(prompter.enhance: 10.0 -> 3.0\).*--overwrite"
    ):
        run(source, out, Prompter(attributor=PatternAttributor(), enhance=3), progress=False)
    with pytest.raises(ConfigError, match="output.format"):
        run(source, out, prompter(), progress=False, image_format="jpg")
    summary = run(
        source,
        out,
        Prompter(attributor=PatternAttributor(), background=200),
        progress=False,
        overwrite=True,
    )
    assert (summary.ok, summary.skipped) == (3, 0)
    assert json.loads((out / "run.json").read_text())["parameters"]["prompter"]["background"] == 200
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="not empty and holds no run.json"):
        run(source, tmp_path / "notes", prompter(), progress=False, overwrite=True)
    assert (tmp_path / "notes/thesis.tex").read_text() == "precious"
    (tmp_path / "album/images").mkdir(parents=True)  # a user's own images/ folder, no run.json
    (tmp_path / "album/images/holiday.png").write_bytes(b"precious")
    with pytest.raises(ConfigError, match="not empty and holds no run.json"):
        run(source, tmp_path / "album", prompter(), progress=False, overwrite=True)
    assert (tmp_path / "album/images/holiday.png").read_bytes() == b"precious"


def test_a_folder_without_run_json_may_hold_only_what_a_killed_run_left(tmp_path):
    """Without run.json only what a run creates before writing it (an empty images/ and
    manifest.jsonl) may be in --out; anything else, even an empty file of the user's, is refused
    and left as it was (the rule evaluation folders follow too)."""
    source = questions(2, tmp_path)
    (tmp_path / "killed/images").mkdir(parents=True)
    (tmp_path / "killed/manifest.jsonl").write_text("")
    assert run(source, tmp_path / "killed", prompter(), progress=False).ok == 2
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray/todo.txt").write_text("")
    with pytest.raises(ConfigError, match="not empty and holds no run.json"):
        run(source, tmp_path / "stray", prompter(), progress=False, overwrite=True)
    assert [p.name for p in (tmp_path / "stray").iterdir()] == ["todo.txt"]


def test_truncated_manifest_line_and_leftover_temp_files(tmp_path):
    source = questions(4, tmp_path)
    out = tmp_path / "out"
    run(source, out, prompter(), progress=False, batch_size=2)
    clean = image_files(out)
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    # as if killed: s3's line half written, s2's image written to a temp name only
    (out / "manifest.jsonl").write_text("".join(lines[:2]) + lines[3][:25])
    (out / "images/s2.png").rename(out / "images/.s2.png.tmp")
    (out / "images/s3.png").write_bytes(b"garbage")
    summary = run(source, out, prompter(), progress=False, batch_size=2)
    assert (summary.ok, summary.skipped) == (2, 2)
    assert image_files(out) == clean
    assert all(json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines())


def _count_ok_lines(path: Path) -> int:
    try:
        return path.read_text().count('"status": "ok"')
    except FileNotFoundError:
        return 0


def signal_once_done(
    process: subprocess.Popen, manifest: Path, done: int, sig: int, timeout: float = 60
) -> None:
    """Send ``sig`` to ``process`` as soon as ``manifest`` records ``done`` finished samples."""
    deadline = time.monotonic() + timeout
    while _count_ok_lines(manifest) < done and time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended before it was signalled: {process.communicate()}")
        time.sleep(0.02)
    process.send_signal(sig)


def kill_test_input(kind: str, folder: Path, n: int) -> tuple[Path, list[str], str | None]:
    """An input of ``kind`` with n samples, extra CLI options, and the export it produces."""
    if kind == "jsonl":
        return questions(n, folder), [], None
    if kind == "tsv":
        rows = [
            [str(i), base64.b64encode(png_bytes(picture(i))).decode(), f"where is thing {i}?", "x"]
            for i in range(n)
        ]
        with open(folder / "Bench.tsv", "w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerows([["index", "image", "question", "answer"], *rows])
        return folder / "Bench.tsv", [], "Bench_API.tsv"
    datasets = pytest.importorskip("datasets", reason="pip install 'api-prompt[datasets]'")
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answers": datasets.List(datasets.Value("string")),
        }
    )
    data = {
        "id": [f"s{i}" for i in range(n)],
        "image": [picture(i) for i in range(n)],
        "question": [f"where is thing {i}?" for i in range(n)],
        "answers": [["a", str(i)] for i in range(n)],
    }
    datasets.DatasetDict(
        {"test": datasets.Dataset.from_dict(data, features=features)}
    ).save_to_disk(str(folder / "ds"))
    if kind == "dataset":
        return folder / "ds", [], "dataset"
    return folder / "ds", ["--output-format", "parquet"], "data"


def exported(path: Path) -> dict[str, bytes]:
    """The bytes of an exported TSV, or of the data files of an exported folder."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {
        p.relative_to(path).as_posix(): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.suffix in (".arrow", ".parquet")
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["jsonl", "tsv", "dataset", "parquet"])
def test_kill_9_then_resume_is_byte_identical(kind, tmp_path, cli):
    n = 40  # the signal comes after 3 are done: the rest must outlast a slow watcher
    source, options, export = kill_test_input(kind, tmp_path, n)
    command = [
        sys.executable,
        str(TESTS / "batch_support.py"),
        "batch",
        str(source),
        "--out",
        str(tmp_path / "killed"),
        "--batch-size",
        "2",
        "--workers",
        "2",
        "-q",
        "--model",
        "fake",
        *options,
    ]
    env = {
        **os.environ,
        "API_PROMPT_FAKE_DELAY": "0.15",
        "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    signal_once_done(process, tmp_path / "killed/manifest.jsonl", 3, signal.SIGKILL)
    process.wait()
    done_before = _count_ok_lines(tmp_path / "killed/manifest.jsonl")
    assert 3 <= done_before < n
    assert export is None or not (tmp_path / "killed" / export).exists()
    resumed = subprocess.run(
        command, env={**env, "API_PROMPT_FAKE_DELAY": "0"}, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr

    # the same command, uninterrupted (in-process: the same options give the same parameters)
    clean = cli(
        "batch",
        source,
        "--out",
        tmp_path / "clean",
        "--batch-size",
        "2",
        "-q",
        "--model",
        "fake",
        *options,
    )
    assert clean.exit_code == 0, clean.output
    assert image_files(tmp_path / "killed") == image_files(tmp_path / "clean")
    assert len(image_files(tmp_path / "clean")) == n
    assert ok_ids(tmp_path / "killed") == ok_ids(tmp_path / "clean")
    if export is not None:
        assert exported(tmp_path / "killed" / export) == exported(tmp_path / "clean" / export) != {}
    assert not [p for p in (tmp_path / "killed").rglob(".*") if p.name != ".lock"]


# ------------------------------------------------------------------------------------------------
# sharding and merge


def test_shards_merge_to_the_unsharded_run(tmp_path):
    source = questions(10, tmp_path)
    whole = run(source, tmp_path / "whole", prompter(), progress=False, batch_size=3)
    parts = []
    for index in range(3):
        summary = run(
            source,
            tmp_path / f"part{index}",
            prompter(),
            progress=False,
            batch_size=3,
            num_shards=3,
            shard_index=index,
        )
        assert summary.total == len(range(index, 10, 3))
        assert {r["index"] % 3 for r in manifest(tmp_path / f"part{index}")} == {index}
        parts.append(tmp_path / f"part{index}")
    partial = merge(parts[:2], tmp_path / "partial")
    assert partial.missing_shards == [2] and not partial.complete
    merged = merge(parts, tmp_path / "merged")
    assert (merged.ok, merged.error, merged.missing_shards) == (10, 0, [])
    assert image_files(tmp_path / "merged") == image_files(tmp_path / "whole")
    assert ok_ids(tmp_path / "merged") == ok_ids(tmp_path / "whole")
    assert [r["index"] for r in manifest(tmp_path / "merged")] == list(range(10))
    assert whole.ok == 10
    # the merged folder is an ordinary output: resuming into it has nothing left to do
    assert run(source, tmp_path / "merged", prompter(), progress=False).skipped == 10
    # completing the partial merge later
    assert merge([parts[2]], tmp_path / "partial").missing_shards == []
    assert image_files(tmp_path / "partial") == image_files(tmp_path / "whole")
    other = run(
        source,
        tmp_path / "other",
        Prompter(attributor=PatternAttributor(), enhance=2),
        progress=False,
        num_shards=3,
        shard_index=2,
    )
    assert other.ok == 3
    with pytest.raises(ConfigError, match="other parameters"):
        merge([parts[0], tmp_path / "other"], tmp_path / "bad")


def test_merge_ignores_manifest_files_outside_images(tmp_path):
    source = questions(2, tmp_path)
    run(source, tmp_path / "part", prompter(), progress=False)
    records = manifest(tmp_path / "part")
    (tmp_path / "secret.png").write_bytes(b"not an output")
    records[0]["file"] = "../secret.png"  # a hand-edited manifest
    write_jsonl(tmp_path / "part/manifest.jsonl", records)
    summary = merge([tmp_path / "part"], tmp_path / "merged")
    assert (summary.ok, summary.error) == (1, 0)
    assert list(image_files(tmp_path / "merged")) == ["s1.png"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "merged",
        "part",
        "pics",
        "q.jsonl",
        "secret.png",
    ]
    # a resume does not count the record as done either: it redoes s0 inside images/
    assert run(source, tmp_path / "part", prompter(), progress=False).ok == 1
    assert (tmp_path / "secret.png").read_bytes() == b"not an output"


def test_a_sample_the_overlay_fails_on_is_recorded(tmp_path, monkeypatch):
    source = questions(3, tmp_path)
    model = prompter()
    apply = model.overlay.apply

    def fussy(image, attention_map):
        if attention_map.query == "where is thing 1?":
            raise ValueError("cannot blend")
        return apply(image, attention_map)

    monkeypatch.setattr(model.overlay, "apply", fussy)
    summary = run(source, tmp_path / "out", model, progress=False, batch_size=2)
    assert (summary.ok, summary.error) == (2, 1)
    assert summary.errors == [("s1", "ValueError: cannot blend")]


def test_tsv_shards_merge_writes_the_tsv(tmp_path):
    write_vlmeval_tsv(tmp_path / "Bench.tsv")
    whole = run(
        tmp_path / "Bench.tsv", tmp_path / "whole", prompter(), progress=False, allow_partial=True
    )
    for index in range(2):
        summary = run(
            tmp_path / "Bench.tsv",
            tmp_path / f"p{index}",
            prompter(),
            progress=False,
            num_shards=2,
            shard_index=index,
        )
        assert summary.tsv is None
    refused = merge([tmp_path / "p0", tmp_path / "p1"], tmp_path / "refused")
    assert (
        refused.tsv is None and "--allow-partial" in refused.not_exported and not refused.complete
    )
    merged = merge([tmp_path / "p0", tmp_path / "p1"], tmp_path / "merged", allow_partial=True)
    assert merged.tsv.name == "Bench_API.tsv"
    assert merged.tsv.read_bytes() == whole.tsv.read_bytes()


# ------------------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def cli(monkeypatch):
    """Invoke the api-prompt CLI in-process with the clip backend served by PatternAttributor."""
    monkeypatch.setitem(attribution_base.BACKENDS, "clip", "batch_support:PatternAttributor")
    try:
        from api_prompt.cli.app import app
    except ImportError:
        from cli.app import app
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(arg) for arg in args])


def test_cli_batch_exit_codes_and_merge(cli, tmp_path):
    source = questions(4, tmp_path)
    result = cli("batch", source, "--out", tmp_path / "out", "-q", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    assert result.output == ""
    assert len(image_files(tmp_path / "out")) == 4
    (tmp_path / "pics/img0.png").unlink()
    result = cli("batch", source, "--out", tmp_path / "bad", "--limit", "2")
    assert result.exit_code == 1
    assert "1 ok, 1 failed" in result.output and "s0: cannot load image" in result.output
    result = cli("batch", source, "--out", tmp_path / "out", "--enhance", "2", "-q")
    assert result.exit_code == 2 and "different parameters" in result.output
    result = cli(
        "batch", source, "--out", tmp_path / "out", "--num-shards", "2", "--shard-index", "2"
    )
    assert result.exit_code == 2 and "--shard-index" in result.output
    for index in range(2):
        result = cli(
            "batch",
            source,
            "--out",
            tmp_path / f"s{index}",
            "-q",
            "--num-shards",
            2,
            "--shard-index",
            index,
            "--image-root",
            tmp_path,
        )
        assert result.exit_code == (1 if index == 0 else 0)
    result = cli("merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "m")
    assert result.exit_code == 1 and "1 failed" in result.output
    result = cli("merge", tmp_path / "s1", "--out", tmp_path / "m1")
    assert result.exit_code == 1 and "shard 0 is missing" in result.output


@pytest.mark.slow
def test_cli_feedback_resume_nothing_left_and_log_friendly_progress(cli, tmp_path, monkeypatch):
    from batch_support import CountingPatternAttributor

    monkeypatch.setitem(
        attribution_base.BACKENDS, "clip", "batch_support:CountingPatternAttributor"
    )
    CountingPatternAttributor.loads = 0
    source = questions(4, tmp_path)
    (tmp_path / "pics/img3.png").rename(tmp_path / "pics/hidden.png")
    result = cli("batch", source, "--out", tmp_path / "out", "--batch-size", "2")
    assert result.exit_code == 1
    # stderr is not a terminal here: plain progress lines, no carriage returns
    assert "\r" not in result.output and "prompting: 4/4 (100%)" in result.output
    assert "1 with bad input that a rerun cannot fix" in result.output
    (tmp_path / "pics/hidden.png").rename(tmp_path / "pics/img3.png")
    result = cli("batch", source, "--out", tmp_path / "out", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and "3 of 4 samples already done" in result.output
    assert CountingPatternAttributor.loads == 2
    result = cli("batch", source, "--out", tmp_path / "out", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "nothing left to do: all 4 samples are done (the model was not loaded)" in result.output
    assert CountingPatternAttributor.loads == 2
    # a changed setting is never mistaken for "nothing left": the model loads and the change is refused
    result = cli("batch", source, "--out", tmp_path / "out", "--enhance", "3")
    assert result.exit_code == 2 and "different parameters" in result.output


@pytest.mark.slow
def test_cli_interrupt_says_how_far_and_how_to_resume(tmp_path):
    source = questions(60, tmp_path)  # the rest must outlast a slow watcher (a loaded CI box)
    command = [
        sys.executable,
        str(TESTS / "batch_support.py"),
        "batch",
        str(source),
        "--out",
        str(tmp_path / "out"),
        "--batch-size",
        "2",
        "--workers",
        "2",
        "--model",
        "fake",
    ]
    env = {
        **os.environ,
        "API_PROMPT_FAKE_DELAY": "0.15",
        "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a test run started in the background inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    signal_once_done(process, tmp_path / "out/manifest.jsonl", 3, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    done = _count_ok_lines(tmp_path / "out/manifest.jsonl")
    assert f"interrupted: {done} of 60 done; rerun the same command to resume" in stderr
    resumed = subprocess.run(
        command, env={**env, "API_PROMPT_FAKE_DELAY": "0"}, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {tmp_path / 'out'}: {done} of 60 samples already done" in resumed.stderr


# ------------------------------------------------------------------------------------------------
# the real CLIP fixture model


@pytest.mark.slow
def test_clip_fixture_end_to_end(clip_fixture_dir, tmp_path):
    pytest.importorskip("open_clip")
    pytest.importorskip("api_prompt.attribution.clip")
    images = sorted((clip_fixture_dir / "images").glob("*.png"))
    queries = ["a red circle", "what is on the left?", "long " * 100]
    rows = [
        {"id": f"{path.stem}-{k}", "image": str(path), "question": query}
        for k, query in enumerate(queries)
        for path in images
    ]
    source = write_jsonl(tmp_path / "q.jsonl", rows)
    model = Prompter(model=f"local-dir:{clip_fixture_dir / 'model'}", layer=4, device="cpu")
    one = run(source, tmp_path / "b1", model, batch_size=1, progress=False)
    many = run(source, tmp_path / "b4", model, batch_size=4, progress=False)
    assert one.ok == many.ok == len(rows)
    # batching does not change a single byte, so resumed and sharded runs match a clean run
    assert image_files(tmp_path / "b1") == image_files(tmp_path / "b4")
    first = rows[0]
    with Image.open(first["image"]) as image:
        expected = encode_image(model(image.convert("RGB"), first["question"]).image)
    assert (tmp_path / f"b4/images/{first['id']}.png").read_bytes() == expected
    notes = [record.get("query_truncated") for record in manifest(tmp_path / "b4")]
    assert notes[:6] == [None] * 6 and all(
        note and note["tokens"] > note["context_length"] for note in notes[6:]
    )
    info = json.loads((tmp_path / "b4/run.json").read_text())["parameters"]["prompter"]
    assert info["backend"] == "clip" and "model" in info
