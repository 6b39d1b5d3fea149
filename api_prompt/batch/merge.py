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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError
from .store import (
    TMP_SUFFIX, OutputDir, compare_parameters, latest_records, plain_file_name, read_manifest, write_atomic,
)

__all__ = ["merge", "MergeSummary"]


@dataclass
class MergeSummary:
    """What :func:`merge` produced.

    Attributes:
        out_dir: the merged folder.
        ok, error: samples in the merged manifest by status.
        inputs: the folders merged.
        missing_shards: shard indices of an ``N``-shard run that no input folder holds.
        tsv: the VLMEvalKit TSV written, if any.
    """

    out_dir: Path
    ok: int = 0
    error: int = 0
    inputs: list[Path] = field(default_factory=list)
    missing_shards: list[int] = field(default_factory=list)
    tsv: Path | None = None

    @property
    def complete(self) -> bool:
        """True when no shard is missing and no sample failed."""
        return not self.missing_shards and self.error == 0

    def __str__(self) -> str:
        text = f"merged {len(self.inputs)} folders: {self.ok} ok, {self.error} failed -> {self.out_dir}"
        if self.missing_shards:
            text += f" (shards missing: {', '.join(map(str, self.missing_shards))})"
        return text


def merge(run_dirs: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *, overwrite: bool = False) -> MergeSummary:
    """Merge batch output folders made with the same parameters into ``out_dir``.

    Args:
        run_dirs: folders written by :func:`~api_prompt.batch.run` (typically its shards).
        out_dir: the merged folder: new, empty, or an earlier merge/run with the same
            parameters (its samples are kept; an ``ok`` sample always wins over a failed one).
        overwrite: delete what ``out_dir`` holds from an earlier run first.

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
        shards = [entry for stored in ([earlier] if earlier else []) + runs for entry in _shards(stored, None)]
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
                    _place(path / record["file"], out.root / record["file"])
                    merged[name] = record
                elif name not in merged:
                    merged[name] = record
        ordered = sorted(merged.values(), key=lambda r: (r.get("index", -1), r.get("name", "")))
        lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in ordered)
        write_atomic(out.manifest, lines.encode("utf-8"))
        summary.ok = sum(1 for record in ordered if record.get("status") == "ok")
        summary.error = len(ordered) - summary.ok
        first = runs[0]
        tsv = plain_file_name((first.get("outputs") or {}).get("tsv") or (
            parameters["source"]["name"] if parameters["source"].get("format") == "tsv" else None
        ))
        out.write_run({
            "layout": first.get("layout"),
            "parameters": parameters,
            "run": {
                "merged_from": shards,
                "num_shards": 1, "shard_index": 0,
                "missing_shards": summary.missing_shards,
            },
            "versions": first.get("versions"),
            "outputs": {"manifest": "manifest.jsonl", "images": "images", "tsv": tsv},
        })
        if tsv:
            summary.tsv = out.write_tsv(parameters["source"], tsv)
    finally:
        out.close()
    return summary


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
    return [{"path": str(path.resolve()), "num_shards": run.get("num_shards", 1),
             "shard_index": run.get("shard_index", 0), "limit": run.get("limit")}]


def _missing_shards(shards: list[dict[str, Any]]) -> list[int]:
    """Shard indices of an N-shard run that no merged folder covers (empty when unsharded)."""
    counts = {entry.get("num_shards") or 1 for entry in shards}
    if len(counts) != 1 or (count := counts.pop()) == 1:
        return []
    present = {entry.get("shard_index") for entry in shards}
    return [index for index in range(count) if index not in present]
