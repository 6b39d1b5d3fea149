"""``engine="ray"``: the batch run on Ray Data, one model per actor, on every GPU of a cluster.

The driver (the process that runs ``api-prompt batch --engine ray``) does what the local engine
does before and after the model: it reads the source with the same readers (so names, row
references and ``limit`` mean exactly the same), prepares ``DIR`` (lock, parameters, resume),
forms the same consecutive batches, and appends the records to the one manifest. In between,
the pending batches become a Ray dataset (``ray.data.from_items``, one row per batch) and
``map_batches`` sends them to a pool of actors, each holding one model
(:class:`~api_prompt.batch.stages.Stages`: decode, attribute, render, encode, write). The
actors write the images themselves through the same atomic writes, so their outputs are byte
for byte those of the local engine, and a killed driver is resumed like a killed local run.

The driver never loads the model. :func:`start_ray` sets the actors going (process start,
imports, model load) as soon as the pending batches are known; each actor reports the model it
loaded (``describe()``: options and weights hash) to a small gate actor and waits there. The
driver records the first report in run.json as the run's model, checks ``DIR`` against it (an
earlier run with other parameters is refused as in the local engine) and only then opens the
gate (:meth:`RayPipeline.collect`). So a refused run leaves ``DIR`` as it was, and an actor
whose model differs from the recorded one (other weights on another node) refuses to write.
Given a loaded Prompter instead of a :class:`~api_prompt.batch.job.LazyPrompter`, the driver
describes it itself and every actor gets a pickled copy.

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
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..runs import error_message, jsonable
from .encoding import OutputSpec
from .job import BatchPrompter, LazyPrompter, Summary
from .local_engine import Job
from .progress import Progress
from .records import Item, ManifestRecord
from .sources import Sample, Source
from .stages import Stages
from .store import OutputDir

if TYPE_CHECKING:  # Ray is an optional extra: imported only by require_ray
    from ray.actor import ActorHandle
    from ray.data import Dataset

__all__ = ["start_ray", "RayPipeline", "require_ray"]

#: calls one actor runs at once: one batch in the model while the other is decoded or encoded
CALLS_PER_ACTOR = 2
#: seconds a run that stops early waits for Ray Data to end its execution (called-off calls are quick)
CLOSE_TIMEOUT = 30.0


#: a prompter's ``describe()`` as JSON reads it back
Description = dict[str, Any]


def require_ray() -> ModuleType:
    """The ``ray`` module with Ray Data, or a one-line ConfigError saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(
            f"--engine ray needs Ray Data: pip install 'api-prompt[ray]' ({exc})"
        ) from None
    return ray


class _Gate:
    """Where the actors report the model they loaded, and wait for the driver's answer.

    The driver takes the first report as the run's model (run.json), checks ``DIR`` against it,
    then answers with the description it accepted; an actor whose model differs from it (other
    weights on another node, say) refuses to write.
    """

    def __init__(self) -> None:
        self.reported, self.decided = threading.Event(), threading.Event()
        self.first: tuple[Description | None, str | None] | None = None
        self.accepted: Description | None = None

    def report(self, description: Description | None, failure: str | None = None) -> None:
        if self.first is None:
            self.first = (description, failure)
            self.reported.set()

    def first_report(self, timeout: float) -> tuple[Description | None, str | None] | None:
        self.reported.wait(timeout)
        return self.first

    def decide(self, accepted: Description | None) -> None:
        """``accepted``: the description recorded in run.json; None calls the run off (the actors
        ask before every batch, so this also stops a run under way)."""
        self.accepted = accepted
        self.decided.set()

    def wait(self) -> Description | None:
        self.decided.wait()
        return self.accepted


class _Actor:
    """One model per actor; turns batch rows into manifest records (as JSON text).

    Two calls run at once (a threaded actor) and take turns on the model, so one batch is
    decoded, rendered and encoded while the other is in the model, as in the local engine.
    """

    def __init__(
        self,
        prompter: BatchPrompter | LazyPrompter,
        source: Source,
        out_root: str,
        output: OutputSpec,
        threads: int,
        torch_threads: int,
        gate: ActorHandle,
    ) -> None:
        import ray
        import torch

        # Ray sets OMP_NUM_THREADS to the actor's num_cpus (1 here); on CPU the one actor per
        # machine should use that machine's cores, as the local engine does.
        torch.set_num_threads(torch_threads)
        try:
            if isinstance(prompter, LazyPrompter):
                prompter = prompter.build()
            self.description = jsonable(prompter.describe())
        except Exception as exc:
            ray.get(gate.report.remote(None, error_message(exc)))
            raise
        ray.get(gate.report.remote(self.description))
        self.stages = Stages(source, OutputDir(out_root), prompter, output)
        self.stages.model_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="api-prompt-ray")
        self.gate = gate

    def __call__(self, rows: dict[str, Any]) -> dict[str, list[str]]:
        import ray

        accepted = ray.get(self.gate.wait.remote())
        if accepted is None:  # the driver called the run off
            return {"records": []}
        if accepted != self.description:  # told to the driver, which stops the run
            return {
                "records": [
                    json.dumps(
                        {
                            "refused": (
                                f"the model loaded on {ray.util.get_node_ip_address()} differs from the one recorded in "
                                "run.json; every node must load the same weights"
                            )
                        }
                    )
                ]
            }
        results = []
        for payload in rows["payload"]:
            named: list[tuple[Sample, str]]
            named, done = pickle.loads(payload)  # written by this run's driver (see start_ray)
            records = self.stages.process(
                [Item(sample, name) for sample, name in named], self.pool, done=frozenset(done)
            )
            results.append(json.dumps(records, ensure_ascii=False))
        return {"records": results}


class RayPipeline:
    """The pending batches of one run, on their way through the actors (see :func:`start_ray`)."""

    _END = object()

    def __init__(
        self, ray: ModuleType, dataset: Dataset, gate: ActorHandle, started: float, log_level: int
    ) -> None:
        self.ray, self.gate, self.started, self.log_level = ray, gate, started, log_level
        self.error: BaseException | None = None
        self.results: queue.Queue[
            list[ManifestRecord] | dict[str, str] | BaseException | object
        ] = queue.Queue()
        # Ray Data runs the actors only while someone iterates: a thread does, from now on, so
        # that they start and load their models while the driver prepares DIR.
        self.thread = threading.Thread(
            target=self._consume, args=(dataset,), daemon=True, name="api-prompt-ray-results"
        )
        self.thread.start()

    def _consume(self, dataset: Dataset) -> None:
        try:
            for row in dataset.iter_rows():
                self.results.put(json.loads(row["records"]))
        except BaseException as exc:  # handed to the driver's thread, which raises it
            self.error = exc
            self.results.put(exc)
        finally:
            logging.getLogger("ray.data").setLevel(self.log_level)
            self.results.put(self._END)

    def description(self) -> Description:
        """The first actor's ``describe()`` of the model it loaded (waits for it)."""
        while True:
            report = self.ray.get(self.gate.first_report.remote(0.5))
            if report is not None:
                description, failure = report
                if failure is not None or description is None:
                    raise ConfigError(failure or "the Ray actor reported no model")
                return description
            if self.error is not None:
                raise self.error

    def collect(self, job: Job, summary: Summary, bar: Progress, accepted: Description) -> None:
        """Let the actors write (those whose model is ``accepted``); append their records to the
        manifest as they come."""
        try:
            self.ray.get(self.gate.decide.remote(accepted))
            while (records := self.results.get()) is not self._END:
                if isinstance(records, BaseException):
                    raise records
                if isinstance(records, dict):
                    raise ConfigError(records["refused"])
                assert isinstance(records, list)
                job.out.append(records)
                summary.add(records)
                bar.update(len(records))
        finally:
            summary.seconds = time.perf_counter() - self.started

    def close(self) -> None:
        """Call off whatever is left (the actors' next calls write nothing) and wait for Ray Data
        to wind the run down, so that none of it outlives :func:`~api_prompt.batch.run`."""
        if self.thread.is_alive():
            self.ray.get(self.gate.decide.remote(None))
            self.thread.join(CLOSE_TIMEOUT)


def start_ray(
    job: Job,
    summary: Summary,
    prompter: BatchPrompter | LazyPrompter,
    *,
    address: str | None = None,
    num_gpus: float | None = None,
) -> RayPipeline | None:
    """Start ``job``'s pending batches on Ray, held at the gate; None when no batch is pending.

    ``prompter`` is what each actor gets: a :class:`~api_prompt.batch.job.LazyPrompter` (each
    loads its own) or a loaded Prompter (pickled to each).
    """
    ray = require_ray()
    started = time.perf_counter()
    if not ray.is_initialized():
        ray.init(
            address=address, include_dashboard=False, log_to_driver=False, configure_logging=False
        )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the run has its own progress (bar or log lines)
    context.print_on_execution_start = False
    ray_data_log = logging.getLogger("ray.data")
    log_level = ray_data_log.level
    ray_data_log.setLevel(logging.WARNING)
    pipeline = None
    try:
        pipeline = _start(ray, job, summary, prompter, num_gpus, started, log_level)
        return pipeline
    finally:
        if pipeline is None:  # else the pipeline restores it when it ends
            ray_data_log.setLevel(log_level)


def _start(
    ray: ModuleType,
    job: Job,
    summary: Summary,
    prompter: BatchPrompter | LazyPrompter,
    num_gpus: float | None,
    started: float,
    log_level: int,
) -> RayPipeline | None:
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    per_actor_gpus = num_gpus if num_gpus is not None else (1.0 if gpus >= 1 else 0.0)
    if per_actor_gpus > gpus:
        raise ConfigError(
            f"--num-gpus {per_actor_gpus:g} per actor, but the Ray cluster has {gpus:g} GPUs"
        )
    if per_actor_gpus > 0:
        actors = max(1, int(gpus // per_actor_gpus))
    else:
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        actors = max(1, len(nodes))  # on CPU one actor per machine: torch uses all its cores
    payloads = []
    for batch in job.batches(summary):
        named = [(item.sample, item.name) for item in batch]
        done = [item.name for item in batch if item.name in job.done]
        summary.skipped += len(done)
        payloads.append({"payload": pickle.dumps((named, done), protocol=pickle.HIGHEST_PROTOCOL)})
    if not payloads:
        return None
    # a thread for each call waiting at the gate, and spare ones for the driver's report and decide calls
    gate = (
        ray.remote(_Gate).options(num_cpus=0, max_concurrency=CALLS_PER_ACTOR * actors + 4).remote()
    )
    dataset = ray.data.from_items(payloads, override_num_blocks=min(len(payloads), 4 * actors))
    cpus_per_actor = max(1, int(resources.get("CPU", 1) // actors))
    threads = max(1, min(job.workers, cpus_per_actor))
    torch_threads = 1 if per_actor_gpus > 0 else cpus_per_actor
    results = dataset.map_batches(
        _Actor,
        batch_size=1,
        fn_constructor_kwargs=dict(
            prompter=prompter,
            source=job.source,
            out_root=str(job.out.root),
            output=job.output,
            threads=threads,
            torch_threads=torch_threads,
            gate=gate,
        ),
        compute=ray.data.ActorPoolStrategy(
            size=actors,
            max_concurrent_calls_per_actor=CALLS_PER_ACTOR,
            enable_true_multi_threading=True,
        ),
        num_gpus=per_actor_gpus,
        num_cpus=0 if per_actor_gpus > 0 else 1,
    )
    return RayPipeline(ray, results, gate, started, log_level)
