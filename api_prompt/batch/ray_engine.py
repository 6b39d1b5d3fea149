"""``engine="ray"``: the batch run on Ray Data, one model per actor, on every GPU of a cluster.

The driver (the process that runs ``api-prompt batch --engine ray``) does what the local engine
does before and after the model: it reads the source with the same readers (so names, row
references and ``limit`` mean exactly the same), prepares ``DIR`` (lock, parameters, resume),
forms the same consecutive batches, and appends the records to the one manifest. In between,
the pending batches become a Ray dataset (``ray.data.from_items``, one row per batch) and
``map_batches`` sends them to a pool of actors, each holding one model
(:class:`~api_prompt.batch.runner.Stages`: decode, attribute, render, encode, write). The
actors write the images themselves through the same atomic writes, so their outputs are byte
for byte those of the local engine, and a killed driver is resumed like a killed local run.
The driver loads the model once as well, to record its identity (weights hash) in run.json;
from the command line every actor loads its own copy from the same options.

What a cluster needs: every node can import api-prompt and load the model, and sees ``DIR`` (and
image files given as paths) at the same path, e.g. on a shared file system. Images inside the
input (base64, parquet bytes) travel through Ray's object store.

    ray start --head                      # on the head node
    ray start --address HEAD_IP:6379      # on every other node
    api-prompt batch data.parquet --out /shared/out --engine ray --address auto
"""

from __future__ import annotations

import json
import logging
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import ConfigError
from .store import OutputDir

__all__ = ["run_ray", "require_ray"]


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or a one-line ConfigError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data: pip install 'api-prompt[ray]' ({exc})") from None
    return ray


class _Actor:
    """One model per actor; turns batch rows into manifest records (as JSON text).

    Two calls run at once (a threaded actor) and take turns on the model, so one batch is
    decoded, rendered and encoded while the other is in the model, as in the local engine.
    """

    def __init__(self, prompter: Any, source: Any, out_root: str, output: Any, threads: int,
                 torch_threads: int) -> None:
        import torch

        from .runner import LazyPrompter, Stages

        # Ray sets OMP_NUM_THREADS to the actor's num_cpus (1 here); on CPU the one actor per
        # machine should use that machine's cores, as the local engine does.
        torch.set_num_threads(torch_threads)
        if isinstance(prompter, LazyPrompter):
            prompter = prompter.build()
        self.stages = Stages(source, OutputDir(out_root), prompter, output)
        self.stages.model_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="api-prompt-ray")

    def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
        from .runner import _Item

        results = []
        for payload in rows["payload"]:
            named, done = pickle.loads(payload)   # written by this run's driver (see run_ray)
            records = self.stages.process([_Item(sample, name) for sample, name in named], self.pool,
                                          done=frozenset(done))
            results.append(json.dumps(records, ensure_ascii=False))
        return {"records": results}


def run_ray(job: Any, summary: Any, bar: Any, *, factory: Any = None, address: str | None = None,
            num_gpus: float | None = None) -> None:
    """Run ``job``'s pending batches on Ray (see the module docs); fills ``summary``."""
    ray = require_ray()
    started = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False          # the run has its own progress (bar or log lines)
    context.print_on_execution_start = False
    ray_data_log = logging.getLogger("ray.data")
    level = ray_data_log.level
    ray_data_log.setLevel(logging.WARNING)
    try:
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        per_actor_gpus = num_gpus if num_gpus is not None else (1.0 if gpus >= 1 else 0.0)
        if per_actor_gpus > gpus:
            raise ConfigError(f"--num-gpus {per_actor_gpus:g} per actor, but the Ray cluster has {gpus:g} GPUs")
        if per_actor_gpus > 0:
            actors = max(1, int(gpus // per_actor_gpus))
        else:
            nodes = [node for node in ray.nodes() if node.get("Alive")]
            actors = max(1, len(nodes))        # on CPU one actor per machine: torch uses all its cores
        payloads = []
        for batch in job.batches(summary):
            named = [(item.sample, item.name) for item in batch]
            done = [item.name for item in batch if item.name in job.done]
            summary.skipped += len(done)
            payloads.append({"payload": pickle.dumps((named, done), protocol=pickle.HIGHEST_PROTOCOL)})
        if not payloads:
            return
        dataset = ray.data.from_items(payloads, override_num_blocks=min(len(payloads), 4 * actors))
        prompter = factory if factory is not None else job.prompter
        cpus_per_actor = max(1, int(resources.get("CPU", 1) // actors))
        threads = max(1, min(job.workers, cpus_per_actor))
        torch_threads = 1 if per_actor_gpus > 0 else cpus_per_actor
        results = dataset.map_batches(
            _Actor,
            batch_size=1,
            fn_constructor_kwargs=dict(prompter=prompter, source=job.source, out_root=str(job.out.root),
                                       output=job.output, threads=threads, torch_threads=torch_threads),
            compute=ray.data.ActorPoolStrategy(size=actors, max_concurrent_calls_per_actor=2),
            num_gpus=per_actor_gpus,
            num_cpus=0 if per_actor_gpus > 0 else 1,
        )
        for row in results.iter_rows():
            records = json.loads(row["records"])
            job.out.append(records)
            job.count(summary, records)
            bar.update(len(records))
    finally:
        ray_data_log.setLevel(level)
        summary.seconds = time.perf_counter() - started
