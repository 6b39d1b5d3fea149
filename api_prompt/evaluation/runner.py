"""``evaluate(...)``: ask a target on every benchmark sample, with and without attention prompting.

Long because: the loop, its per-batch steps (prompt, answer, score, grade) and the summary all
work on the same prediction records; the run folder itself is :mod:`api_prompt.runs`.

For each sample the target is asked once per condition (``original``: the image as it is;
``api``: the attention-prompted image, in the Prompter's style; ``overlay``, ``crop``, ``blur``,
``box``: the image in that prompt style, all styles made from the same map of the sample), the
answer is scored as the benchmark's official
evaluation scores it, and one line per sample and condition is appended to
``DIR/predictions.jsonl`` (whole lines in one write, fsynced after every batch, so a killed
run loses at most the batch in flight; :mod:`api_prompt.runs`). A second run with the same parameters continues where the first stopped; the
summary is computed from the predictions file alone, so a resumed run's summary equals an
uninterrupted one's.

>>> from api_prompt.evaluation import evaluate                                     # doctest: +SKIP
>>> summary = evaluate("pope.tsv", "pope", "openai:gpt-4o-mini", "runs/pope")     # doctest: +SKIP
>>> summary["delta"]["accuracy"]                                                   # doctest: +SKIP
{'value': 0.012, 'ci95': [0.004, 0.02], 'p_value': 0.003}
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..batch.sources import Sample
from ..errors import ConfigError
from ..runs import RunFolder, error_message, write_atomic
from ..targets.wrap import prompt_images
from .benchmarks import BENCHMARKS, get_benchmark, score
from .data import EvalSample, auxiliary_query, read_samples, target_prompt
from .judge import CACHE, JudgeCache, JudgeJob, create_judge, grade_all
from .judged import judge_variation
from .report import summarize, write_chart, write_report
from .stats import DEFAULT_RESAMPLES, DEFAULT_SEED

__all__ = [
    "evaluate",
    "check_data",
    "check_conditions",
    "CONDITIONS",
    "PREDICTIONS",
    "SUMMARY",
    "REPORT",
    "CHART",
    "RUN",
]

CONDITIONS = ("original", "api")


def condition_names() -> tuple[str, ...]:
    """Every condition ``evaluate`` takes: ``original``, ``api`` and each prompt style."""
    from ..styles import STYLES

    return ("original", "api", *STYLES)


PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
REPORT = "report.md"
CHART = "chart.png"
RUN = "eval_run.json"
_OUTPUTS = (PREDICTIONS, SUMMARY, REPORT, CHART, RUN)


def evaluate(
    data: Any,
    benchmark: str,
    target: Any,
    out: str | os.PathLike,
    *,
    conditions: Sequence[str] = CONDITIONS,
    prompter: Any = None,
    limit: int | None = None,
    batch_size: int = 16,
    generation: Mapping[str, Any] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    retry_errors: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    target_name: str | None = None,
    checked: tuple[Any, list[EvalSample]] | None = None,
    judge: Any = None,
    judge_repeats: int = 1,
    bare_question: bool = False,
    **data_options: Any,
) -> dict[str, Any]:
    """Evaluate ``target`` on ``benchmark`` with each condition; returns the summary.

    Args:
        data: a VLMEvalKit TSV, a JSON Lines / CSV file, a parquet file or folder, a saved
            ``datasets`` folder (the lmms-eval layout), or a ``datasets.Dataset``.
        benchmark: one of :data:`~api_prompt.evaluation.BENCHMARKS`.
        target: what :func:`api_prompt.targets.as_target` accepts: ``"hf:..."``,
            ``"openai:..."``, ``"clip-zeroshot:..."``, a target object or a function
            ``(image, question) -> str``.
        out: the output folder (created; an earlier run with the same parameters is resumed).
        conditions: ``original``, ``api`` (the Prompter's own style, the paper's overlay by
            default) and any prompt style by name (:data:`api_prompt.styles.STYLES`: ``overlay``,
            ``crop``, ``blur``, ``box``); every styled condition shows the same map of a sample.
        prompter: the :class:`~api_prompt.Prompter` making the prompted images (default:
            ``Prompter()``, the paper's CLIP), or, for ``api`` alone, any function
            ``(image, query) -> image``.
        limit: only the first ``limit`` samples.
        batch_size: samples per prompting and target call.
        generation: options for every target call (e.g. ``{"max_new_tokens": 32}``).
        n_resamples, seed: the paired bootstrap's settings.
        retry_errors: ask again for samples whose earlier call failed.
        overwrite: discard an earlier run's outputs in ``out`` instead of resuming.
        progress: called as ``progress(done, total)`` after every batch.
        target_name: how the summary names the target, and what identifies it when a run is
            resumed (default: the spec string, else the target's own description).
        checked: what :func:`check_data` returned for the same ``data``, ``benchmark``,
            ``limit`` and ``data_options``, so the data is not read and checked again.
        judge: for the judge-scored benchmarks (``mmvet``, ``llava-bench``): ``"openai:MODEL"``
            or an :class:`~api_prompt.evaluation.judge.OpenAIJudge`. Its replies are cached in
            ``out/judge_cache.jsonl``; per-sample grades go to the ``judge`` field of
            predictions.jsonl and the tokens it used to the summary's ``judge`` entry.
        judge_repeats: grade every answer this many times (independent judge runs); the
            metrics are the first run's, and the summary reports the spread over the runs.
        bare_question: ask the target the question exactly as the data has it, without the
            benchmark's answer-format instruction or options (for a model trained without
            them); recorded in the run's parameters, so a resume must use the same value.
        **data_options: ``id_column``, ``image_column``, ``question_column``, ``image_root``,
            ``split``, ``format`` (see :func:`api_prompt.batch.sources.open_source`).
    """
    from ..targets import as_target

    judge = check_judge(benchmark, judge, judge_repeats)
    conditions = check_conditions(conditions)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    if checked is None:
        checked = check_data(data, benchmark, limit=limit, **data_options)
    source, samples = checked

    answerer = as_target(target)
    prompted = [c for c in conditions if c != "original"]
    if prompted and prompter is None:
        from ..prompter import Prompter

        prompter = Prompter()
    styled = [c for c in prompted if c != "api"]
    if styled and not callable(getattr(prompter, "style_named", None)):
        raise ConfigError(
            f"condition {styled[0]!r} needs a Prompter (a prompt style is drawn from "
            "its map); a plain function only makes the 'api' images"
        )
    name = target_name or (target if isinstance(target, str) else None)
    target_info = {"spec": name} if name else _describe(answerer)
    settings: dict[str, Any] = {
        "conditions": list(conditions),
        "prompter": _describe(prompter) if prompted else None,
        "generation": dict(generation or {}),
        "data": {**source.describe(), "samples": len(samples), "limit": limit},
    }
    if styled:  # each style's options, so a resume with other ones is refused
        settings["styles"] = {c: prompter.style_named(c).describe() for c in styled}
    if judge is not None:
        settings["judge"] = {**judge.describe(), "repeats": judge_repeats}
    if bare_question:  # recorded only when set: earlier runs' parameters stay as they were
        settings["bare_question"] = True
    parameters = json.loads(
        json.dumps(
            {"benchmark": benchmark, "target": target_info, "settings": settings}, default=str
        )
    )

    run = EvalFolder(Path(out))
    run.prepare(parameters, overwrite=overwrite)
    try:
        done = run.done(retry_errors)
        # answers whose judging failed are graded again without asking the target again
        graded_later = (
            {
                key: record["answer"]
                for key, record in run.latest_predictions().items()
                if key not in done
                and record.get("answer") is not None
                and str(record.get("error") or "").startswith("judge:")
            }
            if retry_errors and judge is not None
            else {}
        )
        grader = (
            _Grader(benchmark, judge, judge_repeats, run.root / CACHE)
            if judge is not None
            else None
        )
        pending = [s for s in samples if any((s.id, c) not in done for c in conditions)]
        total, finished = len(samples), len(samples) - len(pending)
        chunks = [
            pending[start : start + batch_size] for start in range(0, len(pending), batch_size)
        ]
        # The next chunk's images are decoded in a thread while the models work on this one.
        with ThreadPoolExecutor(max_workers=1) as decoder:
            upcoming = decoder.submit(_decode, chunks[0], source) if chunks else None
            for position, chunk in enumerate(chunks):
                assert upcoming is not None  # submitted above for every chunk
                images = upcoming.result()
                if position + 1 < len(chunks):
                    upcoming = decoder.submit(_decode, chunks[position + 1], source)
                records = _ask_chunk(
                    benchmark,
                    chunk,
                    images,
                    conditions,
                    done,
                    answerer,
                    prompter,
                    dict(generation or {}),
                    graded_later,
                    bare=bare_question,
                )
                if grader is not None:
                    grader.grade(records, {s.id: s for s in chunk})
                run.append(records)
                finished += len(chunk)
                if progress is not None:
                    progress(finished, total)
        summary = _summary(
            benchmark, samples, conditions, run.latest_predictions(), parameters, n_resamples, seed
        )
        run.write_outputs(summary)
    finally:
        run.close()
    return summary


# ------------------------------------------------------------------------------------------------


def check_judge(benchmark: str, judge: Any, repeats: int = 1):
    """The judge object for ``benchmark`` (None for the benchmarks scored by rule); ConfigError
    for an unknown benchmark, a judged one without a judge, or a judge where none is used."""
    if get_benchmark(benchmark).judge is None:
        if judge is not None:
            judged = [name for name, record in BENCHMARKS.items() if record.judge is not None]
            raise ConfigError(
                f"--benchmark {benchmark} is scored by rule; --judge is for {' and '.join(judged)}"
            )
        return None
    if judge is None:
        raise ConfigError(
            f"--benchmark {benchmark} is scored by a judge model: pass --judge openai:MODEL "
            "(e.g. openai:gpt-4o-2024-11-20, lmms-eval's default)"
        )
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"judge_repeats must be a positive integer, got {repeats!r}")
    return create_judge(judge) if isinstance(judge, str) else judge


def check_conditions(conditions: Sequence[str] | str) -> tuple[str, ...]:
    """The chosen conditions (a sequence, or one comma-separated string) in the order of
    :func:`condition_names` (``original`` first), without repeats; ConfigError for an unknown
    one or none."""
    if isinstance(conditions, str):
        conditions = [c.strip() for c in conditions.split(",") if c.strip()]
    conditions = tuple(dict.fromkeys(str(c).strip().lower() for c in conditions))
    known = condition_names()
    unknown = [c for c in conditions if c not in known]
    if unknown or not conditions:
        raise ConfigError(
            f"unknown condition {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from: {', '.join(known)}"
        )
    return tuple(c for c in known if c in conditions)


def check_data(data: Any, benchmark: str, *, limit: int | None = None, **data_options: Any):
    """``(source, samples)`` of ``data``, refused (ConfigError) when it is empty or lacks the
    benchmark's ground truth. Cheap (no image is decoded): run it before loading models, and
    pass what it returns to :func:`evaluate` as ``checked``."""
    check = get_benchmark(benchmark).check
    source, samples = read_samples(
        data, limit=limit, **get_benchmark(benchmark).reader_options(data_options)
    )
    if not samples:
        raise ConfigError(f"{source.name} holds no samples")
    for sample in samples:
        if sample.error is None:
            try:
                check(sample.fields)
            except ConfigError as exc:
                raise ConfigError(f"sample {sample.id!r}: {exc}") from None
    return source, samples


def _describe(obj: Any) -> dict[str, Any]:
    describe = getattr(obj, "describe", None)
    return (
        dict(describe())
        if callable(describe)
        else {"callable": getattr(obj, "__qualname__", type(obj).__name__)}
    )


def _decode(chunk: Sequence[EvalSample], source) -> dict[str, Any]:
    """The decoded images of ``chunk`` by sample id; a bad image marks its sample's error."""
    images: dict[str, Any] = {}
    for sample in chunk:
        if sample.error is not None:
            continue
        try:
            images[sample.id] = source.load_image(_raw_sample(sample))
        except Exception as exc:
            sample.error = f"image: {error_message(exc)}"
    return images


def _ask_chunk(
    benchmark,
    chunk,
    images,
    conditions,
    done,
    answerer,
    prompter,
    generation,
    answered=None,
    bare=False,
):
    """Prediction records for every (sample, condition) of ``chunk`` not done yet; ``answered``
    holds answers that are kept (only their judging is to be done again); ``bare``: the target
    is asked the bare question."""
    records: list[dict[str, Any]] = []
    answered = answered or {}
    maps: dict[str, Any] = {}  # one map per sample, shared by every styled condition
    for condition in conditions:
        todo = [s for s in chunk if (s.id, condition) not in done]
        records += [
            _record(benchmark, s, condition, answered[(s.id, condition)], None)
            for s in todo
            if (s.id, condition) in answered
        ]
        todo = [s for s in todo if (s.id, condition) not in answered]
        ready = [s for s in todo if s.id in images]
        for sample in todo:
            if sample.id not in images:
                records.append(
                    _record(benchmark, sample, condition, None, sample.error or "image missing")
                )
        if not ready:
            continue
        shown = [images[s.id] for s in ready]
        failures: dict[str, str] = {}
        if condition != "original":
            shown, failures = _prompt(prompter, ready, shown, benchmark, condition, maps)
        asked = [(s, image) for s, image in zip(ready, shown) if s.id not in failures]
        answers, answer_failures = _answer(
            answerer, [s for s, _ in asked], [i for _, i in asked], benchmark, generation, bare
        )
        failures.update(answer_failures)
        for sample in ready:
            error = failures.get(sample.id)
            records.append(_record(benchmark, sample, condition, answers.get(sample.id), error))
    return records


def _raw_sample(sample: EvalSample) -> Sample:
    return Sample(sample.index, sample.id, sample.image, sample.question)


def _prompt(prompter, samples, images, benchmark, condition="api", maps=None):
    """What the target sees under ``condition`` (one image, or a list for a style such as
    ``crop``), and the failures by sample id. A Prompter's maps are computed once per sample and
    kept in ``maps`` for the other conditions (one batch call; one call per sample when the
    batch fails); a plain function prompter makes the ``api`` images itself."""
    queries = [auxiliary_query(benchmark, s) for s in samples]
    if not callable(getattr(prompter, "style_named", None)):
        return _each(
            samples,
            lambda batch: prompt_images(
                prompter, [images[i] for i in batch], [queries[i] for i in batch]
            ),
        )
    maps = {} if maps is None else maps
    missing = [i for i, s in enumerate(samples) if s.id not in maps]
    if missing:
        made, failed = _each(
            [samples[i] for i in missing],
            lambda batch: prompter.attribute(
                [images[missing[i]] for i in batch], [queries[missing[i]] for i in batch]
            ),
        )
        maps.update({samples[i].id: amap for i, amap in zip(missing, made) if amap is not None})
        maps.update(
            {samples[i].id: failed[samples[i].id] for i in missing if samples[i].id in failed}
        )
    style = prompter.style if condition == "api" else prompter.style_named(condition)
    shown, failures = [], {}
    for sample, image in zip(samples, images):
        amap = maps[sample.id]
        if isinstance(amap, str):
            failures[sample.id] = amap
            shown.append(None)
            continue
        try:
            made = style.apply(image, amap)
            shown.append(made[0] if len(made) == 1 else made)
        except Exception as exc:
            failures[sample.id] = f"prompting: {error_message(exc)}"
            shown.append(None)
    return shown, failures


def _each(samples, make):
    """``make(list of positions)`` on the whole batch, or position by position when the batch
    fails: (one result per sample, None where it failed; failures by sample id)."""
    try:
        return make(list(range(len(samples)))), {}
    except Exception:
        pass
    results, failures = [], {}
    for position, sample in enumerate(samples):
        try:
            results.append(make([position])[0])
        except Exception as exc:
            failures[sample.id] = f"prompting: {error_message(exc)}"
            results.append(None)
    return results, failures


def _answer(answerer, samples, images, benchmark, generation, bare=False):
    """Answers by sample id (one batch call; one call per sample when the batch fails)."""
    if not samples:
        return {}, {}
    questions = [target_prompt(benchmark, s, bare=bare) for s in samples]
    try:
        answers = answerer(images, questions, **generation)
        if len(answers) != len(samples):
            raise ConfigError(
                f"the target returned {len(answers)} answers for {len(samples)} questions"
            )
        return {s.id: _text(a) for s, a in zip(samples, answers)}, {}
    except Exception as exc:
        if len(samples) == 1:
            return {}, {samples[0].id: f"target: {error_message(exc)}"}
    answers, failures = {}, {}
    for sample, image, question in zip(samples, images, questions):
        try:
            answers[sample.id] = _text(answerer([image], [question], **generation)[0])
        except Exception as exc:
            failures[sample.id] = f"target: {error_message(exc)}"
    return answers, failures


def _record(benchmark, sample, condition, answer, error):
    judged = get_benchmark(benchmark).judge is not None
    value = None if error is not None or judged else score(benchmark, answer, sample.fields)
    return {
        "id": sample.id,
        "condition": condition,
        "answer": answer,
        "score": value,
        "error": error,
        "index": sample.index,
    }


def _text(answer) -> str:
    return "" if answer is None else str(answer)


def _summary(benchmark, samples, conditions, latest, parameters, n_resamples, seed):
    answers = {c: [] for c in conditions}
    errors = {c: [] for c in conditions}
    for sample in samples:
        for condition in conditions:
            record = latest.get((sample.id, condition))
            if record is None:  # only when the run was stopped before finishing
                raise ConfigError(f"no prediction for sample {sample.id!r} ({condition})")
            answers[condition].append(record.get("answer"))
            errors[condition].append(record.get("error"))
    judge = None
    if (
        get_benchmark(benchmark).judge is not None
    ):  # the metrics are the judge's grades, not the answers
        records = [[latest[(s.id, c)] for s in samples] for c in conditions]
        graded = [all(r["error"] is None for r in column) for column in zip(*records)]
        kept = [s.fields for s, ok in zip(samples, graded) if ok]
        repeats = parameters["settings"]["judge"]["repeats"]
        grades = [
            {
                c: [r["judge"]["grades"][repeat] for r, ok in zip(column, graded) if ok]
                for c, column in zip(conditions, records)
            }
            for repeat in range(repeats)
        ]
        answers = {
            c: [
                r["judge"]["grades"][0] if r.get("judge") and r["error"] is None else None
                for r in column
            ]
            for c, column in zip(conditions, records)
        }
        judge = {
            **parameters["settings"]["judge"],
            **_tokens(r for column in records for r in column),
        }
        if repeats > 1:
            judge["variation"] = judge_variation(
                get_benchmark(benchmark).judge_record(), kept, grades
            )
    return summarize(
        benchmark,
        [s.fields for s in samples],
        answers,
        errors,
        target=parameters["target"],
        settings=parameters["settings"],
        n_resamples=n_resamples,
        seed=seed,
        judge=judge,
    )


def _tokens(records) -> dict[str, int]:
    """What the judge calls behind the final grades cost (cached replies count once, as paid)."""
    totals = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for record in records:
        for name in totals:
            totals[name] += int((record.get("judge") or {}).get(name) or 0)
    totals["total_tokens"] = totals["prompt_tokens"] + totals["completion_tokens"]
    return totals


class _Grader:
    """Grades prediction records with the judge (every repeat), filling ``judge`` and ``score``;
    a judge that cannot be reached makes the record's error."""

    def __init__(self, benchmark: str, judge, repeats: int, cache_path: Path) -> None:
        self.benchmark, self.record = benchmark, get_benchmark(benchmark).judge_record()
        self.judge, self.repeats = judge, repeats
        self.cache = JudgeCache(cache_path)

    def grade(self, records: list[dict[str, Any]], samples: Mapping[str, EvalSample]) -> None:
        todo = [r for r in records if r["error"] is None]
        jobs = [
            JudgeJob(
                (r["id"], r["condition"], repeat),
                self.record.prompt(samples[r["id"]].fields, r["answer"] or ""),
                self.record.max_tokens,
                self.record.rule,
            )
            for r in todo
            for repeat in range(self.repeats)
        ]
        results = grade_all(self.judge, jobs, self.cache)
        for position, record in enumerate(todo):
            mine = results[position * self.repeats : (position + 1) * self.repeats]
            failed = next((result.error for result in mine if result.error), None)
            record["judge"] = {
                "grades": [result.grade for result in mine],
                "replies": [result.replies for result in mine],
                "calls": sum(result.calls for result in mine),
                "prompt_tokens": sum(result.prompt_tokens for result in mine),
                "completion_tokens": sum(result.completion_tokens for result in mine),
                "model": next((result.model for result in mine if result.model), None),
            }
            if failed:
                record["error"] = failed
            else:
                record["score"] = self.record.score(mine[0].grade)


# ------------------------------------------------------------------------------------------------
# The output folder


class EvalFolder(RunFolder):
    """``DIR`` of an evaluation: ``eval_run.json`` (the parameters), the append-only
    ``predictions.jsonl`` and the final outputs; a :class:`~api_prompt.runs.RunFolder`, so lock,
    parameter check, repair and resume follow the batch run's rules. ``--overwrite`` keeps
    ``judge_cache.jsonl`` (replies already paid for)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, run_file=RUN, log=PREDICTIONS, what="evaluation", outputs=_OUTPUTS)
        self.predictions = self.log

    def prepare(self, parameters: dict[str, Any], *, overwrite: bool = False) -> bool:
        resumed = super().prepare(parameters, overwrite=overwrite)
        if not resumed:
            self.write_run({"parameters": parameters})
        return resumed

    def latest_predictions(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The last record of every (id, condition)."""
        return self.latest(lambda record: (str(record["id"]), record["condition"]))

    def done(self, retry_errors: bool) -> set[tuple[str, str]]:
        return {
            key
            for key, record in self.latest_predictions().items()
            if not (retry_errors and record.get("error") is not None)
        }

    def write_outputs(self, summary: dict[str, Any]) -> None:
        write_atomic(self.root / SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())
        chart = CHART if write_chart(summary, self.root / CHART) else None
        write_report(summary, self.root / REPORT, chart=chart)
