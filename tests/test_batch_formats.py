"""The batch outputs read back by their consumers: VLMEvalKit TSVs, ``datasets`` folders, parquet
shards, lmms-eval tasks; multi-image rows; JPEG in, JPEG out.

VLMEvalKit is its own code here (``pip install --no-deps ms-vlmeval``, see
``tests/official_code.py``): :func:`vlmevalkit_image_paths` puts a TSV where VLMEvalKit looks
(``$LMUData/<dataset>.tsv``), builds the dataset with its ``build_dataset`` and asks its
``build_prompt`` for every row, which saves each image once under
``$LMUData/images/<dataset>/`` (``dump_image``) and reuses a file that is already there.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api_prompt.batch import open_source, run
from api_prompt.batch.runner import encode_image
from api_prompt.prompter import Prompter
from batch_support import PatternAttributor
from official_code import vlmevalkit
from test_batch import picture

TESTS = Path(__file__).parent


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prompter() -> Prompter:
    return Prompter(attributor=PatternAttributor())


def prompted(image: Image.Image, query: str, fmt: str = "PNG") -> bytes:
    return encode_image(prompter()(image, query).image, fmt)


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


@contextlib.contextmanager
def lmu_data(folder: Path):
    """VLMEvalKit's data folder (``$LMUData``) set to ``folder`` for the time of the block."""
    folder.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("LMUData")
    os.environ["LMUData"] = str(folder)
    try:
        yield folder
    finally:
        if old is None:
            os.environ.pop("LMUData", None)
        else:
            os.environ["LMUData"] = old


def vlmevalkit_dataset(tsv: Path, lmu: Path, dataset: str):
    """VLMEvalKit's own dataset object for ``tsv``, as ``python run.py --data <dataset>`` builds it."""
    vlmevalkit()
    import warnings

    from vlmeval.dataset import build_dataset

    with lmu_data(lmu):
        target = lmu / f"{dataset}.tsv"
        if tsv.resolve() != target.resolve():
            shutil.copyfile(tsv, target)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Dataset ... is not officially supported"
            built = build_dataset(dataset)
    assert built is not None, f"VLMEvalKit could not build {dataset} from {tsv}"
    return built


def vlmevalkit_prompts(tsv: Path, lmu: Path, dataset: str) -> dict[str, list[dict]]:
    """index -> the message VLMEvalKit's ``build_prompt`` gives the model for that row."""
    built = vlmevalkit_dataset(tsv, lmu, dataset)
    with lmu_data(lmu):
        return {
            str(built.data.iloc[i]["index"]): built.build_prompt(built.data.iloc[i])
            for i in range(len(built.data))
        }


def vlmevalkit_image_paths(tsv: Path, lmu: Path, dataset: str) -> dict[str, list[Path]]:
    """index -> the image files VLMEvalKit hands the model for ``python run.py --data dataset``."""
    return {
        index: [Path(part["value"]) for part in message if part["type"] == "image"]
        for index, message in vlmevalkit_prompts(tsv, lmu, dataset).items()
    }


# ------------------------------------------------------------------------------------------------
# VLMEvalKit


@pytest.mark.slow
def test_tsv_under_the_original_name_never_gets_the_cached_originals(tmp_path):
    pytest.importorskip("pandas")
    header = ["index", "image", "question", "A", "B", "answer"]
    rows = [[str(i), b64(encoded(picture(i))), f"what is {i}?", "x", "y", "A"] for i in range(3)]
    write_tsv(tmp_path / "MyBench.tsv", header, rows)
    lmu = tmp_path / "LMUData"
    # the user evaluated the original before: VLMEvalKit cached its images as <index>.jpg
    originals = vlmevalkit_image_paths(tmp_path / "MyBench.tsv", lmu, "MyBench")
    # now the prompted table, even under the very same dataset name
    summary = run(
        tmp_path / "MyBench.tsv",
        tmp_path / "out",
        prompter(),
        progress=False,
        tsv_name="MyBench.tsv",
    )
    assert summary.tsv == tmp_path / "out/MyBench.tsv"
    served = vlmevalkit_image_paths(summary.tsv, lmu, "MyBench")
    for i in range(3):
        assert served[str(i)] != originals[str(i)]
        with Image.open(served[str(i)][0]) as image:
            expected = Image.open(io.BytesIO(prompted(picture(i), f"what is {i}?")))
            assert np.array_equal(
                np.asarray(image.convert("RGB")), np.asarray(expected.convert("RGB"))
            )
    # rerun under another table name: the old table does not linger
    renamed = run(tmp_path / "MyBench.tsv", tmp_path / "out", prompter(), progress=False)
    assert renamed.tsv.name == "MyBench_API.tsv" and not (tmp_path / "out/MyBench.tsv").exists()
    # another run with other settings gets other names again (no stale cache between runs)
    other = run(
        tmp_path / "MyBench.tsv",
        tmp_path / "other",
        Prompter(attributor=PatternAttributor(), enhance=2),
        progress=False,
        tsv_name="MyBench.tsv",
    )
    assert not set(vlmevalkit_image_paths(other.tsv, lmu, "MyBench")["0"]) & set(served["0"])


@pytest.mark.slow
def test_multi_image_rows_prompt_each_image_and_keep_the_list(tmp_path):
    pandas = pytest.importorskip("pandas")
    header = ["index", "image", "question", "answer"]
    rows = [
        ["0", repr([b64(encoded(picture(0))), b64(encoded(picture(1)))]), "compare them", "same"],
        ["1", b64(encoded(picture(2))), "one image", "x"],
        ["2", repr([b64(encoded(picture(3))), b64(encoded(picture(4)))]), "", "x"],
    ]
    write_tsv(tmp_path / "MMMU_like.tsv", header, rows)
    write_tsv(tmp_path / "broken.tsv", header, [["0", "['not', 'closed'", "q", "x"]])
    assert "not a list of base64 images" in next(iter(open_source(tmp_path / "broken.tsv"))).error
    summary = run(
        tmp_path / "MMMU_like.tsv", tmp_path / "out", prompter(), progress=False, batch_size=2
    )
    assert (summary.ok, summary.error, summary.permanent) == (2, 1, 1) and summary.tsv is None
    summary = run(
        tmp_path / "MMMU_like.tsv",
        tmp_path / "out",
        prompter(),
        progress=False,
        batch_size=2,
        allow_partial=True,
    )
    assert sorted(p.name for p in (tmp_path / "out/images").iterdir()) == [
        "0--1.png",
        "0--2.png",
        "1.png",
    ]
    frame = pandas.read_csv(summary.tsv, sep="\t")
    assert len(frame) == 3
    images = ast.literal_eval(frame["image"][0])
    assert [base64.b64decode(value) for value in images] == [
        prompted(picture(0), "compare them"),
        prompted(picture(1), "compare them"),
    ]
    served = vlmevalkit_image_paths(summary.tsv, tmp_path / "LMU", "MMMU_like_API")
    assert len(served["0"]) == 2 and len(set(served["0"])) == 2
    # the failed row keeps its original images, marked
    assert [base64.b64decode(v) for v in ast.literal_eval(frame["image"][2])] == [
        encoded(picture(3)),
        encoded(picture(4)),
    ]
    assert frame["api_prompt_status"][2] == "failed (permanent): the question is empty"
    record = json.loads((tmp_path / "out/manifest.jsonl").read_text().splitlines()[0])
    assert record["files"] == ["images/0--1.png", "images/0--2.png"] and len(record["maps"]) == 2


def test_jpeg_inputs_give_jpeg_outputs_unless_told_otherwise(tmp_path):
    pytest.importorskip("pandas")
    photo = picture(3, size=(160, 120))
    header = ["index", "image", "question"]
    write_tsv(
        tmp_path / "Photos.tsv",
        header,
        [[str(i), b64(encoded(photo, "JPEG")), "where?"] for i in range(3)],
    )
    auto = run(tmp_path / "Photos.tsv", tmp_path / "auto", prompter(), progress=False)
    png = run(
        tmp_path / "Photos.tsv", tmp_path / "png", prompter(), progress=False, image_format="png"
    )
    assert sorted(p.suffix for p in (tmp_path / "auto/images").iterdir()) == [".jpg"] * 3
    assert (tmp_path / "auto/images/0.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    output = json.loads((tmp_path / "auto/run.json").read_text())["parameters"]["output"]
    assert output["format"] == "auto" and output["jpeg_quality"] == 95
    assert auto.tsv.stat().st_size < png.tsv.stat().st_size
    with Image.open(tmp_path / "png/images/0.png") as image:
        assert image.format == "PNG"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Quiz", "QuizCircular"])
def test_vlmevalkit_builds_prompts_and_scores_the_prompted_mcq_table(tmp_path, monkeypatch, name):
    """VLMEvalKit's own build_dataset, build_prompt, dump_image and exact-matching MCQ evaluation on
    the batch output; its accuracy equals ``api-prompt eval``'s scorer on the same predictions."""
    pandas = pytest.importorskip("pandas")
    from api_prompt.evaluation.benchmarks import build_table

    circular = name.endswith("Circular")  # VLMEvalKit evaluates a "...circular..." name circularly
    header = ["index", "image", "question", "hint", "A", "B", "C", "answer", "category"]
    indices = [0, 1, 2, 1_000_000, 1_000_001, 2_000_000] if circular else list(range(6))
    rows = [
        [
            str(index),
            b64(encoded(picture(i))),
            f"which shape is {i}?",
            "look closely" if i % 2 else "",
            "circle",
            "square",
            "star",
            "ABC"[i % 3],
            "shapes" if i < 3 else "colours",
        ]
        for i, index in enumerate(indices)
    ]
    write_tsv(tmp_path / f"{name}.tsv", header, rows)
    summary = run(tmp_path / f"{name}.tsv", tmp_path / "out", prompter(), progress=False)
    assert summary.tsv.name == f"{name}_API.tsv"
    dataset = f"{name}_API"
    lmu = tmp_path / "LMUData"
    prompts = vlmevalkit_prompts(summary.tsv, lmu, dataset)
    assert list(prompts) == [str(index) for index in indices]
    for i, index in enumerate(indices):
        image, text = prompts[str(index)]
        assert image["type"] == "image" and Path(image["value"]).parent == lmu / "images" / dataset
        with Image.open(image["value"]) as served:
            expected = Image.open(io.BytesIO(prompted(picture(i), f"which shape is {i}?")))
            assert np.array_equal(
                np.asarray(served.convert("RGB")), np.asarray(expected.convert("RGB"))
            )
        assert text["value"] == ("Hint: look closely\n" if i % 2 else "") + (
            f"Question: which shape is {i}?\nOptions:\nA. circle\nB. square\nC. star\n"
            "Please select the correct answer from the options above. \n"
        )

    # predictions as a model would give them, scored by VLMEvalKit (exact matching: offline)
    predictions = [
        "A",
        "The answer is B",
        "star",
        "(B) square, as the picture shows clearly",
        "C",
        "",
    ]
    built = vlmevalkit_dataset(summary.tsv, lmu, dataset)
    table = built.data.drop(columns=["image"]).copy()
    table["prediction"] = predictions
    eval_file = tmp_path / "eval" / f"model_{dataset}.tsv"
    eval_file.parent.mkdir()
    table.to_csv(eval_file, sep="\t", index=False)
    monkeypatch.setenv("PRED_FORMAT", "tsv")
    before = set(Path("/tmp").glob("[0-9]*.tsv"))
    try:
        with lmu_data(lmu):
            accuracy = built.evaluate(str(eval_file), model="exact_matching", nproc=1)
    finally:  # its circular evaluation leaves a copy in /tmp/<YYYYmmddHHMMSS>.tsv
        for left in set(Path("/tmp").glob("[0-9]*.tsv")) - before:
            if left.stem.isdigit() and len(left.stem) == 14:
                left.unlink(missing_ok=True)
    official = accuracy.iloc[0]
    samples = pandas.read_csv(summary.tsv, sep="\t").drop(columns=["image"]).to_dict("records")
    ours = build_table("mcq", samples, {"original": predictions}).point("original")
    key = "circular_accuracy" if circular else "accuracy"
    assert ours[key] == pytest.approx(official["Overall"], rel=1e-12)
    for category in ("shapes", "colours"):
        if category in official.index:
            assert ours[f"{category}/{key}"] == pytest.approx(official[category], rel=1e-12)
    # rows 3-5 are wrong: "(B) ..." names B too early and is too long for option texts; "C" for B; ""
    # circular: question 0 (rows 0, 3, 5) and 1 (rows 1, 4) fail, question 2 (row 2) passes
    assert official["Overall"] == pytest.approx(1 / 3 if circular else 3 / 6)


def test_cli_prints_the_vlmevalkit_next_steps(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from api_prompt.attribution import base as attribution_base

    monkeypatch.setitem(attribution_base.BACKENDS, "clip", "batch_support:PatternAttributor")
    try:
        from api_prompt.cli.app import app
    except ImportError:
        from cli.app import app
    write_tsv(
        tmp_path / "Quiz.tsv",
        ["index", "image", "question", "A", "B", "answer"],
        [["0", b64(encoded(picture(0))), "which?", "a", "b", "A"]],
    )
    result = CliRunner().invoke(
        app, ["batch", str(tmp_path / "Quiz.tsv"), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    assert f"VLMEvalKit table: {tmp_path / 'out/Quiz_API.tsv'}" in result.output
    assert "python run.py --data Quiz_API" in result.output and "CustomMCQDataset" in result.output
    write_tsv(
        tmp_path / "Open.tsv",
        ["index", "image", "question", "answer"],
        [["0", b64(encoded(picture(0))), "what?", "a"]],
    )
    result = CliRunner().invoke(
        app,
        [
            "batch",
            str(tmp_path / "Open.tsv"),
            "--out",
            str(tmp_path / "open"),
            "--tsv-name",
            "Mine.tsv",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "--data Mine " in result.output and "CustomVQADataset" in result.output
    result = CliRunner().invoke(
        app,
        [
            "batch",
            str(tmp_path / "Open.tsv"),
            "--out",
            str(tmp_path / "bad"),
            "--tsv-name",
            "../up.tsv",
        ],
    )
    assert result.exit_code == 2 and "--tsv-name must be a file name" in result.output


# ------------------------------------------------------------------------------------------------
# datasets, parquet, lmms-eval


def textvqa_like(datasets, n: int = 3, empty_question_at: int | None = None):
    """A DatasetDict shaped like lmms-lab/textvqa: lists of answers and OCR tokens, an Image column."""
    features = datasets.Features(
        {
            "question_id": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "image": datasets.Image(),
            "answers": datasets.List(datasets.Value("string")),
            "ocr_tokens": datasets.List(datasets.Value("string")),
            "set_name": datasets.Value("string"),
        }
    )
    data = {
        "question_id": list(range(100, 100 + n)),
        "question": [
            "" if i == empty_question_at else f"what does sign {i} say?" for i in range(n)
        ],
        "image": [picture(i) for i in range(n)],
        "answers": [[f"word{i}"] * (i + 1) for i in range(n)],
        "ocr_tokens": [[f"tok{i}", "x"] for i in range(n)],
        "set_name": ["test"] * n,
    }
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict(data, features=features)})


def test_datasets_input_gives_a_datasets_folder_with_every_column(tmp_path):
    datasets = pytest.importorskip("datasets", reason="pip install 'api-prompt[datasets]'")
    textvqa_like(datasets).save_to_disk(str(tmp_path / "textvqa"))
    summary = run(
        tmp_path / "textvqa", tmp_path / "out", prompter(), progress=False, id_column="question_id"
    )
    assert summary.dataset == tmp_path / "out/dataset" and not summary.partial
    written = datasets.load_from_disk(str(summary.dataset))
    assert list(written) == ["test"]
    rows = written["test"]
    assert rows.column_names == [
        "question_id",
        "question",
        "image",
        "answers",
        "ocr_tokens",
        "set_name",
    ]
    assert isinstance(rows.features["image"], datasets.Image)
    assert rows[2]["answers"] == ["word2"] * 3 and rows[1]["ocr_tokens"] == ["tok1", "x"]
    for i in range(3):
        with Image.open(io.BytesIO(prompted(picture(i), f"what does sign {i} say?"))) as expected:
            assert np.array_equal(np.asarray(rows[i]["image"]), np.asarray(expected))
    # --keep-original, and partial runs
    textvqa_like(datasets, empty_question_at=1).save_to_disk(str(tmp_path / "broken"))
    refused = run(
        tmp_path / "broken", tmp_path / "partial", prompter(), progress=False, keep_original=True
    )
    assert refused.dataset is None and not (tmp_path / "partial/dataset").exists()
    assert "1 of 3 samples are not done" in refused.not_exported
    kept = run(
        tmp_path / "broken",
        tmp_path / "partial",
        prompter(),
        progress=False,
        keep_original=True,
        allow_partial=True,
    )
    rows = datasets.load_from_disk(str(kept.dataset))["test"]
    assert rows.column_names[-2:] == ["image_original", "api_prompt_status"]
    assert rows["api_prompt_status"] == ["ok", "failed (permanent): the question is empty", "ok"]
    assert np.array_equal(np.asarray(rows[1]["image"]), np.asarray(picture(1)))  # the original
    assert np.array_equal(np.asarray(rows[0]["image_original"]), np.asarray(picture(0)))
    assert not np.array_equal(np.asarray(rows[0]["image"]), np.asarray(picture(0)))


def test_datasets_output_is_byte_identical_but_for_the_fingerprint_in_state_json(tmp_path):
    """Which files of a ``datasets`` output two runs of the same command share byte for byte: all
    but ``state.json``, whose ``_fingerprint`` ``datasets`` draws anew on every save (a resumed run's
    data files are compared with an uninterrupted run's in test_batch.py's kill -9 test)."""
    datasets = pytest.importorskip("datasets", reason="pip install 'api-prompt[datasets]'")
    textvqa_like(datasets, n=4).save_to_disk(str(tmp_path / "textvqa"))
    for name in ("first", "second"):
        run(
            tmp_path / "textvqa",
            tmp_path / name,
            prompter(),
            progress=False,
            id_column="question_id",
        )
    files = {
        run_name: {
            p.relative_to(tmp_path / run_name / "dataset").as_posix(): p.read_bytes()
            for p in sorted((tmp_path / run_name / "dataset").rglob("*"))
            if p.is_file()
        }
        for run_name in ("first", "second")
    }
    assert (
        set(files["first"])
        == set(files["second"])
        == {
            "dataset_dict.json",
            "test/data-00000-of-00001.arrow",
            "test/dataset_info.json",
            "test/state.json",
        }
    )
    differing = [name for name in files["first"] if files["first"][name] != files["second"][name]]
    assert differing == ["test/state.json"]
    first, second = (json.loads(files[r]["test/state.json"]) for r in ("first", "second"))
    assert {key for key in first if first[key] != second.get(key)} == {"_fingerprint"}
    assert set(first) == set(second)


def test_hub_layout_parquet_in_and_parquet_shards_out(tmp_path):
    datasets = pytest.importorskip("datasets", reason="pip install 'api-prompt[datasets]'")
    (tmp_path / "hub/data").mkdir(parents=True)
    dataset = textvqa_like(datasets)
    dataset["test"].to_parquet(str(tmp_path / "hub/data/test-00000-of-00001.parquet"))
    dataset["test"].select([0]).to_parquet(
        str(tmp_path / "hub/data/validation-00000-of-00001.parquet")
    )
    with pytest.raises(Exception, match="has splits test, validation; choose one with --split"):
        open_source(tmp_path / "hub")
    summary = run(
        tmp_path / "hub",
        tmp_path / "out",
        prompter(),
        progress=False,
        split="test",
        output_format="parquet",
    )
    assert sorted(p.name for p in (tmp_path / "out/data").iterdir()) == [
        "test-00000-of-00001.parquet"
    ]
    loaded = datasets.load_dataset(
        "parquet", data_dir=str(tmp_path / "out/data"), cache_dir=str(tmp_path / "cache")
    )
    assert list(loaded) == ["test"] and isinstance(loaded["test"].features["image"], datasets.Image)
    assert loaded["test"][1]["answers"] == ["word1", "word1"]
    # and the output is an input again (Hub layout read back)
    again = open_source(tmp_path / "out")
    assert again.split == "test" and [s.question for s in again][0] == "what does sign 0 say?"
    assert summary.ok == 3


@pytest.fixture
def lmms_eval_tasks():
    """lmms-eval's task loader; importing it turns on PIL's LOAD_TRUNCATED_IMAGES, undone here."""
    from PIL import ImageFile

    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    pytest.importorskip(
        "lmms_eval", reason="lmms-eval is not installed: pip install 'api-prompt[lmms-eval]'"
    )
    try:
        from lmms_eval import tasks

        yield tasks
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated


def test_lmms_eval_loads_the_prompted_dataset_with_its_own_task_loader(tmp_path, lmms_eval_tasks):
    datasets = pytest.importorskip("datasets", reason="pip install 'api-prompt[datasets]'")
    TaskManager, get_task_dict = lmms_eval_tasks.TaskManager, lmms_eval_tasks.get_task_dict

    textvqa_like(datasets).save_to_disk(str(tmp_path / "textvqa"))
    summary = run(
        tmp_path / "textvqa", tmp_path / "out", prompter(), progress=False, id_column="question_id"
    )
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    # lmms-eval's own TextVQA functions, on the prompted copy loaded with load_from_disk
    (tasks / "utils.py").write_text(
        "from lmms_eval.tasks.textvqa.utils import *  # noqa: F401,F403\n"
    )
    (tasks / "textvqa_api.yaml").write_text(
        "task: textvqa_api_prompted\n"
        f"dataset_path: {summary.dataset}\n"
        "dataset_kwargs:\n  load_from_disk: true\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        "doc_to_visual: !function utils.textvqa_doc_to_visual\n"
        "doc_to_text: !function utils.textvqa_doc_to_text\n"
        "doc_to_target: answers\n"
        "process_results: !function utils.textvqa_process_results\n"
        "lmms_eval_specific_kwargs:\n  default:\n    pre_prompt: ''\n    post_prompt: ' Answer briefly.'\n"
        "    ocr: true\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    task = get_task_dict(["textvqa_api_prompted"], manager)["textvqa_api_prompted"]
    docs = task.test_docs()
    assert len(docs) == 3 and docs[2]["answers"] == ["word2"] * 3
    visual = task.doc_to_visual(docs[1])
    with Image.open(io.BytesIO(prompted(picture(1), "what does sign 1 say?"))) as expected:
        assert np.array_equal(np.asarray(visual[0]), np.asarray(expected.convert("RGB")))
    assert (
        task.doc_to_text(docs[1])
        == "What does sign 1 say?\nReference OCR token: tok1, x Answer briefly."
    )


def test_cli_prints_how_to_load_the_prompted_dataset(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets", reason="pip install 'api-prompt[datasets]'")
    from typer.testing import CliRunner

    from api_prompt.attribution import base as attribution_base

    monkeypatch.setitem(attribution_base.BACKENDS, "clip", "batch_support:PatternAttributor")
    try:
        from api_prompt.cli.app import app
    except ImportError:
        from cli.app import app
    textvqa_like(datasets, n=2).save_to_disk(str(tmp_path / "textvqa"))
    result = CliRunner().invoke(
        app, ["batch", str(tmp_path / "textvqa"), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    folder = (tmp_path / "out/dataset").resolve()
    assert f"prompted dataset: {tmp_path / 'out/dataset'}" in result.output
    assert f'datasets.load_from_disk("{folder}")["test"]' in result.output
    assert (
        f"dataset_path: {folder}" in result.output
        and "dataset_kwargs: {load_from_disk: true}" in result.output
    )
    assert "Saving the dataset" not in result.output  # no progress bars of datasets in the log


# ------------------------------------------------------------------------------------------------
# a new output format: one writer function and one registration, driven through the CLI


def write_toy_jsonl(job) -> Path:
    """A toy output format: one JSON line per sample with its id, question and prompted image
    (base64), or its original image and status when it failed (``--allow-partial``)."""
    from api_prompt.batch.formats import original_bytes, row_status
    from api_prompt.batch.store import record_files

    temporary = job.target.with_name(f".{job.target.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        for row in job.rows:
            if row.done:
                data = (job.out.root / record_files(row.record)[0]).read_bytes()
            else:
                data = original_bytes(job.source, row.sample, row.sample.image) or b""
            line = {
                "id": row.sample.id,
                "question": row.sample.question,
                "image": base64.b64encode(data).decode("ascii"),
                "status": row_status(row),
            }
            handle.write(json.dumps(line) + "\n")
    os.replace(temporary, job.target)
    return job.target


@pytest.fixture
def toy_format():
    """The toy format, registered for one test."""
    from api_prompt.batch import OUTPUT_FORMATS, OutputFormat, register_output_format

    register_output_format(
        OutputFormat(
            name="toy-jsonl",
            writer=write_toy_jsonl,
            help="a toy: JSON Lines",
            output_name="{stem}_API.jsonl",
            what="JSON Lines file",
        )
    )
    yield "toy-jsonl"
    del OUTPUT_FORMATS["toy-jsonl"]


def test_a_registered_output_format_is_written_through_the_cli(toy_format, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from api_prompt.attribution import base as attribution_base
    from test_batch import questions

    monkeypatch.setitem(attribution_base.BACKENDS, "clip", "batch_support:PatternAttributor")
    try:
        from api_prompt.cli.app import app
    except ImportError:
        from cli.app import app

    def cli(*args):
        return CliRunner().invoke(app, ["batch", *(str(arg) for arg in args)])

    source = questions(3, tmp_path)
    result = cli(source, "--out", tmp_path / "out", "--output-format", toy_format, "-q")
    assert result.exit_code == 0, result.output
    written = tmp_path / "out/q_API.jsonl"
    lines = [json.loads(line) for line in written.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["s0", "s1", "s2"]
    assert all(line["status"] == "ok" for line in lines)
    assert [base64.b64decode(line["image"]) for line in lines] == [
        (tmp_path / f"out/images/s{i}.png").read_bytes() for i in range(3)
    ]
    run_json = json.loads((tmp_path / "out/run.json").read_text())
    assert run_json["outputs"][toy_format] == "q_API.jsonl"
    # a rerun resumes (nothing left to do) and writes the same file again
    before = written.read_bytes()
    assert (
        cli(source, "--out", tmp_path / "out", "--output-format", toy_format, "-q").exit_code == 0
    )
    assert written.read_bytes() == before
    # nothing partial is written unless asked for; then the failed row says why
    (tmp_path / "pics/img1.png").unlink()
    result = cli(source, "--out", tmp_path / "bad", "--output-format", toy_format)
    assert result.exit_code == 1 and "the JSON Lines file was not written" in result.output
    assert not (tmp_path / "bad/q_API.jsonl").exists()
    result = cli(
        source, "--out", tmp_path / "bad", "--output-format", toy_format, "--allow-partial", "-q"
    )
    statuses = [
        json.loads(line)["status"]
        for line in (tmp_path / "bad/q_API.jsonl").read_text().splitlines()
    ]
    assert statuses[0] == statuses[2] == "ok" and statuses[1].startswith("failed (permanent): ")
    # an unknown format is refused before anything is read, naming the registered ones
    result = cli(source, "--out", tmp_path / "other", "--output-format", "nope")
    assert result.exit_code == 2 and toy_format in result.output and "dataset" in result.output
    assert not (tmp_path / "other").exists()
