"""The proxy's parts that need no server: the micro-batcher and the request rewriting."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from api_prompt.serve import MicroBatcher, QueueFull, RequestError, find_images, replace_images
from api_prompt.serve.messages import decode_data_url, parse_request


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def tagged(images, queries):
    return [f"{image}:{query}" for image, query in zip(images, queries)]


def test_batches_are_bounded_and_every_request_gets_its_own_results_in_order():
    async def scenario():
        batcher = MicroBatcher(tagged, max_batch=3, max_wait_ms=50)
        await batcher.start()
        requests = [[f"r{r}i{i}" for i in range(r % 3 + 1)] for r in range(10)]
        answers = await asyncio.gather(
            *(batcher.prompt(images, [f"q{r}"] * len(images)) for r, images in enumerate(requests))
        )
        await batcher.stop()
        return requests, answers, batcher.batch_sizes

    requests, answers, sizes = run(scenario())
    for r, (images, answer) in enumerate(zip(requests, answers)):
        assert answer == [f"{image}:q{r}" for image in images]
    assert max(sizes) == 3 and sum(sizes) == sum(map(len, requests))


def test_a_lone_request_waits_for_company_only_when_some_is_on_its_way():
    async def latency(arriving):
        batcher = MicroBatcher(tagged, max_batch=8, max_wait_ms=300, arriving=arriving)
        await batcher.start()
        started = time.monotonic()
        await batcher.prompt(["a"], ["q"])
        elapsed = time.monotonic() - started
        await batcher.stop()
        return elapsed

    assert run(latency(None)) >= 0.29  # no hint: the classic max-wait
    assert run(latency(lambda: 1)) >= 0.29  # someone is on the way: wait for them
    assert run(latency(lambda: 0)) < 0.2  # nobody is coming: run at once


def test_a_full_queue_refuses_a_request_whole():
    running, release = threading.Event(), threading.Event()

    def blocking(images, queries):
        running.set()
        release.wait(10)
        return tagged(images, queries)

    async def scenario():
        batcher = MicroBatcher(blocking, max_batch=1, max_wait_ms=0, max_queue=2)
        await batcher.start()
        first = asyncio.ensure_future(batcher.prompt(["a"], ["q"]))
        while not running.is_set():  # the first pair is in the model
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.prompt(["b"], ["q"]))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull) as caught:
            await batcher.prompt(["c", "d"], ["q", "q"])  # two more would exceed 2: none is queued
        assert batcher.queued == 1 and caught.value.retry_after >= 1
        third = asyncio.ensure_future(batcher.prompt(["e"], ["q"]))  # one more still fits
        release.set()
        results = await asyncio.gather(first, second, third)
        await batcher.stop()
        return results

    assert run(scenario()) == [["a:q"], ["b:q"], ["e:q"]]


def test_one_bad_request_does_not_fail_the_others_in_its_batch():
    def picky(images, queries):
        if "bad" in images:
            raise ValueError("cannot read 'bad'")
        return tagged(images, queries)

    async def scenario():
        batcher = MicroBatcher(picky, max_batch=8, max_wait_ms=100)
        await batcher.start()
        results = await asyncio.gather(
            batcher.prompt(["a"], ["q"]),
            batcher.prompt(["bad"], ["q"]),
            batcher.prompt(["c"], ["q"]),
            return_exceptions=True,
        )
        await batcher.stop()
        return results

    good, bad, other = run(scenario())
    assert good == ["a:q"] and other == ["c:q"]
    assert isinstance(bad, ValueError) and "bad" in str(bad)


def test_cancelled_requests_are_skipped_and_stop_drains_the_queue():
    seen = []

    def record(images, queries):
        seen.extend(images)
        return tagged(images, queries)

    async def scenario():
        batcher = MicroBatcher(record, max_batch=8, max_wait_ms=200)
        await batcher.start()
        gone = asyncio.ensure_future(batcher.prompt(["gone"], ["q"]))
        kept = asyncio.ensure_future(batcher.prompt(["kept"], ["q"]))
        await asyncio.sleep(0.02)
        gone.cancel()
        await batcher.stop()  # finishes what is queued before returning
        return await kept

    assert run(scenario()) == ["kept:q"]
    assert seen == ["kept"]


def test_find_and_replace_images_leave_everything_else_alone():
    body = parse_request(b"""{"model": "m", "stream": true, "messages": [
        {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}]},
        {"role": "user", "content": "no parts"},
        {"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64,QQ=="},
                                     {"type": "text", "text": "first"}, {"type": "text", "text": " second "}]}]}""")
    (part,) = find_images(body)  # images in system messages are not the user's question
    assert (
        part.location == (2, 0)
        and part.query == "first second"
        and part.param.startswith("messages[2]")
    )
    new = replace_images(body, [part], ["data:new"])
    assert new["messages"][2]["content"][0] == {
        "type": "image_url",
        "image_url": "data:new",
    }  # shape kept
    assert new["messages"][:2] == body["messages"][:2] and new["stream"] is True
    assert body["messages"][2]["content"][0]["image_url"] == "data:image/png;base64,QQ=="


@pytest.mark.parametrize(
    "raw, status, expected",
    [
        (b"[1]", 400, "JSON object"),
        (b'{"messages": "hi"}', 400, "non-empty list"),
        (b'{"messages": [1]}', 400, "must be an object"),
        (b"\xff\xfe", 400, "not valid JSON"),
    ],
)
def test_malformed_requests(raw, status, expected):
    with pytest.raises(RequestError, match=expected) as caught:
        parse_request(raw)
    assert caught.value.status == status


def test_data_url_limits():
    assert decode_data_url("data:image/png;base64,QUJD", max_bytes=3) == b"ABC"
    with pytest.raises(RequestError) as caught:
        decode_data_url("data:image/png;base64," + "QUJD" * 10, max_bytes=3)
    assert caught.value.status == 413
    for url in ("data:image/png,ABC", "data:image/png;base64,QU", "file:///etc/passwd"):
        with pytest.raises(RequestError) as caught:
            decode_data_url(url, max_bytes=100)
        assert caught.value.status == 400


def test_a_lone_request_runs_on_the_event_loop_once_batches_are_known_to_be_quick():
    """No thread hand-off when nothing else is in flight and the model is fast; otherwise the worker thread."""
    threads = []

    def note_thread(seconds):
        def run_batch(images, queries):
            threads.append(threading.get_ident())
            time.sleep(seconds)
            return tagged(images, queries)

        return run_batch

    async def scenario(alone, seconds):
        threads.clear()
        batcher = MicroBatcher(
            note_thread(seconds), max_wait_ms=0, alone=lambda: alone, inline_under_ms=50
        )
        await batcher.start()
        for i in range(3):
            assert await batcher.prompt([f"i{i}"], ["q"]) == [f"i{i}:q"]
        await batcher.stop()
        return threading.get_ident(), list(threads)

    loop_thread, used = run(scenario(alone=True, seconds=0))
    assert used[0] != loop_thread and used[1:] == [
        loop_thread,
        loop_thread,
    ]  # the first: time unknown
    loop_thread, used = run(scenario(alone=False, seconds=0))
    assert loop_thread not in used
    loop_thread, used = run(
        scenario(alone=True, seconds=0.08)
    )  # a slow model never blocks the loop
    assert loop_thread not in used
