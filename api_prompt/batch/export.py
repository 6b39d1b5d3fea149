"""Write the prompted data back in the input's own shape, for the tool that evaluates it.

- **VLMEvalKit TSV in** → ``DIR/<stem>_API.tsv``: every column as the input had it, ``image``
  holding the prompted image (base64; a list for rows with several images) and an
  ``image_path`` per row that no other run or original can have (``<name>_<tag>.<ext>``, the
  tag a hash of the run's parameters). VLMEvalKit saves each row's image under
  ``$LMUData/images/<dataset>/<image_path>`` and reuses a file already there, so a name of its
  own per row and per run is what keeps it from serving an original (or another run's) image.
- **parquet or ``datasets`` in** → ``DIR/dataset``: a ``DatasetDict`` (``save_to_disk``) under
  the input's split name, every column of the input (lists included), the prompted image in
  the image column as a ``datasets.Image`` (a list of them for several images), optionally the
  original in ``<column>_original``; or with ``output_format="parquet"`` the same as parquet
  shards laid out as on the Hub (``DIR/data/<split>-00000-of-00001.parquet``).

Nothing is lost silently: the table or dataset is written only when every sample of the input
(up to ``limit``) is done. With ``allow_partial`` it is written anyway: failed rows keep their
original image and the column ``api_prompt_status`` says ``ok`` or why the row failed.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..images import is_jpeg
from .sources import Source, TableSource, TSVSource, is_multi_image
from .store import TMP_SUFFIX, OutputDir, part_names, plain_file_name, record_files

__all__ = ["export", "planned_outputs", "check_export_options", "default_tsv_name", "STATUS_COLUMN"]

#: the column that marks rows of a partial export
STATUS_COLUMN = "api_prompt_status"
OUTPUT_FORMATS = ("dataset", "parquet")
#: folder names inside DIR
DATASET_DIR = "dataset"
PARQUET_DIR = "data"
#: target size of one parquet shard (``--output-format parquet``)
PARQUET_SHARD_BYTES = 500 * 2**20


def default_tsv_name(input_name: str) -> str:
    """``<stem>_API.tsv``: a new dataset name, so VLMEvalKit neither re-downloads an official
    table over it (its checksum differs) nor mixes it up with the original.

    >>> default_tsv_name("MMBench_DEV_EN.tsv")
    'MMBench_DEV_EN_API.tsv'
    """
    return f"{Path(input_name).stem}_API.tsv"


def check_export_options(*, tsv_name: str | None, output_format: str) -> None:
    """Refuse a TSV name with a folder in it or another extension, and unknown output formats."""
    if tsv_name is not None and (plain_file_name(tsv_name) is None or not tsv_name.endswith(".tsv")
                                 or tsv_name.startswith(".")):
        raise ConfigError(f"--tsv-name must be a file name ending in .tsv (no folder), got {tsv_name!r}")
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown output format {output_format!r}; choose one of: {', '.join(OUTPUT_FORMATS)}")


def planned_outputs(source: Source, *, num_shards: int, tsv_name: str | None,
                    output_format: str) -> dict[str, str]:
    """What a run writes besides images and the manifest (for run.json's ``outputs``).

    Shards write none (``merge`` does, once all shards are together).
    """
    if num_shards != 1:
        return {}
    if isinstance(source, TSVSource):
        return {"tsv": tsv_name or default_tsv_name(source.name)}
    if isinstance(source, TableSource):
        return {"parquet": PARQUET_DIR} if output_format == "parquet" else {"dataset": DATASET_DIR}
    return {}


def run_tag(parameters: dict[str, Any]) -> str:
    """8 hex digits that identify a run's parameters (source, output, prompter).

    >>> run_tag({"a": 1}) == run_tag({"a": 1}) != run_tag({"a": 2})
    True
    """
    text = json.dumps(parameters, sort_keys=True, default=str)
    return "api" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def export(out: OutputDir, source: Source, run_info: dict[str, Any], summary: Any, *,
           allow_partial: bool = False, keep_original: bool = False) -> None:
    """Write the TSV / dataset that ``run_info["outputs"]`` plans, if the run is complete.

    Fills ``summary.failed_total``, ``.tsv`` / ``.dataset``, ``.partial`` and ``.not_exported``.
    """
    from .runner import _in_share, named_samples

    info = run_info["run"]
    limit = info.get("limit")
    records = out.records()
    rows = []   # (sample, name, record, done): whether each is done is looked up once (a stat per image)
    for sample, name in named_samples(source, limit):
        record = records.get(name)
        rows.append((sample, name, record, out.is_done(record)))
    share = [row for row in rows
             if _in_share(row[0].index, limit, info.get("num_shards", 1), info.get("shard_index", 0))]
    summary.failed_total = sum(1 for *_, done in share if not done)
    outputs = run_info.get("outputs") or {}
    target_key = next((key for key in ("tsv", "dataset", "parquet") if outputs.get(key)), None)
    if target_key is None:
        return
    missing = summary.failed_total   # exports are planned for a whole input only (one shard): share == rows
    if missing and not allow_partial:
        what = "TSV" if target_key == "tsv" else "dataset"
        summary.not_exported = (
            f"the {what} was not written: {missing} of {len(rows)} samples are not done, and a "
            f"partial {what} would be evaluated as if it were complete; fix them and rerun, or pass "
            f"--allow-partial to keep their original images and mark them in a {STATUS_COLUMN} column"
        )
        out.remove_exports({"outputs": outputs})
        return
    summary.partial = bool(missing)
    tag = run_tag(run_info["parameters"])
    if target_key == "tsv":
        summary.tsv = write_tsv(out, source, rows, outputs["tsv"], tag=tag, status=allow_partial)
    else:
        summary.dataset = write_dataset(out, source, rows, outputs[target_key], parquet=target_key == "parquet",
                                        status=allow_partial, keep_original=keep_original)


def _status(done: bool, record: dict[str, Any] | None) -> str:
    if done:
        return "ok"
    if record is None:
        return "failed: not processed"
    return f"failed ({record.get('error_kind') or 'error'}): {record.get('error') or 'image missing'}"


# ------------------------------------------------------------------------------------------------
# VLMEvalKit TSV


def write_tsv(out: OutputDir, source: TSVSource, rows: list, name: str, *, tag: str, status: bool) -> Path:
    """Write ``DIR/<name>`` (see the module docs); returns its path.

    ``rows`` holds ``(sample, name, record, done)`` per sample, as :func:`export` builds them."""
    columns = list(source.columns or [])
    image_column = source.image_column
    if "image" not in columns:
        columns.insert(columns.index(image_column), "image")
    if "image_path" not in columns:
        columns.insert(columns.index("image") + 1, "image_path")
    if status and STATUS_COLUMN not in columns:
        columns.append(STATUS_COLUMN)
    path = out.root / name
    temporary = path.with_name(f".{path.name}{TMP_SUFFIX}")
    raw_rows = source._rows()
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for (sample, stem, record, done), raw in zip(rows, raw_rows):
            values = dict(raw)
            if done:
                files = record_files(record)
                images = [base64.b64encode((out.root / file).read_bytes()).decode("ascii") for file in files]
                names = [f"{Path(file).stem}_{tag}{Path(file).suffix}" for file in files]
            else:
                images, names = _original_images(source, sample, stem, tag)
            multi = is_multi_image(sample)
            if images:
                values["image"] = repr(images) if multi else images[0]
                values["image_path"] = repr(names) if multi else names[0]
            else:  # unreadable: the cell exactly as the input had it
                values["image"] = raw.get("image", raw.get(image_column, ""))
                values["image_path"] = f"{stem}_original_{tag}.jpg"
            if status:
                values[STATUS_COLUMN] = _status(done, record)
            writer.writerow(["" if values.get(column) is None else values[column] for column in columns])
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def _original_images(source: TSVSource, sample: Any, stem: str, tag: str) -> tuple[list[str], list[str]]:
    """The original image(s) of a failed row as base64, with names of their own ("original")."""
    multi = is_multi_image(sample)
    values = sample.image if multi else [sample.image]
    images, names = [], []
    for part, value in zip(part_names(stem, len(values)) if multi else [stem], values):
        data = _original_bytes(source, sample, value)
        if data is None:   # the image itself is what failed: nothing to keep
            return [], []
        images.append(base64.b64encode(data).decode("ascii"))
        names.append(f"{part}_original_{tag}.{'jpg' if is_jpeg(data) else 'png'}")
    return images, names


def _original_bytes(source: Source, sample: Any, value: Any) -> bytes | None:
    """One original image value of ``sample`` as encoded bytes; None when it cannot be read."""
    try:
        data = source.resolve(value, sample)
        data = data if isinstance(data, (bytes, bytearray)) else Path(data).read_bytes()
    except Exception:
        return None
    return bytes(data)


# ------------------------------------------------------------------------------------------------
# datasets / parquet


def write_dataset(out: OutputDir, source: TableSource, rows: list, folder: str, *, parquet: bool,
                  status: bool, keep_original: bool) -> Path:
    """Write the prompted ``DatasetDict`` (or parquet shards) into ``DIR/<folder>``; ``rows`` as
    for :func:`write_tsv`."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    image_column = source.image_column
    features = source.features().copy()
    multi = isinstance(features[image_column], (list, datasets.List, datasets.Sequence)) or any(
        is_multi_image(sample) for sample, *_ in rows
    )
    image_feature = datasets.List(datasets.Image()) if multi else datasets.Image()
    original_feature = features[image_column]
    features[image_column] = image_feature
    original_column = f"{image_column}_original"
    if keep_original:
        if original_column in features:
            raise ConfigError(f"the input already has a column {original_column!r}; --keep-original cannot add it")
        features[original_column] = original_feature
    if status:
        features[STATUS_COLUMN] = datasets.Value("string")

    work = out.root / f".export{TMP_SUFFIX}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    bars_were_on = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()     # our own progress is enough in a log
    try:
        arrow_path = work / "rows.arrow"
        position = 0
        with ArrowWriter(features=features, path=str(arrow_path)) as writer:
            for table in source.tables():
                batch = table.to_pydict()
                count = table.num_rows
                chunk = rows[position:position + count]
                position += count
                prompted, states = [], []
                for (sample, _, record, done), original in zip(chunk, batch[image_column]):
                    if done:
                        images = [{"bytes": (out.root / file).read_bytes(), "path": Path(file).name}
                                  for file in record_files(record)]
                        prompted.append(images if multi else images[0])
                    else:
                        prompted.append(_as_image_value(source, sample, original, multi))
                    states.append(_status(done, record))
                if len(chunk) < count:   # rows beyond --limit
                    batch = {key: values[:len(chunk)] for key, values in batch.items()}
                if keep_original:
                    batch[original_column] = batch[image_column]
                batch[image_column] = prompted
                if status:
                    batch[STATUS_COLUMN] = states
                if chunk:
                    writer.write_batch(batch)
                if position >= len(rows):
                    break
            writer.finalize()
        dataset = datasets.Dataset.from_file(str(arrow_path))
        staged = work / "out"
        if parquet:
            staged.mkdir()
            shards = max(1, math.ceil(dataset.data.nbytes / PARQUET_SHARD_BYTES))
            for index in range(shards):
                shard = dataset.shard(shards, index, contiguous=True)
                shard.to_parquet(str(staged / f"{source.split}-{index:05d}-of-{shards:05d}.parquet"))
        else:
            datasets.DatasetDict({source.split: dataset}).save_to_disk(str(staged))
        del dataset
        target = out.root / folder
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
        return target
    finally:
        if bars_were_on:
            datasets.utils.logging.enable_progress_bar()
        shutil.rmtree(work, ignore_errors=True)


def _as_image_value(source: TableSource, sample: Any, original: Any, multi: bool) -> Any:
    """A failed row's original image as ``datasets.Image`` stores it (bytes kept inline)."""

    def one(value: Any) -> Any:
        if isinstance(value, dict) and value.get("bytes"):
            return {"bytes": value["bytes"], "path": value.get("path")}
        data = _original_bytes(source, sample, value)
        if data is None:   # the image itself is what failed: nothing to keep
            return None
        return {"bytes": data, "path": None}

    if multi:
        values = original if isinstance(original, list) else [original]
        return [one(value) for value in values]
    return one(original)
