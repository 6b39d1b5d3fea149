"""MM-Vet and LLaVA-Bench against lmms-eval 0.7's own code: the same requests reach the same
scripted judge, and the metrics equal lmms-eval's aggregation functions on the same grades."""

from __future__ import annotations

import base64
import csv
import importlib
import io
import json
import random
import threading
from pathlib import Path

import pytest
from PIL import Image

from api_prompt.evaluation import evaluate
from api_prompt.evaluation.judge import JudgeCache, OpenAIJudge, chat_request
from api_prompt.evaluation.judged import (
    JUDGED,
    MMVET_CAPABILITIES,
    llava_bench_prompt,
    llava_bench_table,
    mmvet_prompt,
    mmvet_table,
)
from scripted_http import RawServer, completion, respond

MODEL = "gpt-4o-2024-11-20"


# -- a scripted judge ----------------------------------------------------------------------------


class ScriptedJudge:
    """Replies to each sample's judge requests from its own queue (found by a marker in the
    prompt; the last reply repeats); other requests (the target's) get ``answers[marker]``."""

    def __init__(self, replies: dict[str, list[str]], answers: dict[str, str] | None = None):
        self.replies, self.answers = replies, answers or {}
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.queues = {marker: list(texts) for marker, texts in self.replies.items()}
        self.bodies: dict[str, list[dict]] = {marker: [] for marker in self.replies}

    def __call__(self, conn, request) -> None:
        body = request["json"]
        text = json.dumps(body["messages"])
        marker = next(m for m in self.replies if m in text)
        if body["model"] != MODEL:  # the target
            return respond(200, completion(self.answers[marker]))(conn, request)
        with self.lock:
            self.bodies[marker].append(body)
            queue = self.queues[marker]
            reply = queue.pop(0) if len(queue) > 1 else queue[0]
        respond(
            200,
            {**completion(reply), "usage": {"prompt_tokens": len(text), "completion_tokens": 3}},
        )(conn, request)


def _png_b64(colour) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _tsv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


#: lmms-eval's column -> VLMEvalKit's column, where they differ
_VLMEVALKIT_NAMES = {"capability": "category", "gpt_answer": "gpt4_ans"}


def _write(layout: str, docs: list[dict], folder: Path) -> tuple[Path, list[str]]:
    """``docs`` (lmms-eval's documents) as data in ``layout`` with an image each, and the ids the
    evaluation will give them: lmms-eval's dataset folder (``question_id``) or a VLMEvalKit TSV
    (``index``, base64 images, VLMEvalKit's column names)."""
    if layout == "lmms-eval":
        datasets = pytest.importorskip("datasets")
        table = {key: [d[key] for d in docs] for key in docs[0]}
        table["image"] = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(len(docs))]
        datasets.Dataset.from_dict(table).cast_column("image", datasets.Image()).save_to_disk(
            str(folder / "data")
        )
        return folder / "data", [str(d["question_id"]) for d in docs]
    columns = [key for key in docs[0] if key != "question_id"]
    header = ["index", "image"] + [_VLMEVALKIT_NAMES.get(key, key) for key in columns]
    with open(
        folder / "data.tsv", "w", newline="", encoding="utf-8"
    ) as handle:  # as pandas writes it
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(header)
        writer.writerows(
            [i, _png_b64((i, 0, 0))] + [d[key] for key in columns] for i, d in enumerate(docs)
        )
    return folder / "data.tsv", [str(i) for i in range(len(docs))]


@pytest.fixture(scope="module")
def lmms_tasks():
    """lmms-eval's own task modules (imported once: the import takes seconds). MM-Vet's builds its
    OpenAI client at import, which needs a key; it is pointed at the scripted judge in each test."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", "sk-test")
        patch.setenv("OPENAI_API_URL", "http://127.0.0.1:9/v1")
        mmvet = importlib.import_module("lmms_eval.tasks.mmvet.utils")
        llava = importlib.import_module("lmms_eval.tasks.llava-in-the-wild.utils")
    return mmvet, llava


def _point_lmms_at(monkeypatch, tasks, server) -> None:
    """lmms-eval's judge clients, built as at import, but talking to ``server``."""
    from lmms_eval.llm_judge import ServerConfig, get_server

    mmvet, llava = tasks
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_API_URL", server.base_url)
    monkeypatch.setattr(
        mmvet,
        "server",
        get_server("openai", ServerConfig(model_name=MODEL, temperature=0.0, max_tokens=128)),
    )
    monkeypatch.setattr(mmvet, "MODEL_VERSION", MODEL)
    monkeypatch.setattr(mmvet, "time", type("NoSleep", (), {"sleep": staticmethod(lambda s: None)}))
    monkeypatch.setattr(llava, "MODEL_VERSION", MODEL)
    monkeypatch.setattr(llava, "_pipeline", None)


# -- MM-Vet ---------------------------------------------------------------------------------------

# (capabilities, prediction, the judge's replies in order): plain grades, a grade followed by
# words, unparsable replies (retried at higher temperatures, then 0), a grade outside [0, 1]
# (asked again), empty replies (asked again, three times, then 0), spaces around the grade.
MMVET_CASES = [
    ("rec", "A red bus.", ["0.7"]),
    ("ocr,math", "It says 42", ["0.6 because it reads one number"]),
    ("rec,know", "Paris", ["1.0\nThe answer is right", "ignored", "0.9"]),
    ("rec,spat,gen,ocr", "No idea", ["banana"]),
    ("spat,ocr", "left", ["1.5", "0.3"]),
    ("ocr", "12:30", ["", "", "0.4"]),
    ("gen,rec", "A poem", ["", "", ""]),
    ("rec,ocr,know", "Einstein", ["  0.2  "]),
    ("math,ocr,spat", "x = -1 or x = -5", ["-0.1", "1"]),
    ("rec,gen,ocr,know", "hmm", ["correctness: 0.5", "0.5", "0.8"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["vlmevalkit", "lmms-eval"])
def test_mmvet_requests_and_metrics_equal_lmms_eval(layout, tmp_path, monkeypatch, lmms_tasks):
    mmvet_utils, _ = lmms_tasks
    markers = [f"<<mmvet {i}>>" for i in range(len(MMVET_CASES))]
    docs = [
        {
            "question_id": f"v1_{i}",
            "question": f"{marker} What is shown <here>?",
            "answer": "red<AND>bus" if i % 2 else "42<OR>forty-two",
            "capability": caps,
        }
        for i, (marker, (caps, _, _)) in enumerate(zip(markers, MMVET_CASES))
    ]
    judge_script = ScriptedJudge(
        {m: replies for m, (_, _, replies) in zip(markers, MMVET_CASES)},
        {m: pred for m, (_, pred, _) in zip(markers, MMVET_CASES)},
    )
    with RawServer(default=judge_script) as server:
        _point_lmms_at(monkeypatch, lmms_tasks, server)
        official = [
            mmvet_utils.mmvet_process_results(doc, [pred])["gpt_eval_score"]
            for doc, (_, pred, _) in zip(docs, MMVET_CASES)
        ]
        official_bodies = judge_script.bodies
        judge_script.reset()

        # the same samples as VLMEvalKit's MMVet.tsv or lmms-eval's dataset holds them
        data, ids = _write(layout, docs, tmp_path)
        judge = OpenAIJudge(MODEL, base_url=server.base_url, api_key="sk-test")
        summary = evaluate(
            data,
            "mmvet",
            _openai_target(server),
            tmp_path / "out",
            conditions="original",
            judge=judge,
        )
    # byte for byte: every request, in order, for every sample
    for marker in markers:
        ours, theirs = judge_script.bodies[marker], official_bodies[marker]
        assert [b["messages"][0]["content"] for b in ours] == [
            b["messages"][0]["content"] for b in theirs
        ]
        assert ours == theirs, marker
    assert [len(official_bodies[m]) for m in markers] == [1, 1, 3, 8, 2, 3, 3, 1, 2, 3]

    lines = [
        json.loads(line)
        for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    ]
    by_id = {line["id"]: line for line in lines}
    assert [by_id[i]["score"] for i in ids] == [r["score"] for r in official]
    assert (
        by_id[ids[3]]["judge"]["calls"] == 8
        and by_id[ids[3]]["judge"]["replies"][0][-1] == "banana"
    )

    # the metrics equal lmms-eval's aggregation (overall returned, capabilities logged to 2 places)
    logged = _lmms_log(lambda: mmvet_utils.mmvet_aggregate_results(official))
    metrics = summary["conditions"]["original"]["metrics"]
    assert metrics["score"] == pytest.approx(logged["overall"], abs=1e-9)
    for cap in MMVET_CAPABILITIES:
        assert f"{metrics[f'{cap}/score']:.2f}" == logged[cap]
    assert summary["judge"]["calls"] == sum(len(b) for b in official_bodies.values())
    assert summary["judge"]["prompt_tokens"] > 0 and summary["judge"]["judge_model"] == MODEL


def _openai_target(server):
    from api_prompt.targets import create_target

    return create_target("openai:target-model", base_url=server.base_url, api_key="sk-test")


def _lmms_log(run) -> dict[str, str | float]:
    """lmms-eval's MM-Vet aggregation: the overall it returns and the per-capability lines it logs."""
    from loguru import logger

    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(message.record["message"]), level="INFO")
    try:
        overall = run()
    finally:
        logger.remove(sink)
    found: dict[str, str | float] = {"overall": overall}
    for message in messages:
        if message.startswith("Score for "):
            name, value = message[len("Score for ") :].split(": ")
            found.setdefault(name, value)  # capabilities first; "rec", "ocr" are details too
    return found


def test_mmvet_aggregation_equals_lmms_eval_on_random_grades(lmms_tasks):
    mmvet_utils, _ = lmms_tasks
    rng = random.Random(7)
    for trial in range(20):
        n = rng.randint(1, 120)
        caps = [",".join(rng.sample(MMVET_CAPABILITIES, rng.randint(1, 4))) for _ in range(n)]
        grades = [
            rng.choice([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]) for _ in range(n)
        ]
        results = [{"score": g, "capabilities": c} for g, c in zip(grades, caps)]
        logged = _lmms_log(lambda results=results: mmvet_utils.mmvet_aggregate_results(results))
        point = mmvet_table([{"capability": c} for c in caps], {"x": grades}).point("x")
        assert point["score"] == pytest.approx(logged["overall"], abs=1e-9)
        for cap in MMVET_CAPABILITIES:
            shown = f"{point[f'{cap}/score']:.2f}" if f"{cap}/score" in point else "0.00"
            assert shown == logged[cap], (trial, cap)


# -- LLaVA-Bench ----------------------------------------------------------------------------------

# (category, prediction, the judge's review): the two scores on the first line in the forms
# judges write them, and reviews lmms-eval reads as [-1, -1] (kept in the means).
LLAVA_CASES = [
    ("conv", "A cat on a mat.", "8 7\nAssistant 1 is more detailed."),
    ("conv", "Two dogs.", "7, 9\nAssistant 2 is better."),
    ("detail", "A long description.", "Assistant 1: 6; Assistant 2: 8"),
    ("detail", "Blue sky.", "I cannot rate these answers."),
    ("complex", "Because of rain.", "10 10"),
    ("complex", "It is a joke.", "7.5 8.5\nClose."),
    ("conv", "Nothing.", "9 2"),
    ("detail", "A bridge at night.", "-3 4"),
]


def _llava_docs(markers):
    return [
        {
            "question_id": i,
            "question": f"{marker} What is happening?",
            "category": cat,
            "caption": f"A scene {i}.\nSecond sentence.",
            "gpt_answer": f"Reference answer {i}.",
            "image_id": f"{i:03d}.jpg",
        }
        for i, (marker, (cat, _, _)) in enumerate(zip(markers, LLAVA_CASES))
    ]


@pytest.mark.parametrize("layout", ["lmms-eval", "vlmevalkit"])
def test_llava_bench_requests_and_metrics_equal_lmms_eval(
    layout, tmp_path, monkeypatch, lmms_tasks
):
    _, llava_utils = lmms_tasks
    markers = [f"<<llava {i}>>" for i in range(len(LLAVA_CASES))]
    docs = _llava_docs(markers)
    judge_script = ScriptedJudge(
        {m: [review] for m, (_, _, review) in zip(markers, LLAVA_CASES)},
        {m: pred for m, (_, pred, _) in zip(markers, LLAVA_CASES)},
    )
    with RawServer(default=judge_script) as server:
        _point_lmms_at(monkeypatch, lmms_tasks, server)
        outputs = [
            llava_utils.llava_process_results(doc, [pred])
            for doc, (_, pred, _) in zip(docs, LLAVA_CASES)
        ]
        official_bodies = judge_script.bodies
        judge_script.reset()

        # the same samples in lmms-eval's dataset layout or as VLMEvalKit's LLaVABench.tsv
        data, ids = _write(layout, docs, tmp_path)
        judge = OpenAIJudge(MODEL, base_url=server.base_url, api_key="sk-test")
        summary = evaluate(
            data,
            "llava-bench",
            _openai_target(server),
            tmp_path / "out",
            conditions="original",
            judge=judge,
        )
    for marker in markers:
        assert (
            judge_script.bodies[marker] == official_bodies[marker]
            and len(official_bodies[marker]) == 1
        )

    metrics = summary["conditions"]["original"]["metrics"]
    aggregate = {
        "all": llava_utils.llava_all_aggregation,
        "conv": llava_utils.llava_conv_aggregation,
        "detail": llava_utils.llava_detail_aggregation,
        "complex": llava_utils.llava_complex_aggregation,
    }
    for name, function in aggregate.items():
        official = function([output[f"gpt_eval_llava_{name}"] for output in outputs])
        ours = metrics["relative_score" if name == "all" else f"{name}/relative_score"]
        assert ours == official, name
    lines = [
        json.loads(line)
        for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    ]
    grades = {line["id"]: line["judge"]["grades"][0] for line in lines}
    assert [grades[i] for i in ids] == [o["gpt_eval_llava_all"]["scores"] for o in outputs]


def test_llava_bench_aggregation_equals_lmms_eval_on_random_grades(lmms_tasks):
    _, llava_utils = lmms_tasks
    rng = random.Random(3)
    for trial in range(40):
        n = rng.randint(1, 60)
        categories = [rng.choice(["conv", "detail", "complex"]) for _ in range(n)]
        pairs = [
            [-1, -1]
            if rng.random() < 0.1
            else [
                rng.choice([1, 2, 5, 6.5, 7, 8, 9, 10]) * 1.0,
                rng.choice([1, 3, 4.5, 6, 7, 8, 10]) * 1.0,
            ]
            for _ in range(n)
        ]
        point = llava_bench_table([{"category": c} for c in categories], {"x": pairs}).point("x")
        results = {
            name: [
                {"scores": p if (name == "all" or c == name) else [-999, -999]}
                for p, c in zip(pairs, categories)
            ]
            for name in ("all", "conv", "detail", "complex")
        }
        assert point["relative_score"] == pytest.approx(
            llava_utils.llava_aggregation(results["all"], "all"), nan_ok=True
        )
        for name in ("conv", "detail", "complex"):
            official = llava_utils.llava_aggregation(results[name], name)
            ours = point.get(f"{name}/relative_score")
            if official is None:
                assert ours is None or ours != ours, (trial, name)  # absent, or no reference
            else:
                assert ours == official, (trial, name)


# -- the VLMEvalKit layout gives the same prompts ---------------------------------------------------


def test_vlmevalkit_columns_give_the_same_judge_prompts():
    mmvet_lmms = {"question": "Q?", "answer": "a<AND>b", "capability": "rec,ocr"}
    mmvet_vlmeval = {"question": "Q?", "answer": "a<AND>b", "category": "rec,ocr"}
    assert mmvet_prompt(mmvet_lmms, "A") == mmvet_prompt(mmvet_vlmeval, "A")
    llava_lmms = {"question": "Q?", "gpt_answer": "R", "caption": "C", "category": "detail"}
    llava_vlmeval = {"question": "Q?", "gpt4_ans": "R", "caption": "C", "category": "detail"}
    assert llava_bench_prompt(llava_lmms, "A") == llava_bench_prompt(llava_vlmeval, "A")
    table = mmvet_table([mmvet_lmms, mmvet_vlmeval], {"x": [0.5, 1.0]})
    assert table.point("x") == {"score": 75.0, "rec/score": 75.0, "ocr/score": 75.0}


def test_missing_ground_truth_or_judge_is_one_clear_error(tmp_path):
    from api_prompt.errors import ConfigError

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"id": 1, "image": "a.png", "question": "q", "answer": "x"}) + "\n"
    )
    with pytest.raises(ConfigError, match="--judge openai:MODEL"):
        evaluate(
            tmp_path / "d.jsonl", "mmvet", lambda i, q: "a", tmp_path / "o1", conditions="original"
        )
    judge = OpenAIJudge(MODEL, base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match="capabilities"):
        evaluate(
            tmp_path / "d.jsonl",
            "mmvet",
            lambda i, q: "a",
            tmp_path / "o2",
            conditions="original",
            judge=judge,
        )
    with pytest.raises(ConfigError, match="gpt_answer"):
        evaluate(
            tmp_path / "d.jsonl",
            "llava-bench",
            lambda i, q: "a",
            tmp_path / "o3",
            conditions="original",
            judge=judge,
        )
    with pytest.raises(ConfigError, match="scored by rule"):
        evaluate(
            tmp_path / "d.jsonl",
            "gqa",
            lambda i, q: "a",
            tmp_path / "o4",
            conditions="original",
            judge=judge,
        )
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


# -- failures, the cache, repeats ---------------------------------------------------------------


def _mmvet_jsonl(folder: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(folder / f"{i}.png")
        rows.append(
            {
                "id": f"s{i}",
                "image": f"{i}.png",
                "question": f"<<mmvet {i}>> What?",
                "answer": "x",
                "capability": "rec",
            }
        )
    path = folder / "mmvet.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_judge_failures_are_recorded_and_graded_again_without_asking_the_target(tmp_path):
    data = _mmvet_jsonl(tmp_path, 4)
    asked = []

    def target(image, question):
        asked.append(question)
        return "same answer"

    down = {"on": True}
    script = ScriptedJudge({f"<<mmvet {i}>>": ["0.5"] for i in range(4)})

    def flaky(conn, request):
        if down["on"] and "<<mmvet 2>>" in json.dumps(request["json"]):
            return respond(503, {"error": {"message": "overloaded"}})(conn, request)
        script(conn, request)

    with RawServer(default=flaky) as server:
        judge = OpenAIJudge(MODEL, base_url=server.base_url, api_key="k", max_retries=0)
        summary = evaluate(
            data, "mmvet", target, tmp_path / "out", conditions="original", judge=judge
        )
        lines = [
            json.loads(row)
            for row in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
        ]
        failed = [row for row in lines if row["error"]]
        assert [row["id"] for row in failed] == ["s2"] and failed[0]["error"].startswith("judge: ")
        assert "503" in failed[0]["error"] and failed[0]["answer"] == "same answer"
        assert (
            summary["conditions"]["original"]["errors"] == 1
            and summary["conditions"]["original"]["n"] == 3
        )
        down["on"] = False
        calls_before = len(server.requests)
        summary = evaluate(
            data,
            "mmvet",
            target,
            tmp_path / "out",
            conditions="original",
            judge=judge,
            retry_errors=True,
        )
        assert len(asked) == 4  # the target was not asked again
        assert len(server.requests) == calls_before + 1  # only the failed grading was repeated
    assert summary["conditions"]["original"]["errors"] == 0
    assert summary["conditions"]["original"]["metrics"]["score"] == pytest.approx(50.0)


def test_the_cache_is_keyed_by_the_whole_call(tmp_path):
    """The same question and answer about two images is two calls; a repeated run is none; the
    judge's repeats are separate calls, and their spread is in the summary."""
    rows = [
        {
            "id": f"s{i}",
            "image": f"{i}.png",
            "question": "<<same>> What?",
            "answer": "x",
            "capability": "rec",
        }
        for i in range(2)
    ]
    for i in range(2):
        Image.new("RGB", (8, 8), (100 * i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = ScriptedJudge({"<<same>>": ["0.2", "0.4", "0.6", "0.8"]})
    with RawServer(default=script) as server:
        judge = OpenAIJudge(MODEL, base_url=server.base_url, api_key="k", max_concurrency=1)
        first = evaluate(
            tmp_path / "d.jsonl",
            "mmvet",
            lambda i, q: "A",
            tmp_path / "out",
            conditions="original",
            judge=judge,
            judge_repeats=2,
        )
        assert len(server.requests) == 4  # 2 images x 2 repeats
        again = evaluate(
            tmp_path / "d.jsonl",
            "mmvet",
            lambda i, q: "A",
            tmp_path / "out",
            conditions="original",
            judge=judge,
            judge_repeats=2,
            overwrite=True,
        )
        assert len(server.requests) == 4  # all four replies came from the cache
    assert again["conditions"] == first["conditions"] and again["judge"] == first["judge"]
    variation = first["judge"]["variation"]
    assert variation["repeats"] == 2 and len(variation["per_repeat"]) == 2
    runs = [run["original"]["score"] for run in variation["per_repeat"]]
    assert first["conditions"]["original"]["metrics"]["score"] == runs[0]
    assert variation["spread"]["original"]["score"]["std"] == pytest.approx(
        abs(runs[0] - runs[1]) / 2**0.5
    )
    assert first["judge"]["calls"] == 4
    cache = JudgeCache(tmp_path / "out" / "judge_cache.jsonl")
    assert len(cache) == 4


def test_request_shape_follows_lmms_eval_for_reasoning_models():
    from lmms_eval.llm_judge.protocol import ServerConfig
    from lmms_eval.llm_judge.providers.openai import build_sampling_kwargs

    for model in ("gpt-4o-2024-11-20", "gpt-4-0613", "o3-mini", "gpt-5", "o1"):
        for temperature in (0.0, 0.5, 2.0):
            config = ServerConfig(model_name=model, temperature=temperature, max_tokens=128)
            expected = {
                "model": model,
                "messages": [{"role": "user", "content": "p"}],
                **build_sampling_kwargs(config),
            }
            assert (
                chat_request("p", model=model, max_tokens=128, temperature=temperature) == expected
            )


def test_records_are_one_per_benchmark():
    assert set(JUDGED) == {"mmvet", "llava-bench"}
    assert all(record.name == name for name, record in JUDGED.items())


# -- kill -9 and resume ---------------------------------------------------------------------------


class _Deterministic:
    """A target and a judge whose replies depend only on the request; judge replies past
    ``hold_after`` wait until ``release`` is set (so a run can be killed mid-judging)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.hold_after: int | None = None
        self.answered: list[str] = []
        self.seen: list[str] = []
        self.held = 0

    def __call__(self, conn, request) -> None:
        body = request["json"]
        text = json.dumps(body["messages"])
        number = int(text.split("<<s")[1].split(">>")[0])
        if body["model"] != MODEL:
            return respond(200, completion(f"answer {number}"))(conn, request)
        canonical = json.dumps(body, sort_keys=True)
        with self.lock:
            self.seen.append(canonical)
            hold = self.hold_after is not None and len(self.answered) >= self.hold_after
            self.held += hold
        if hold:
            self.release.wait(30)
            return
        temperature = body["temperature"]
        reply = "unsure" if number % 3 == 0 and temperature < 0.5 else f"0.{number % 10}"
        respond(200, {**completion(reply), "usage": {"prompt_tokens": 50, "completion_tokens": 2}})(
            conn, request
        )
        with self.lock:
            self.answered.append(canonical)


@pytest.mark.slow
def test_kill_9_and_resume_gives_the_same_summary_without_repeating_judge_calls(tmp_path):
    import collections
    import os
    import signal
    import subprocess
    import sys
    import time

    rows = []
    for i in range(12):
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(tmp_path / f"{i}.png")
        rows.append(
            {
                "id": f"s{i}",
                "image": f"{i}.png",
                "question": f"<<s{i}>> What is it?",
                "answer": f"{i}",
                "capability": "rec,ocr" if i % 2 else "know",
            }
        )
    data = tmp_path / "mmvet.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = _Deterministic()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "API_PROMPT_JUDGE_KEY": "sk-judge"}
    env.pop("OPENAI_API_KEY", None)

    with RawServer(default=script) as server:

        def command(out):
            return [
                sys.executable,
                "-c",
                "from api_prompt.cli.app import main; main()",
                "eval",
                str(data),
                "--benchmark",
                "mmvet",
                "--judge",
                f"openai:{MODEL}",
                "--judge-base-url",
                server.base_url,
                "--target",
                "openai:target-model",
                "--base-url",
                server.base_url,
                "--conditions",
                "original",
                "--batch-size",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]

        whole = subprocess.run(
            command(tmp_path / "whole"), capture_output=True, text=True, env=env, timeout=300
        )
        assert whole.returncode == 0, whole.stderr
        uninterrupted = collections.Counter(script.seen)

        script.seen, script.answered, script.hold_after = [], [], 7
        process = subprocess.Popen(
            command(tmp_path / "killed"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not script.held:
            time.sleep(0.01)
        assert script.held, "the run never reached the held judge reply"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        script.release.set()
        paid_before_kill = collections.Counter(script.answered)
        assert not (tmp_path / "killed" / "summary.json").exists()

        script.seen, script.hold_after = [], None
        resumed = subprocess.run(
            command(tmp_path / "killed"), capture_output=True, text=True, env=env, timeout=300
        )
        assert resumed.returncode == 0, resumed.stderr
        asked_after = collections.Counter(script.seen)

    assert sum(paid_before_kill.values()) == 7
    assert paid_before_kill + asked_after == uninterrupted  # nothing paid for was asked again
    first = json.loads((tmp_path / "whole" / "summary.json").read_text())
    second = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert second["conditions"] == first["conditions"] and second["judge"] == first["judge"]
    assert first["conditions"]["original"]["n"] == 12 and first["judge"]["calls"] == sum(
        uninterrupted.values()
    )


def test_a_refused_key_stops_the_run_and_no_key_for_openai_is_refused_at_once(
    tmp_path, monkeypatch
):
    from api_prompt.errors import ConfigError

    data = _mmvet_jsonl(tmp_path, 3)
    refuse = respond(401, {"error": {"message": "Incorrect API key provided"}})
    with RawServer(default=refuse) as server:
        judge = OpenAIJudge(MODEL, base_url=server.base_url, api_key="sk-wrong")
        with pytest.raises(
            ConfigError, match=r"refused the request \(HTTP 401\).*API_PROMPT_JUDGE_KEY"
        ) as raised:
            evaluate(
                data,
                "mmvet",
                lambda i, q: "a",
                tmp_path / "out",
                conditions="original",
                judge=judge,
            )
        assert len(server.requests) <= 3 and "sk-wrong" not in str(raised.value)
    monkeypatch.delenv("API_PROMPT_JUDGE_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="needs an API key"):
        OpenAIJudge(MODEL)
    monkeypatch.setenv("API_PROMPT_JUDGE_KEY", " sk-from-env\n")
    assert OpenAIJudge(MODEL)._api_key == "sk-from-env"


def test_cli_judge_options_reach_the_judge(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from api_prompt.cli.app import app

    data = _mmvet_jsonl(tmp_path, 2)
    script = ScriptedJudge(
        {f"<<mmvet {i}>>": ["0.5"] for i in range(2)},
        {f"<<mmvet {i}>>": "an answer" for i in range(2)},
    )
    with RawServer(default=script) as server:
        result = CliRunner().invoke(
            app,
            [
                "eval",
                str(data),
                "--benchmark",
                "mmvet",
                "--judge",
                f"openai:{MODEL}",
                "--judge-base-url",
                server.base_url,
                "--judge-api-key",
                "sk-cli",
                "--judge-repeats",
                "2",
                "--target",
                "openai:target-model",
                "--base-url",
                server.base_url,
                "--conditions",
                "original",
                "--out",
                str(tmp_path / "out"),
            ],
        )
        assert result.exit_code == 0, result.output
        judged = [r for r in server.requests if r["json"]["model"] == MODEL]
    assert len(judged) == 4 and {r["headers"]["authorization"] for r in judged} == {"Bearer sk-cli"}
    assert "judge: gpt-4o-2024-11-20, 4 calls" in result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (
        summary["settings"]["judge"]["repeats"] == 2
        and summary["judge"]["variation"]["repeats"] == 2
    )


# -- property tests: the rules against lmms-eval's own code ------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_GRADE_WORDS = [
    "0.0",
    "0.1",
    "0.5",
    "1.0",
    "1",
    "0",
    "-0",
    ".5",
    "1e-1",
    "0.30",
    "1.5",
    "-0.2",
    "inf",
    "nan",
    "",
    " ",
    "banana",
    "correctness:",
    "0,5",
    "1.0.",
    "Ten",
]
_reply = st.builds(
    lambda head, tail: head + tail,
    st.sampled_from(_GRADE_WORDS),
    st.sampled_from(["", " because", "\nreason", "  ", " 0.9", "\n"]),
)


def _out_of_range(reply: str) -> bool:
    text = reply.strip()
    try:
        value = float(text.split(" ")[0].strip())
    except ValueError:
        return False
    return not 0.0 <= value <= 1.0


@pytest.mark.slow
@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(replies=st.lists(_reply, max_size=12).filter(lambda rs: sum(map(_out_of_range, rs)) < 5))
def test_mmvet_retry_rule_equals_lmms_eval_on_generated_replies(replies, lmms_tasks, monkeypatch):
    """The same replies, in order, give the same calls (temperatures) and the same grade."""
    import asyncio

    from lmms_eval.llm_judge.protocol import Response

    from api_prompt.evaluation.judged import mmvet_rule

    mmvet_utils, _ = lmms_tasks
    padded = list(replies) + ["0.5"] * 20  # a valid grade in the end, so lmms-eval stops too

    class Replay:
        def __init__(self):
            self.queue, self.temperatures = list(padded), []

        def evaluate(self, request):
            self.temperatures.append(request.config.temperature)
            return Response(content=self.queue.pop(0), model_used="m")

    theirs = Replay()
    monkeypatch.setattr(mmvet_utils, "server", theirs)
    monkeypatch.setattr(
        mmvet_utils, "time", type("NoSleep", (), {"sleep": staticmethod(lambda s: None)})
    )
    doc = {"question_id": "q", "question": "Q?", "answer": "A", "capability": "rec"}
    official = mmvet_utils.mmvet_process_results(doc, ["P"])["gpt_eval_score"]["score"]

    ours, temperatures = list(padded), []

    async def ask(temperature):
        temperatures.append(temperature)
        return ours.pop(0).strip()  # the client strips replies, as lmms-eval's provider does

    assert asyncio.run(mmvet_rule(ask)) == official
    assert temperatures == theirs.temperatures


@pytest.mark.slow
@settings(
    max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    review=st.one_of(
        st.text(alphabet="0123456789 .,;-\n:aA", max_size=24),
        st.builds(
            lambda a, sep, b, rest: f"{a}{sep}{b}{rest}",
            st.sampled_from(["8", "7.5", "-1", "10", "Assistant 1: 6", "", "9."]),
            st.sampled_from([" ", ",", ", ", ";", "\n", " and ", "/"]),
            st.sampled_from(["7", "8.5", "10", "", "Assistant 2: 3", ".5"]),
            st.sampled_from(["", "\nBecause.", " (out of 10)", "\n7 8"]),
        ),
    )
)
def test_llava_bench_review_parsing_equals_lmms_eval(review, lmms_tasks):
    from api_prompt.evaluation.judged import parse_llava_scores

    _, llava_utils = lmms_tasks
    assert (
        parse_llava_scores(review)
        == llava_utils._parse_comparative_scores(review).metadata["scores"]
    )


def test_judge_requests_run_concurrently_within_the_bound(tmp_path):
    import time

    data = _mmvet_jsonl(tmp_path, 12)
    state = {"now": 0, "most": 0}
    lock = threading.Lock()

    def slow(conn, request):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.1)
        with lock:
            state["now"] -= 1
        respond(200, completion("0.5"))(conn, request)

    with RawServer(default=slow) as server:
        judge = OpenAIJudge(MODEL, base_url=server.base_url, api_key="k", max_concurrency=3)
        summary = evaluate(
            data,
            "mmvet",
            lambda i, q: "a",
            tmp_path / "out",
            conditions="original",
            judge=judge,
            batch_size=12,
        )
    assert state["most"] == 3
    assert summary["conditions"]["original"]["metrics"]["score"] == pytest.approx(50.0)
