"""The lmms-eval plugin, through lmms-eval's own command line on a tiny local task.

The test writes a local dataset, a task YAML and a tiny inner model that records the images it is
given, runs ``lmms-eval --model api_prompt --model_args inner=...`` offline, and checks that the
inner model received exactly the attention-prompted images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "lmms_eval", reason='lmms-eval is an optional extra: pip install ".[lmms-eval]"'
)
datasets = pytest.importorskip("datasets", reason='pip install ".[lmms-eval]"')

REPO = Path(__file__).resolve().parents[1]
CLIP = f"local-dir:{REPO / 'assets' / 'synthshapes-clip'}"

RECORDER = '''
import numpy as np
from lmms_eval.api.model import lmms


class Recorder(lmms):
    """Answers "yes" and saves every image it is shown as RECORD/<doc_id>.npy."""

    is_simple = True

    def __init__(self, record, **kwargs):
        super().__init__()
        self.record = record

    def generate_until(self, requests):
        answers = []
        for context, gen_kwargs, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            images = doc_to_visual(self.task_dict[task][split][doc_id])
            np.save(f"{self.record}/{doc_id}.npy", np.stack([np.asarray(i) for i in images]))
            answers.append("yes")
        return answers

    def loglikelihood(self, requests):
        raise NotImplementedError

    def generate_until_multi_round(self, requests):
        raise NotImplementedError
'''

TASK = """
task: tiny_api
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 8
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.0
"""

UTILS = """
def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"] + "\\nAnswer the question using a single word or phrase."


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"])}
"""

QUESTIONS = ["Is there a red circle?", "Is there a blue square?", "Is there a green triangle?"]


def _scenes():
    from benchmarks.synthshapes.scenes import make_scene

    return [
        make_scene(np.random.default_rng(seed), size=64, n_objects=(3, 3)).image
        for seed in range(3)
    ]


def _lmms_eval_command() -> list[str]:
    script = Path(sys.executable).with_name("lmms-eval")
    if script.exists():
        return [str(script)]
    found = shutil.which("lmms-eval")
    return [found] if found else [sys.executable, "-m", "lmms_eval"]


@pytest.mark.slow
def test_lmms_eval_command_line_runs_the_inner_model_on_prompted_images(tmp_path):
    from importlib.metadata import entry_points

    if not any(ep.name == "api_prompt" for ep in entry_points().select(group="lmms_eval.models")):
        pytest.fail(
            'the lmms_eval.models entry point is not installed: pip install -e ".[lmms-eval]"'
        )
    images = _scenes()
    dataset = datasets.Dataset.from_dict(
        {
            "question_id": [0, 1, 2],
            "question": QUESTIONS,
            "image": images,
            "answer": ["yes", "no", "yes"],
        },
        features=datasets.Features(
            {
                "question_id": datasets.Value("int64"),
                "question": datasets.Value("string"),
                "image": datasets.Image(),
                "answer": datasets.Value("string"),
            }
        ),
    )
    datasets.DatasetDict({"test": dataset}).save_to_disk(str(tmp_path / "data"))
    tasks = tmp_path / "tasks" / "tiny_api"
    tasks.mkdir(parents=True)
    (tasks / "tiny_api.yaml").write_text(TASK.format(data=tmp_path / "data"))
    (tasks / "utils.py").write_text(textwrap.dedent(UTILS))
    (tmp_path / "recording_model.py").write_text(RECORDER)
    record = tmp_path / "record"
    record.mkdir()

    command = _lmms_eval_command() + [
        "--model",
        "api_prompt",
        "--model_args",
        f"inner=recording_model:Recorder,record={record},api_model={CLIP},api_device=cpu",
        "--tasks",
        "tiny_api",
        "--include_path",
        str(tmp_path / "tasks"),
        "--batch_size",
        "1",
        "--output_path",
        str(tmp_path / "results"),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "WANDB_MODE": "disabled",
    }
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    output = result.stdout + result.stderr
    # lmms-eval can log a failure (an import error in its evaluator, say) and still exit 0, so the
    # run only counts as clean when no traceback was printed either.
    assert result.returncode == 0 and "Traceback (most recent call last)" not in output, output[
        -6000:
    ]

    from api_prompt import Prompter

    prompter = Prompter(model=CLIP, device="cpu")
    for doc_id, (image, question) in enumerate(zip(images, QUESTIONS)):
        seen = np.load(record / f"{doc_id}.npy")
        expected = np.asarray(prompter(image, question).image)
        assert seen.shape == (1, *expected.shape)
        assert np.array_equal(seen[0], expected), f"doc {doc_id}: the inner model got other pixels"
        assert not np.array_equal(seen[0], np.asarray(image.convert("RGB")))
    results = list((tmp_path / "results").rglob("*results*.json"))
    assert results, "lmms-eval wrote no results file"
    scores = json.loads(results[0].read_text())["results"]["tiny_api"]
    assert scores["exact_match,none"] == pytest.approx(2 / 3)  # the recorder always says yes
