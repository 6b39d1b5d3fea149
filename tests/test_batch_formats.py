"""The batch outputs read back by their consumers: VLMEvalKit TSVs, ``datasets`` folders, parquet
shards, lmms-eval tasks; multi-image rows; JPEG in, JPEG out.

VLMEvalKit itself is not installable here (no PyPI release); :func:`vlmevalkit_image_paths`
follows what its ``ImageBaseDataset`` does with a TSV (read with pandas, short image values are
row references, list cells hold several images, each image is saved once under
``$LMUData/images/<dataset>/<image_path or index.jpg>`` and reused from there).
"""

from __future__ import annotations

import ast
import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api_prompt.batch import open_source, run
from api_prompt.batch.runner import encode_image
from api_prompt.prompter import Prompter
from batch_support import PatternAttributor

TESTS = Path(__file__).parent


def picture(i: int, size=(40, 30)) -> Image.Image:
    array = np.zeros((size[1], size[0], 3), np.uint8)
    array[..., 0] = (np.arange(size[0]) * (3 + i)) % 256
    array[..., 1] = ((np.arange(size[1]) * (5 + 2 * i)) % 256)[:, None]
    array[..., 2] = 40 * i % 256
    return Image.fromarray(array)


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


def vlmevalkit_image_paths(tsv: Path, lmu_data: Path, dataset: str) -> dict[str, list[Path]]:
    """index -> the image files VLMEvalKit would hand the model for ``python run.py --data dataset``."""
    import pandas

    data = pandas.read_csv(tsv, sep="\t")
    data = data[~pandas.isna(data["image"])]          # rows without an image are skipped
    data["index"] = [str(x) for x in data["index"]]
    images = {k: str(v) for k, v in zip(data["index"], data["image"])}
    root = lmu_data / "images" / dataset
    root.mkdir(parents=True, exist_ok=True)
    served = {}
    for _, line in data.iterrows():
        value = images[line["index"]]
        if len(value) <= 64:                          # a reference to another row's image
            value = images[value]
        values = ast.literal_eval(value) if value.startswith("[") else value
        if isinstance(values, list):
            names = ast.literal_eval(line["image_path"])
            targets = [root / name for name in names]
        else:
            values = [values]
            name = line["image_path"] if "image_path" in line and isinstance(line["image_path"], str) else None
            targets = [root / (name or f"{line['index']}.jpg")]
        for value, target in zip(values, targets):
            if not target.exists():                   # the cache: an existing file is reused
                Image.open(io.BytesIO(base64.b64decode(value))).save(target)
        served[line["index"]] = targets
    return served


# ------------------------------------------------------------------------------------------------
# VLMEvalKit


def test_tsv_under_the_original_name_never_gets_the_cached_originals(tmp_path):
    pytest.importorskip("pandas")
    header = ["index", "image", "question", "A", "B", "answer"]
    rows = [[str(i), b64(encoded(picture(i))), f"what is {i}?", "x", "y", "A"] for i in range(3)]
    write_tsv(tmp_path / "MyBench.tsv", header, rows)
    lmu = tmp_path / "LMUData"
    # the user evaluated the original before: VLMEvalKit cached its images as <index>.jpg
    originals = vlmevalkit_image_paths(tmp_path / "MyBench.tsv", lmu, "MyBench")
    # now the prompted table, even under the very same dataset name
    summary = run(tmp_path / "MyBench.tsv", tmp_path / "out", prompter(), progress=False, tsv_name="MyBench.tsv")
    assert summary.tsv == tmp_path / "out/MyBench.tsv"
    served = vlmevalkit_image_paths(summary.tsv, lmu, "MyBench")
    for i in range(3):
        assert served[str(i)] != originals[str(i)]
        with Image.open(served[str(i)][0]) as image:
            expected = Image.open(io.BytesIO(prompted(picture(i), f"what is {i}?")))
            assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected.convert("RGB")))
    # another run with other settings gets other names again (no stale cache between runs)
    other = run(tmp_path / "MyBench.tsv", tmp_path / "other", Prompter(attributor=PatternAttributor(), enhance=2),
                progress=False, tsv_name="MyBench.tsv")
    assert not set(vlmevalkit_image_paths(other.tsv, lmu, "MyBench")["0"]) & set(served["0"])


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
    summary = run(tmp_path / "MMMU_like.tsv", tmp_path / "out", prompter(), progress=False, batch_size=2)
    assert (summary.ok, summary.error, summary.permanent) == (2, 1, 1) and summary.tsv is None
    summary = run(tmp_path / "MMMU_like.tsv", tmp_path / "out", prompter(), progress=False, batch_size=2,
                  allow_partial=True)
    assert sorted(p.name for p in (tmp_path / "out/images").iterdir()) == ["0--1.png", "0--2.png", "1.png"]
    frame = pandas.read_csv(summary.tsv, sep="\t")
    assert len(frame) == 3
    images = ast.literal_eval(frame["image"][0])
    assert [base64.b64decode(value) for value in images] == [
        prompted(picture(0), "compare them"), prompted(picture(1), "compare them")]
    served = vlmevalkit_image_paths(summary.tsv, tmp_path / "LMU", "MMMU_like_API")
    assert len(served["0"]) == 2 and len(set(served["0"])) == 2
    # the failed row keeps its original images, marked
    assert [base64.b64decode(v) for v in ast.literal_eval(frame["image"][2])] == [
        encoded(picture(3)), encoded(picture(4))]
    assert frame["api_prompt_status"][2] == "failed (permanent): the question is empty"
    record = json.loads((tmp_path / "out/manifest.jsonl").read_text().splitlines()[0])
    assert record["files"] == ["images/0--1.png", "images/0--2.png"] and len(record["maps"]) == 2


def test_jpeg_inputs_give_jpeg_outputs_unless_told_otherwise(tmp_path):
    pytest.importorskip("pandas")
    photo = picture(3, size=(160, 120))
    header = ["index", "image", "question"]
    write_tsv(tmp_path / "Photos.tsv", header, [[str(i), b64(encoded(photo, "JPEG")), "where?"] for i in range(3)])
    auto = run(tmp_path / "Photos.tsv", tmp_path / "auto", prompter(), progress=False)
    png = run(tmp_path / "Photos.tsv", tmp_path / "png", prompter(), progress=False, image_format="png")
    assert sorted(p.suffix for p in (tmp_path / "auto/images").iterdir()) == [".jpg"] * 3
    assert (tmp_path / "auto/images/0.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    output = json.loads((tmp_path / "auto/run.json").read_text())["parameters"]["output"]
    assert output["format"] == "auto" and output["jpeg_quality"] == 95
    assert auto.tsv.stat().st_size < png.tsv.stat().st_size
    with Image.open(tmp_path / "png/images/0.png") as image:
        assert image.format == "PNG"


def test_cli_prints_the_vlmevalkit_next_steps(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from api_prompt.attribution import base as attribution_base

    monkeypatch.setitem(attribution_base.BACKENDS, "clip", "batch_support:PatternAttributor")
    try:
        from api_prompt.cli.app import app
    except ImportError:
        from cli.app import app
    write_tsv(tmp_path / "Quiz.tsv", ["index", "image", "question", "A", "B", "answer"],
              [["0", b64(encoded(picture(0))), "which?", "a", "b", "A"]])
    result = CliRunner().invoke(app, ["batch", str(tmp_path / "Quiz.tsv"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"VLMEvalKit table: {tmp_path / 'out/Quiz_API.tsv'}" in result.output
    assert "python run.py --data Quiz_API" in result.output and "CustomMCQDataset" in result.output
    write_tsv(tmp_path / "Open.tsv", ["index", "image", "question", "answer"],
              [["0", b64(encoded(picture(0))), "what?", "a"]])
    result = CliRunner().invoke(app, ["batch", str(tmp_path / "Open.tsv"), "--out", str(tmp_path / "open"),
                                      "--tsv-name", "Mine.tsv"])
    assert result.exit_code == 0, result.output
    assert "--data Mine " in result.output and "CustomVQADataset" in result.output
    result = CliRunner().invoke(app, ["batch", str(tmp_path / "Open.tsv"), "--out", str(tmp_path / "bad"),
                                      "--tsv-name", "../up.tsv"])
    assert result.exit_code == 2 and "--tsv-name must be a file name" in result.output
