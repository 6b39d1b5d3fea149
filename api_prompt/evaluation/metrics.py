"""Benchmark metrics from per-sample answers, in a form the paired bootstrap can resample.

Every metric of a benchmark is a function of *sums over units*: a unit is one sample, or the
group of samples the benchmark scores together (MME's two questions about one image, MMBench's
circular variants of one question). A benchmark's table function (its record's ``table`` in
:mod:`~api_prompt.evaluation.benchmarks`, called by
:func:`~api_prompt.evaluation.benchmarks.build_table`) turns answers into a ``(n_units, k)``
array per condition and a function from column sums to the metrics, so the point estimate is
that function on the plain sums and a bootstrap resample is the same function on weighted sums.
The table functions here are those of the built-in benchmarks; they know no benchmark by name.

Metrics (fractions in [0, 1], except MME's, which are percentages as MME defines them):

==================  ==========================================================================
``pope``            ``accuracy precision recall f1 yes_ratio`` (positive class: yes)
``mme``             ``<category>/acc``, ``<category>/acc_plus`` (both questions of an image
                    right), ``perception`` and ``cognition``: the sum of ``acc + acc_plus``
                    over MME's perception categories, and over all the others
``textvqa vqav2``   ``vqa_accuracy``
``gqa mcq``         ``accuracy``; ``mcq`` adds ``circular_accuracy`` when rows share an
                    ``index`` modulo 1,000,000 (MMBench's circular variants: all must be right;
                    as in VLMEvalKit, only groups whose main row, ``index`` < 1,000,000, is
                    present count, and a group's category is its main row's)
==================  ==========================================================================

Benchmarks other than MME with a ``category`` column holding several values also get every
metric per category, named ``<category>/<metric>``.

>>> samples = [{"answer": "yes"}, {"answer": "no"}, {"answer": "yes"}]
>>> table = pope_table(None, samples, {"original": ["Yes", "No", "No"]})
>>> {k: round(v, 3) for k, v in table.point("original").items()}
{'accuracy': 0.667, 'precision': 1.0, 'recall': 0.5, 'f1': 0.667, 'yes_ratio': 0.333}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from .scoring import pope_answer, pope_label

__all__ = [
    "MME_PERCEPTION",
    "MME_COGNITION",
    "MetricTable",
    "CIRCULAR_MODULUS",
    "pope_table",
    "mean_score_table",
    "mme_table",
    "units_table",
]

MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)
#: MMBench's circular variants of one question share ``index % CIRCULAR_MODULUS``.
CIRCULAR_MODULUS = 1_000_000
# Columns looked up, in order, for the image two MME questions share.
_MME_IMAGE_KEYS = ("image_path", "question_id", "image_id")


@dataclass
class MetricTable:
    """Per-unit numbers of each condition and the function from their sums to the metrics.

    Attributes:
        units: condition -> ``(n_units, k)`` float array (the same units in every condition).
        metric: column sums ``(..., k)`` -> ``{metric name: array (...)}``.
        scores: condition -> per-sample scores (the official per-sample score, 0/1 or VQA's).
        binary: metric name -> condition -> 0/1 array: the right/wrong outcomes the metric
            averages, for metrics that are plain proportions (McNemar applies to those).
    """

    units: dict[str, np.ndarray]
    metric: Callable[[np.ndarray], dict[str, np.ndarray]]
    scores: dict[str, np.ndarray]
    binary: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def point(self, condition: str) -> dict[str, float]:
        """The metrics of one condition on all units."""
        with np.errstate(divide="ignore", invalid="ignore"):
            values = self.metric(self.units[condition].sum(axis=0))
        return {name: float(value) for name, value in values.items()}


def pope_table(
    benchmark, samples: Sequence[Mapping[str, Any]], answers: Mapping[str, Sequence[str | None]]
) -> MetricTable:
    """POPE's table: the answers are parsed once, and the columns hold what the metrics are made of."""
    label_yes = np.array([pope_label(s) == "yes" for s in samples], dtype=float)
    columns = {c: _pope_columns(values, label_yes) for c, values in answers.items()}
    scores = {c: cols["correct"] for c, cols in columns.items()}
    return units_table(
        samples,
        columns,
        scores,
        ["correct", "yes", "label", "tp", "one"],
        _pope_metrics,
        proportion="accuracy",
    )


def mean_score_table(metric: str = "accuracy", *, proportion: bool = True, circular: bool = False):
    """The table function of a benchmark whose metric is the mean per-sample score, named
    ``metric``; ``proportion``: the scores are 0/1 (McNemar applies); ``circular``: MMBench's
    circular groups (see the module docstring).

    >>> table = mean_score_table("hits")
    >>> class Toy:  # any benchmark record: scores(samples, answers) -> {condition: array}
    ...     def scores(self, samples, answers):
    ...         return {c: np.array([float(a == s["answer"]) for a, s in zip(v, samples)]) for c, v in answers.items()}
    >>> table(Toy(), [{"answer": "x"}, {"answer": "y"}], {"original": ["x", "x"]}).point("original")
    {'hits': 0.5}
    """

    def table(
        benchmark, samples: Sequence[Mapping[str, Any]], answers: Mapping[str, Sequence[str | None]]
    ) -> MetricTable:
        scores = benchmark.scores(samples, answers)
        columns = {c: {"score": scores[c], "one": np.ones(len(samples))} for c in answers}
        return units_table(
            samples,
            columns,
            scores,
            ["score", "one"],
            lambda s: {metric: s[..., 0] / s[..., 1]},
            proportion=metric if proportion else None,
            circular=circular,
        )

    return table


def mme_table(
    benchmark, samples: Sequence[Mapping[str, Any]], answers: Mapping[str, Sequence[str | None]]
) -> MetricTable:
    """MME's table: units are the images (per category); acc, acc_plus and the two totals."""
    return _mme_table(samples, answers, benchmark.scores(samples, answers))


def units_table(
    samples,
    columns,
    scores,
    names,
    finish,
    *,
    proportion: str | None = None,
    circular: bool = False,
) -> MetricTable:
    """The table of per-sample ``columns`` (condition -> name -> array) summed per unit, with
    ``finish`` (sums of ``names`` -> metrics); circular groups and categories as the module
    docstring says. ``proportion`` names the metric that averages the 0/1 ``scores``."""
    circular_groups = _circular_groups(samples) if circular else None
    groups, main = circular_groups if circular_groups is not None else (None, None)
    n_units = len(samples) if groups is None else int(groups.max()) + 1 if len(samples) else 0
    unit_of = np.arange(len(samples)) if groups is None else groups
    # VLMEvalKit scores a circular group only through its main row (index < 1e6)
    has_main = None if groups is None else np.bincount(unit_of, weights=main, minlength=n_units) > 0

    def units_of(cols: dict[str, np.ndarray]) -> np.ndarray:
        table = [np.bincount(unit_of, weights=cols[name], minlength=n_units) for name in names]
        if (
            groups is not None and has_main is not None
        ):  # circular: a group counts when every variant is right
            table += [((table[0] == table[1]) & has_main).astype(float), has_main.astype(float)]
        return np.stack(table, axis=1) if table else np.zeros((0, len(names)))

    base_finish = finish
    if groups is not None:

        def finish(sums):
            values = base_finish(sums[..., :2])
            values["circular_accuracy"] = sums[..., 2] / sums[..., 3]
            return values

    units = {c: units_of(cols) for c, cols in columns.items()}
    binary: dict[str, dict[str, np.ndarray]] = {}
    if proportion is not None:
        binary[proportion] = dict(scores)
    if groups is not None:
        binary["circular_accuracy"] = {c: u[has_main, 2] for c, u in units.items()}

    categories = _categories(samples, unit_of, n_units, main)
    if categories is None:
        return MetricTable(units, finish, scores, binary)
    labels, unit_category = categories
    k = next(iter(units.values())).shape[1] if units else 0
    sample_category = unit_category[unit_of]
    for index, label in enumerate(labels):
        mask = sample_category == index
        for name, per_condition in list(binary.items()):
            if "/" in name:
                continue
            use = mask if name == proportion else (unit_category == index)[has_main]
            binary[f"{label}/{name}"] = {c: values[use] for c, values in per_condition.items()}
    masks = np.stack([unit_category == index for index in range(len(labels))], axis=1).astype(float)
    units = {
        c: np.hstack([u] + [u * masks[:, [i]] for i in range(len(labels))])
        for c, u in units.items()
    }

    def by_category(sums):
        values = finish(sums[..., :k])
        for index, label in enumerate(labels):
            part = finish(sums[..., k * (index + 1) : k * (index + 2)])
            values.update({f"{label}/{name}": value for name, value in part.items()})
        return values

    return MetricTable(units, by_category, scores, binary)


# ------------------------------------------------------------------------------------------------


def _pope_columns(answers, label_yes) -> dict[str, np.ndarray]:
    said_yes = np.array([pope_answer(a or "") == "yes" for a in answers], dtype=float)
    return {
        "correct": (said_yes == label_yes).astype(float),
        "yes": said_yes,
        "label": label_yes,
        "tp": said_yes * label_yes,
        "one": np.ones(len(answers)),
    }


def _pope_metrics(sums: np.ndarray) -> dict[str, np.ndarray]:
    correct, yes, label, tp, one = (sums[..., i] for i in range(5))
    precision, recall = tp / yes, tp / label
    return {
        "accuracy": correct / one,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall),
        "yes_ratio": yes / one,
    }


def _circular_groups(samples) -> tuple[np.ndarray, np.ndarray] | None:
    """Unit index of each sample by ``index % 1e6`` and whether it is its group's main row
    (``index`` itself below 1e6), or None when no two samples share a unit."""
    keys, main = [], []
    for sample in samples:
        try:
            index = int(float(sample["index"]))
        except (KeyError, TypeError, ValueError):
            return None
        keys.append(index % CIRCULAR_MODULUS)
        main.append(index == keys[-1])
    if len(set(keys)) == len(keys):
        return None
    order = {key: position for position, key in enumerate(dict.fromkeys(keys))}
    return np.array([order[key] for key in keys], dtype=np.int64), np.array(main, dtype=float)


def _categories(samples, unit_of, n_units, main=None):
    """(labels, category index per unit) when the samples have two or more categories.

    A unit's category is its main row's where the unit has one (VLMEvalKit's circular groups).
    """
    values = [sample.get("category") for sample in samples]
    if any(value is None for value in values):
        return None
    labels = list(dict.fromkeys(str(value) for value in values))
    if len(labels) < 2:
        return None
    position = {label: i for i, label in enumerate(labels)}
    unit_category = np.zeros(n_units, dtype=np.int64)
    sample_category = np.array([position[str(value)] for value in values], dtype=np.int64)
    unit_category[unit_of] = sample_category
    if main is not None:
        unit_category[unit_of[main > 0]] = sample_category[main > 0]
    return labels, unit_category


def _mme_table(samples, answers, scores) -> MetricTable:
    """Units are the images (per category); MME's acc, acc_plus and the two totals."""
    labels: list[str] = []
    unit_keys: dict[tuple[str, str], int] = {}
    unit_of = np.zeros(len(samples), dtype=np.int64)
    for i, sample in enumerate(samples):
        category = sample.get("category")
        if category is None:
            raise ConfigError("an MME sample needs its 'category' (existence, count, OCR, ...)")
        image = next((sample[key] for key in _MME_IMAGE_KEYS if sample.get(key) is not None), None)
        if image is None:
            raise ConfigError(
                "an MME sample needs the image its question pair shares: a column "
                + ", ".join(repr(key) for key in _MME_IMAGE_KEYS)
            )
        category = str(category)
        if category not in labels:
            labels.append(category)
        unit_of[i] = unit_keys.setdefault((category, str(image)), len(unit_keys))
    n_units = len(unit_keys)
    unit_category = np.zeros(n_units, dtype=np.int64)
    for (category, _), unit in unit_keys.items():
        unit_category[unit] = labels.index(category)
    ones = np.ones(len(samples))
    count = np.bincount(unit_of, weights=ones, minlength=n_units)

    units, binary = {}, {}
    for condition, values in scores.items():
        right = np.bincount(unit_of, weights=values, minlength=n_units)
        both = (right == count).astype(float)
        blocks = []
        for index in range(len(labels)):
            mask = (unit_category == index).astype(float)
            blocks += [right * mask, count * mask, both * mask, mask]
        units[condition] = np.stack(blocks, axis=1)
    for index, label in enumerate(labels):
        binary[f"{label}/acc"] = {c: v[unit_category[unit_of] == index] for c, v in scores.items()}
        binary[f"{label}/acc_plus"] = {
            c: u[unit_category == index, 4 * index + 2] for c, u in units.items()
        }

    def finish(sums):
        values = {}
        perception = cognition = 0.0
        for index, label in enumerate(labels):
            right, asked, both, images = (sums[..., 4 * index + j] for j in range(4))
            acc, acc_plus = 100 * right / asked, 100 * both / images
            values[f"{label}/acc"], values[f"{label}/acc_plus"] = acc, acc_plus
            if label in MME_PERCEPTION:
                perception = perception + acc + acc_plus
            else:  # lmms-eval counts every category that is not perception as cognition
                cognition = cognition + acc + acc_plus
        if any(label in MME_PERCEPTION for label in labels):
            values["perception"] = perception + 0 * sums[..., 0]
        if any(label not in MME_PERCEPTION for label in labels):
            values["cognition"] = cognition + 0 * sums[..., 0]
        return values

    return MetricTable(units, finish, scores, binary)
