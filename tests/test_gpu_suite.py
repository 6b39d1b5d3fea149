"""The GPU suite (benchmarks/gpu_suite.py) runs end to end on the CPU with tiny models, so the one
command a lent GPU gets cannot rot; and its checks fail when a path disagrees with the CPU."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api_prompt.attention_map import AttentionMap
from benchmarks import gpu_suite


@pytest.mark.slow
def test_the_suite_runs_on_the_cpu_with_tiny_models(tmp_path, capsys):
    out = tmp_path / "suite.json"
    status = gpu_suite.main(["--device", "cpu", "--tiny", "--out", str(out)])
    report = json.loads(out.read_text())
    failed = [check for check in report["checks"] if not check["ok"]]
    assert status == 0 and not failed, failed

    kinds = {(check["kind"], check["model"].split()[0]) for check in report["checks"]}
    assert {
        ("clip", "clip"),
        ("clip", "siglip"),
        ("decoder", "llava"),
        ("decoder", "llava-next"),
        ("decoder", "qwen2-vl"),
    } <= kinds
    paths = {check["path"] for check in report["checks"]}
    assert {
        "full",
        "early exit vs full on the device",
        "sdpa, 1 new token(s)",
        "eager, 4 new token(s)",
    } <= paths
    assert {check["dtype"] for check in report["checks"]} >= {"fp32", "bf16"}

    figures = report["figures"]
    assert [row["batch"] for row in figures["clip"]] == [1, 2, 4]
    for row in figures["clip"]:
        assert all(
            math.isfinite(row[key]) and row[key] > 0
            for key in (
                "plain_images_per_s",
                "full_images_per_s",
                "early_images_per_s",
                "from_images_images_per_s",
            )
        )
    assert {row["family"] for row in figures["decoders"]} == {"llava", "llava-next", "qwen2-vl"}
    assert all(row["time_ratio"] > 0 and row["memory_ratio"] > 0 for row in figures["decoders"])
    assert (
        figures["batch"]["end_to_end_samples_per_s"] > 0
        and figures["batch"]["attribution_samples_per_s"] > 0
    )
    assert figures["proxy"]["requests_per_s"] > 0
    assert report["machine"]["device"] == "cpu" and "gpu" not in report["machine"]

    printed = capsys.readouterr().out
    assert (
        "no GPU" in printed
        and f"{len(report['checks'])} of {len(report['checks'])} checks passed" in printed
    )
    assert "| proxy requests/s" in printed


def maps(mask, part):
    return [
        AttentionMap(
            mask=np.asarray(mask, np.float32),
            parts={"p": np.asarray(part, np.float32)},
            image_size=(4, 4),
            region=(0.0, 0.0, 4.0, 4.0),
        )
    ]


@pytest.mark.parametrize(
    "dtype, shift, ok",
    [
        ("fp32", 5e-5, True),
        ("fp32", 5e-4, False),
        ("bf16", 0.04, True),
        ("bf16", 0.2, False),
        ("fp16", 0.01, True),
        ("fp16", 0.05, False),
    ],
)
def test_a_check_fails_when_the_masks_disagree(dtype, shift, ok):
    rng = np.random.default_rng(0)
    mask, part = rng.random((4, 4)), rng.random((4, 4))
    result = gpu_suite.compare(
        maps(mask, part), maps(np.clip(mask + shift, 0, 1), part), dtype, ("p",)
    )
    assert result["ok"] is ok


def test_a_check_fails_when_a_part_loses_its_shape():
    rng = np.random.default_rng(1)
    mask, part = rng.random((4, 4)), rng.random((4, 4))
    scrambled = rng.permutation(part.ravel()).reshape(4, 4)
    assert gpu_suite.compare(maps(mask, part), maps(mask, scrambled), "bf16", ("p",))["ok"] is False
    assert (
        gpu_suite.compare(maps(mask, part), maps(mask, part * 1.00001), "fp32", ("p",))["ok"]
        is True
    )


def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("shows the error of a machine without CUDA")
    with pytest.raises(SystemExit):
        gpu_suite.main(["--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err
