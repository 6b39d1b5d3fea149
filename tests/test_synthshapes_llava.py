"""The shipped synthshapes LLaVA (assets/synthshapes-llava) and its training script.

- the vision tower conversion: open_clip's synthshapes CLIP and the transformers CLIP vision
  model built from it give the same image features (within 1e-5), block by block;
- the shipped folder loads with stock transformers classes only, offline, and answers held-out
  questions right;
- the training script's first steps are deterministic (same seed, same losses and weights).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.synthshapes import train_llava
from benchmarks.synthshapes.scenes import make_scene

REPO = Path(__file__).resolve().parents[1]
CLIP_DIR = REPO / "assets" / "synthshapes-clip"
LLAVA_DIR = REPO / "assets" / "synthshapes-llava"


def _scenes(n: int, seed: int = 7):
    rng = np.random.default_rng(seed)
    return [make_scene(rng, n_objects=(1, 3)) for _ in range(n)]


@pytest.fixture(scope="module")
def open_clip_model():
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{CLIP_DIR}")
    return model.eval(), preprocess


@pytest.mark.slow
def test_converted_tower_gives_open_clip_image_features(open_clip_model):
    model, preprocess = open_clip_model
    hf, _ = train_llava.load_converted_clip(CLIP_DIR)
    pixels = torch.stack([preprocess(scene.image) for scene in _scenes(6)])

    block_outputs = []
    hooks = [
        block.register_forward_hook(lambda _m, _i, out: block_outputs.append(out))
        for block in model.visual.transformer.resblocks
    ]
    try:
        with torch.no_grad():
            expected = model.encode_image(pixels)
            out = hf(pixel_values=pixels, output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(out.image_embeds, expected, atol=1e-5, rtol=0)
    # every block's tokens (what LLaVA reads at vision_feature_layer), not only the pooled CLS
    assert len(out.hidden_states) == len(block_outputs) + 1
    for ours, theirs in zip(out.hidden_states[1:], block_outputs):
        theirs = theirs if theirs.shape[0] == pixels.shape[0] else theirs.transpose(0, 1)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_shipped_tower_is_the_converted_clip(open_clip_model):
    """The LLaVA's vision tower holds the CLIP's weights (it was frozen during training)."""
    from transformers import LlavaForConditionalGeneration

    llava = LlavaForConditionalGeneration.from_pretrained(LLAVA_DIR, local_files_only=True)
    hf, _ = train_llava.load_converted_clip(CLIP_DIR)
    shipped = llava.model.vision_tower.state_dict()
    reference = (
        hf.state_dict()
        if "vision_model.pre_layrnorm.weight" in shipped
        else hf.vision_model.state_dict()
    )
    for key, value in shipped.items():
        torch.testing.assert_close(value, reference[key], atol=0, rtol=0, msg=key)


def test_processor_pixels_match_open_clip_preprocess(open_clip_model):
    from transformers import AutoProcessor

    _, preprocess = open_clip_model
    processor = AutoProcessor.from_pretrained(LLAVA_DIR, local_files_only=True)
    scenes = _scenes(4, seed=3)
    ours = processor.image_processor([s.image for s in scenes], return_tensors="pt")["pixel_values"]
    theirs = torch.stack([preprocess(s.image) for s in scenes])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_folder_loads_with_stock_classes_and_answers_held_out_questions():
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    files = sorted(p.name for p in LLAVA_DIR.iterdir())
    assert not any(name.endswith(".py") for name in files), files  # no remote code
    assert sum(p.stat().st_size for p in LLAVA_DIR.iterdir()) <= 20 * 2**20
    model = LlavaForConditionalGeneration.from_pretrained(LLAVA_DIR, local_files_only=True)
    processor = AutoProcessor.from_pretrained(LLAVA_DIR, local_files_only=True)
    assert type(processor).__name__ == "LlavaProcessor"

    # one <image> expands to the 8x8 grid of patch tokens
    prompt = processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": "How many shapes are there?"},
                ],
            }
        ],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = processor(images=[_scenes(1)[0].image], text=[prompt], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 64

    # colour, shape and count questions (chance 0.17, 0.33, 0.33)
    examples = [ex for kind in ("color", "shape", "count") for ex in train_llava.held_out(kind, 10)]
    answers = train_llava.generate_answers(model, processor, examples, max_new_tokens=3)
    correct = [train_llava.score_answer(ex, a)["correct"] for ex, a in zip(examples, answers)]
    assert np.mean(correct) >= 0.9, list(zip([e.question for e in examples], answers))
    first = examples[0]
    assert answers[0].split()[0] == first.answer, (first.question, answers[0], first.answer)

    # yes/no "Is there a ...?" (chance 0.5), with near misses among the negatives: a present
    # colour with another shape must get "no" (the model shipped before checked the colour only)
    examples = train_llava.held_out("exists", 20)
    answers = train_llava.generate_answers(model, processor, examples, max_new_tokens=3)
    correct = [train_llava.score_answer(ex, a)["correct"] for ex, a in zip(examples, answers)]
    assert np.mean(correct) >= 0.9, list(zip([e.question for e in examples], answers))
    assert {a.split()[0] for a in answers} == {"yes", "no"}
    near_misses = [
        (ex, a)
        for ex, a in zip(examples, answers)
        if ex.answer == "no"
        and any(o.color in ex.question.lower().split() for o in ex.scene.objects)
    ]
    assert near_misses and all(a.split()[0] == "no" for _, a in near_misses), near_misses


@pytest.mark.slow
def test_every_template_word_is_in_the_vocabulary():
    tokenizer = train_llava.build_tokenizer()
    rng = np.random.default_rng(0)
    for kind in train_llava.QUESTION_TEMPLATES:
        for ex in train_llava.sample_examples(rng, 40, {kind: 1.0}):
            for text in (ex.question, ex.answer, train_llava.prompt_text(ex.question)):
                ids = tokenizer(text, add_special_tokens=False).input_ids
                assert tokenizer.unk_token_id not in ids, text
    assert (
        tokenizer.unk_token_id
        in tokenizer("What is the weather like?", add_special_tokens=False).input_ids
    )


@pytest.mark.slow
def test_first_training_steps_are_deterministic(tmp_path):
    def run(name):
        out = tmp_path / name
        summary = train_llava.main(
            [
                "--out",
                str(out),
                "--summary",
                str(tmp_path / f"{name}.json"),
                "--batch-size",
                "4",
                "--stage1-steps",
                "2",
                "--stage2-steps",
                "3",
                "--warmup",
                "1",
                "--probe-every",
                "0",
                "--save-every",
                "0",
                "--eval-n",
                "0",
                "--layers",
                "2",
            ]
        )
        return summary, hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()

    (first, first_hash), (second, second_hash) = run("a"), run("b")
    assert [h[2] for h in first["history"]] == [h[2] for h in second["history"]]
    assert len(first["history"]) == 5
    assert first_hash == second_hash
    # and the steps did train: the weights differ from a run with another seed's first steps
    assert first["history"][0][2] != first["history"][-1][2]


@pytest.mark.slow
def test_llava_backend_on_the_word_level_model_uses_its_chat_template_and_warns_on_unknown_words():
    """Prompter(backend="llava", model=folder) with no layer works on the 4-layer model; the prompt
    is the processor's chat template without the llava_v1 system sentence (all <unk> here), and a
    question word outside the vocabulary is warned about."""
    from api_prompt.attribution.decoder.llava import UnknownWordsWarning
    from api_prompt.prompter import Prompter

    prompter = Prompter(backend="llava", model=str(LLAVA_DIR), device="cpu", max_new_tokens=3)
    attributor = prompter.attributor
    assert attributor.layer == 2
    scene = _scenes(1)[0]
    inputs = attributor.model_inputs([scene.image], ["How many shapes are there?"])
    tokenizer = attributor.processor.tokenizer
    assert tokenizer.unk_token_id not in inputs["input_ids"][0].tolist()
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(attributor.image_token_id) == 64
    words = [t for t in tokenizer.convert_ids_to_tokens(ids) if t not in ("<image>", "<pad>")]
    assert words == "user : how many shapes are there ? assistant :".split()
    with pytest.warns(UnknownWordsWarning, match="'weather'"):
        attributor([scene.image], ["What is the weather?"])
    [amap] = attributor([scene.image], ["How many shapes are there?"])
    assert amap.parts["attention"].shape == (8, 8)
    # the map's answer is the model's own greedy answer through its chat template (a count word;
    # the model counts this three-object scene as two: count accuracy is 0.97, not 1)
    question = train_llava.Example(scene, "count", "How many shapes are there?", "")
    [expected] = train_llava.generate_answers(
        attributor.model, attributor.processor, [question], max_new_tokens=3
    )
    assert amap.answer == expected
    assert amap.answer in train_llava.COUNT_WORDS


@pytest.mark.slow
def test_localize_decoder_maps_equal_the_attributor():
    """localize.decoder_maps (every layer and token count from one generation) gives exactly the
    LLaVAAttributor's map for each (layer, max_new_tokens)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from api_prompt.attribution.llava import LLaVAAttributor
    from benchmarks.synthshapes.localize import decoder_maps, decoder_question, held_out_queries

    model = LlavaForConditionalGeneration.from_pretrained(LLAVA_DIR, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(LLAVA_DIR, local_files_only=True)
    pairs = held_out_queries(3, 3)
    images = [scene.image for scene, _ in pairs]
    queries = [decoder_question(target.phrase) for _, target in pairs]
    attributor = LLaVAAttributor(model, processor, layer=0, batch_size=2)
    maps, answers = decoder_maps(attributor, images, queries, layers=[1, 3], tokens=(1, 5, 20))
    for layer in (1, 3):
        for k in (1, 5, 20):
            expected = LLaVAAttributor(
                model, processor, layer=layer, max_new_tokens=k, batch_size=2
            )(images, queries)
            for ours, theirs in zip(maps[(layer, k)], expected):
                np.testing.assert_allclose(ours, theirs.parts["attention"], atol=1e-6, rtol=0)
            if k == 20:
                assert answers == [m.answer for m in expected]


def test_random_object_baseline_points_at_an_object_centre():
    from benchmarks.synthshapes.localize import on_any_object, random_object_map

    scene = _scenes(1, seed=11)[0]
    grid_map = random_object_map(scene, 8, np.random.default_rng(0))
    assert grid_map.sum() == 1 and on_any_object(grid_map, scene) == 1.0


_LMMS_TASK = """
task: synthshapes_llava
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 3
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.0
"""

_LMMS_UTILS = """
def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().split(" ")[0] == doc["answer"])}
"""


@pytest.mark.slow
def test_lmms_eval_llava_hf_answers_with_this_model_behind_the_api_prompt_plugin(tmp_path):
    """lmms-eval's own command line and its own ``llava_hf`` model class load the shipped folder
    behind the ``api_prompt`` plugin (CLIP maps); the answers it logs are the model's answers on
    the attention-prompted images, in the folder's chat template."""
    import os
    import subprocess
    import sys

    datasets = pytest.importorskip("datasets")
    pytest.importorskip("lmms_eval")
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from api_prompt import Prompter

    examples = train_llava.held_out("color", 3, seed=train_llava.EVAL_SEED + 77)
    dataset = datasets.Dataset.from_dict(
        {
            "question_id": [0, 1, 2],
            "question": [ex.question for ex in examples],
            "image": [ex.scene.image for ex in examples],
            "answer": [ex.answer for ex in examples],
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
    tasks = tmp_path / "tasks" / "synthshapes_llava"
    tasks.mkdir(parents=True)
    (tasks / "synthshapes_llava.yaml").write_text(_LMMS_TASK.format(data=tmp_path / "data"))
    (tasks / "utils.py").write_text(_LMMS_UTILS)
    script = Path(sys.executable).with_name("lmms-eval")
    clip = f"local-dir:{CLIP_DIR}"
    command = [
        str(script) if script.exists() else sys.executable,
        *([] if script.exists() else ["-m", "lmms_eval"]),
        "--model",
        "api_prompt",
        "--model_args",
        f"inner=llava_hf,pretrained={LLAVA_DIR},device=cpu,device_map=cpu,dtype=float32,"
        f"api_model={clip},api_device=cpu",
        "--tasks",
        "synthshapes_llava",
        "--include_path",
        str(tmp_path / "tasks"),
        "--batch_size",
        "1",
        "--log_samples",
        "--output_path",
        str(tmp_path / "results"),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
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
    assert result.returncode == 0 and "Traceback (most recent call last)" not in output, output[
        -6000:
    ]

    samples = [
        json.loads(line)
        for path in (tmp_path / "results").rglob("*samples*.jsonl")
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    assert len(samples) == 3, output[-3000:]

    def first(value):
        return first(value[0]) if isinstance(value, list) else value

    logged = {int(s["doc_id"]): first(s["filtered_resps"]) for s in samples}

    prompter = Prompter(model=clip, device="cpu")
    model = LlavaForConditionalGeneration.from_pretrained(LLAVA_DIR, local_files_only=True)
    processor = AutoProcessor.from_pretrained(LLAVA_DIR, local_files_only=True)
    prompted = [
        train_llava.Example(
            scene=type(ex.scene)(
                image=prompter(ex.scene.image, ex.question).image,
                objects=ex.scene.objects,
                size=ex.scene.size,
            ),
            kind=ex.kind,
            question=ex.question,
            answer=ex.answer,
        )
        for ex in examples
    ]
    expected = train_llava.generate_answers(model, processor, prompted, max_new_tokens=3)
    assert [logged[i].strip() for i in range(3)] == expected
    assert all(answer in train_llava.COLORS for answer in expected)


# -- the model as the target of the command line, the playground and the proxy ---------------------


def _colour_questions(n: int = 3) -> list:
    return train_llava.held_out("color", n, seed=train_llava.EVAL_SEED + 91)


def _model_answers(images, examples) -> list[str]:
    """This model's greedy answers (first word) about ``images``, through its chat template."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(LLAVA_DIR, local_files_only=True)
    processor = AutoProcessor.from_pretrained(LLAVA_DIR, local_files_only=True)
    shown = [
        train_llava.Example(
            scene=type(ex.scene)(image=image, objects=ex.scene.objects, size=ex.scene.size),
            kind=ex.kind,
            question=ex.question,
            answer=ex.answer,
        )
        for image, ex in zip(images, examples)
    ]
    answers = train_llava.generate_answers(model, processor, shown, max_new_tokens=3)
    return [answer.split()[0] if answer.split() else "" for answer in answers]


@pytest.mark.slow
def test_ask_command_line_answers_with_this_model(tmp_path):
    """``api-prompt ask IMAGE QUESTION --target hf:assets/synthshapes-llava``: the answer printed is
    the model's answer about the CLIP-prompted image (``--no-api``: about the original)."""
    from typer.testing import CliRunner

    from api_prompt import Prompter
    from cli.app import app

    examples = _colour_questions()
    clip = f"local-dir:{CLIP_DIR}"
    printed = {"api": [], "no-api": []}
    for i, ex in enumerate(examples):
        path = tmp_path / f"{i}.png"
        ex.scene.image.save(path)
        for condition, extra in (("api", []), ("no-api", ["--no-api"])):
            result = CliRunner().invoke(
                app,
                [
                    "ask",
                    str(path),
                    ex.question,
                    "--target",
                    f"hf:{LLAVA_DIR}",
                    "--target-device",
                    "cpu",
                    "--max-new-tokens",
                    "8",
                    "-m",
                    clip,
                    "--device",
                    "cpu",
                    "--quiet",
                    *extra,
                ],
                catch_exceptions=False,
            )
            assert result.exit_code == 0, result.output
            printed[condition].append(result.stdout.strip().split()[0])
    prompter = Prompter(model=clip, device="cpu")
    prompted = [prompter(ex.scene.image, ex.question).image for ex in examples]
    assert printed["api"] == _model_answers(prompted, examples)
    assert printed["no-api"] == _model_answers([ex.scene.image for ex in examples], examples)
    assert printed["no-api"] == [ex.answer for ex in examples]  # held-out questions, answered right


@pytest.mark.slow
def test_playground_target_answers_about_both_images_with_this_model():
    """The playground started with ``--target hf:assets/synthshapes-llava`` (the engine's
    ``target`` string): the answers about the original and the prompted image are the model's."""
    from api_prompt.playground.engine import Playground

    ex = _colour_questions(1)[0]
    playground = Playground(
        device="cpu", target=f"hf:{LLAVA_DIR}", target_options={"device": "cpu"}
    )
    raw = playground.attribute(ex.scene.image, ex.question)
    prompted = playground.view(
        ex.scene.image, raw, resample="lanczos", background=0, geometry="stretch"
    ).prompted
    original_answer, prompted_answer = playground.ask(ex.scene.image, prompted, ex.question)
    assert [original_answer.split()[0], prompted_answer.split()[0]] == _model_answers(
        [ex.scene.image, prompted], [ex, ex]
    )
    assert original_answer.split()[0] == ex.answer


@pytest.mark.slow
def test_proxy_in_front_of_a_server_that_answers_with_this_model():
    """The proxy (CLIP maps) in front of a local chat-completions server whose answers come from
    this model: the client gets the model's answer about the image the proxy prompted."""
    import openai

    from api_prompt import Prompter
    from api_prompt.serve import ServeConfig, create_app
    from scripted_http import RawServer, completion, respond
    from serve_support import decode_data_url_image, png_data_url, running_proxy, sent_urls

    examples = _colour_questions()
    received: list[Image.Image] = []

    def answer_with_the_model(conn, request):
        body = request["json"]
        question = " ".join(
            part["text"] for part in body["messages"][-1]["content"] if part.get("type") == "text"
        )
        (url,) = sent_urls(request)
        image = decode_data_url_image(url, url[5:].split(";")[0])
        received.append(image)
        example = next(ex for ex in examples if ex.question == question)
        respond(200, completion(_model_answers([image], [example])[0]))(conn, request)

    prompter = Prompter(model=f"local-dir:{CLIP_DIR}", device="cpu")
    with RawServer(answer_with_the_model) as upstream:
        app = create_app(prompter, ServeConfig(upstream=upstream.base_url, jpeg_quality=None))
        with running_proxy(app) as base_url:
            client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
            answers = []
            for ex in examples:
                reply = client.chat.completions.create(
                    model="synthshapes-llava",
                    messages=[
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "image_url",
                                    "image_url": {"url": png_data_url(ex.scene.image)},
                                },
                                {"type": "text", "text": ex.question},
                            ],
                        }
                    ],
                )
                answers.append(reply.choices[0].message.content)
    prompted = [prompter(ex.scene.image, ex.question).image for ex in examples]
    assert [np.asarray(image).tolist() for image in received] == [
        np.asarray(image).tolist() for image in prompted
    ]  # lossless (PNG): the upstream saw exactly the prompted image
    assert answers == _model_answers(prompted, examples)
    assert all(answer in train_llava.COLORS for answer in answers)
