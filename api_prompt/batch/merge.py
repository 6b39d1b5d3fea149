"""Combine the output folders of sharded (or split-up) batch runs into one.

Each shard of ``api-prompt batch --num-shards N --shard-index I`` writes its own folder, so
shards never share a file, also on different machines. ``merge`` then checks that every folder
was made with the same parameters, copies (hard-links when it can) their images into one
folder, writes one manifest sorted by input order, and for VLMEvalKit inputs the TSV.

The merged folder is an ordinary batch output: running ``api-prompt batch`` into it with the
same parameters retries only the samples that failed or are missing, and merging more shards
into it later adds theirs.

>>> from api_prompt.batch import merge                                  # doctest: +SKIP
>>> merge(["out.shard0", "out.shard1"], "out")                          # doctest: +SKIP
MergeSummary(ok=1000, error=0, missing_shards=[], ...)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..runs import TMP_SUFFIX, compare_parameters, write_atomic
from .export import export, planned_outputs
from .formats import default_output_format
from .sources import Source, open_source
from .store import OutputDir, latest_records, read_manifest, record_files

__all__ = ["merge", "MergeSummary"]


@dataclass
class MergeSummary:
    """What :func:`merge` produced.

    Attributes:
        out_dir: the merged folder.
        ok, error: samples in the merged manifest by status.
        inputs: the folders merged.
        missing_shards: shard indices of an ``N``-shard run that no input folder holds.
        exported: the prompted table or dataset written (any output format), if any.
        tsv: the VLMEvalKit TSV written, if any.
        dataset: the prompted dataset (or parquet) folder written, if any.
        partial: the TSV / dataset keeps failed rows with their original image.
        not_exported: why no TSV / dataset was written although the input calls for one.
    """

    out_dir: Path
    ok: int = 0
    error: int = 0
    inputs: list[Path] = field(default_factory=list)
    missing_shards: list[int] = field(default_factory=list)
    exported: Path | None = None
    tsv: Path | None = None
    dataset: Path | None = None
    partial: bool = False
    not_exported: str | None = None
    failed_total: int = 0

    @property
    def complete(self) -> bool:
        """True when no shard is missing and no sample failed."""
        return not self.missing_shards and self.error == 0 and not self.failed_total

    def __str__(self) -> str:
        text = f"merged {len(self.inputs)} folders: {self.ok} ok, {self.error} failed -> {self.out_dir}"
        if self.missing_shards:
            text += f" (shards missing: {', '.join(map(str, self.missing_shards))})"
        return text


def merge(
    run_dirs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    allow_partial: bool = False,
) -> MergeSummary:
    """Merge batch output folders made with the same parameters into ``out_dir``.

    Args:
        run_dirs: folders written by :func:`~api_prompt.batch.run` (typically its shards).
        out_dir: the merged folder: new, empty, or an earlier merge/run with the same
            parameters (its samples are kept; an ``ok`` sample always wins over a failed one).
        overwrite: delete what ``out_dir`` holds from an earlier run first.
        allow_partial: write the TSV / dataset even when samples failed or are missing (see
            :mod:`.export`).

    Raises:
        ConfigError: a folder is not a batch output, the parameters differ, or ``out_dir`` is
            one of the inputs.
    """
    inputs = [Path(path) for path in run_dirs]
    if not inputs:
        raise ConfigError("give at least one batch output folder to merge")
    out = OutputDir(out_dir)
    runs = []
    for path in inputs:
        if path.resolve() == out.root.resolve():
            raise ConfigError(f"--out {out.root} is also an input; merge into a new folder")
        stored = OutputDir(path).read_run()
        if stored is None:
            raise ConfigError(f"{path} holds no run.json: it is not the output of api-prompt batch")
        runs.append(stored)
    parameters = runs[0]["parameters"]
    for path, stored in zip(inputs[1:], runs[1:]):
        changes = compare_parameters(parameters, stored["parameters"])
        if changes:
            raise ConfigError(
                f"{path} was made with other parameters than {inputs[0]} ({'; '.join(changes[:4])}); "
                "only runs with the same parameters can be merged"
            )

    summary = MergeSummary(out_dir=out.root, inputs=inputs)
    try:
        earlier = None if overwrite else out.read_run() if out.run_json.exists() else None
        out.prepare(parameters, overwrite=overwrite)
        shards = [
            entry
            for stored in ([earlier] if earlier else []) + runs
            for entry in _shards(stored, None)
        ]
        shards += [entry for path, stored in zip(inputs, runs) for entry in _shards(stored, path)]
        shards = [entry for entry in shards if entry.get("path")]
        summary.missing_shards = _missing_shards(shards)
        merged = out.records()
        for path in inputs:
            shard = OutputDir(path)
            for name, record in latest_records(read_manifest(shard.manifest)).items():
                if out.is_done(merged.get(name)):
                    continue
                if record.get("status") == "ok":
                    if not shard.is_done(record):
                        continue
                    for file in record_files(record):
                        _place(path / file, out.root / file)
                    merged[name] = record
                elif name not in merged:
                    merged[name] = record
        ordered = sorted(merged.values(), key=lambda r: (r.get("index", -1), r.get("name", "")))
        lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in ordered)
        write_atomic(out.manifest, lines.encode("utf-8"))
        summary.ok = sum(1 for record in ordered if record.get("status") == "ok")
        summary.error = len(ordered) - summary.ok
        first = runs[0]
        export_options = (first.get("run") or {}).get("export_options") or {}
        limit = (first.get("run") or {}).get("limit")
        try:
            source = reopen_source(first)
        except Exception as exc:  # the input moved or is unreadable: the images are merged anyway
            source, reason = None, f"cannot read the input again ({' '.join(str(exc).split())})"
        outputs = {"manifest": "manifest.jsonl", "images": "images"}
        if source is not None:
            outputs.update(
                planned_outputs(
                    source,
                    num_shards=1,
                    tsv_name=export_options.get("tsv_name"),
                    output_format=export_options.get("output_format"),
                )
            )
        run_info = {
            "layout": first.get("layout"),
            "parameters": parameters,
            "run": {
                "merged_from": shards,
                "num_shards": 1,
                "shard_index": 0,
                "limit": limit,
                "missing_shards": summary.missing_shards,
                "source": (first.get("run") or {}).get("source"),
                "export_options": export_options,
                "allow_partial": allow_partial,
            },
            "versions": first.get("versions"),
            "outputs": outputs,
        }
        out.write_run(run_info)
        if source is not None:
            export(
                out,
                source,
                run_info,
                summary,
                allow_partial=allow_partial,
                keep_original=bool(export_options.get("keep_original")),
            )
        elif (
            default_output_format((parameters.get("source") or {}).get("format") or "") is not None
        ):
            summary.not_exported = f"the prompted table was not written: {reason}"
    finally:
        out.close()
    return summary


def reopen_source(stored: dict[str, Any]) -> Source:
    """The input of a stored run, opened again as it was (from run.json)."""
    described = (stored.get("parameters") or {}).get("source") or {}
    location = (stored.get("run") or {}).get("source") or {}
    if not location.get("path"):
        raise ConfigError("run.json does not say where the input was")
    return open_source(
        location["path"],
        format=described.get("format"),
        id_column=described.get("id_column"),
        image_column=described.get("image_column"),
        question_column=described.get("question_column"),
        image_root=location.get("image_root"),
        split=described.get("split"),
    )


def _place(source: Path, target: Path) -> None:
    """Hard-link (or copy) ``source`` to ``target`` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}{TMP_SUFFIX}")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def _shards(stored: dict[str, Any], path: Path | None) -> list[dict[str, Any]]:
    """The shard runs a folder holds: itself, or the folders an earlier merge combined."""
    run = stored.get("run") or {}
    if "merged_from" in run:
        return list(run["merged_from"]) if path is None else []
    if path is None:
        return []
    return [
        {
            "path": str(path.resolve()),
            "num_shards": run.get("num_shards", 1),
            "shard_index": run.get("shard_index", 0),
            "limit": run.get("limit"),
        }
    ]


def _missing_shards(shards: list[dict[str, Any]]) -> list[int]:
    """Shard indices of an N-shard run that no merged folder covers (empty when unsharded)."""
    counts = {entry.get("num_shards") or 1 for entry in shards}
    if len(counts) != 1 or (count := counts.pop()) == 1:
        return []
    present = {entry.get("shard_index") for entry in shards}
    return [index for index in range(count) if index not in present]
