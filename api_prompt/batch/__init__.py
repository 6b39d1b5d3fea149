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
- :mod:`.store`: the output folder (names, manifest, run.json, atomic writes).
- :mod:`.runner`: :func:`run`, the batched, overlapped, resumable loop (the local engine).
- :mod:`.ray_engine`: the same stages on Ray Data actors (``engine="ray"``).
- :mod:`.export`: the prompted VLMEvalKit TSV and ``datasets`` / parquet outputs.
- :mod:`.merge`: :func:`merge`, combining shard folders.
"""

from .merge import MergeSummary, merge
from .runner import IMAGE_FORMATS, Interrupted, LazyPrompter, OutputSpec, Summary, run
from .sources import Sample, Source, detect_format, open_source, resolve_image
from .store import Namer, OutputDir, safe_name

__all__ = [
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
