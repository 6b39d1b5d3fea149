"""Prompt whole datasets: read samples, run the prompter in batches, write images and a manifest.

>>> from api_prompt import Prompter                                            # doctest: +SKIP
>>> from api_prompt.batch import run, merge                                    # doctest: +SKIP
>>> prompter = Prompter(model="ViT-L-14-336-quickgelu", pretrained="openai")   # doctest: +SKIP
>>> summary = run("MMVet.tsv", "mmvet_api/", prompter, batch_size=32)         # doctest: +SKIP
>>> summary.ok, summary.error, summary.tsv                                     # doctest: +SKIP
(218, 0, PosixPath('mmvet_api/MMVet_API.tsv'))

The same from the command line::

    api-prompt batch MMVet.tsv --out mmvet_api/ --batch-size 32
    # every GPU of a Ray cluster:
    api-prompt batch MMVet.tsv --out /shared/mmvet_api --engine ray --address auto
    # or by hand on two machines, then combined:
    api-prompt batch data.jsonl --out part0 --num-shards 2 --shard-index 0
    api-prompt batch data.jsonl --out part1 --num-shards 2 --shard-index 1
    api-prompt merge part0 part1 --out all

- :mod:`.sources`: inputs (JSON Lines, CSV, VLMEvalKit TSV, parquet, saved HF datasets).
- :mod:`.store`: the output folder (names, manifest, run.json), a :class:`~api_prompt.runs.RunFolder`.
- :mod:`.runner`: :func:`run`: options, ``DIR``, an engine, the export.
- :mod:`.job`: the run's settings, prompter, summary and interruption (shared by the engines).
- :mod:`.selection`: which samples (``limit``, shards), named, in which batches.
- :mod:`.records`, :mod:`.encoding`, :mod:`.stages`: the work on one batch (decode, attribute,
  render, encode, write) and the manifest records it makes.
- :mod:`.local_engine`: threads in this process; :mod:`.ray_engine`: Ray Data actors.
- :mod:`.progress`: the progress bar or log lines.
- :mod:`.formats`: the output formats' registry; :mod:`.export` writes the planned one
  (:mod:`.export_tsv`, :mod:`.export_dataset`).
- :mod:`.merge`: :func:`merge`, combining shard folders.
"""

from .formats import (
    OUTPUT_FORMATS,
    ExportJob,
    ExportRow,
    OutputFormat,
    get_output_format,
    register_output_format,
)
from .job import LazyPrompter, RunSettings, Summary
from .merge import MergeSummary, merge
from .runner import IMAGE_FORMATS, Interrupted, OutputSpec, run
from .sources import Sample, Source, detect_format, open_source, resolve_image
from .store import Namer, OutputDir, safe_name

__all__ = [
    "OUTPUT_FORMATS",
    "ExportJob",
    "ExportRow",
    "OutputFormat",
    "RunSettings",
    "get_output_format",
    "register_output_format",
    "IMAGE_FORMATS",
    "Interrupted",
    "LazyPrompter",
    "MergeSummary",
    "OutputSpec",
    "Namer",
    "OutputDir",
    "Sample",
    "Source",
    "Summary",
    "detect_format",
    "merge",
    "open_source",
    "resolve_image",
    "run",
    "safe_name",
]
