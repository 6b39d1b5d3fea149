"""The small CLIP the project trains and ships: it loads like any open_clip model, and the
method's maps point at the object the query names (measured, on held-out scenes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest

from api_prompt import CLIPAttributor
from benchmarks.synthshapes.localize import held_out_queries, score
from benchmarks.synthshapes.scenes import make_scene, phrase_caption

MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "synthshapes-clip"


@pytest.fixture(scope="module")
def shipped():
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{MODEL_DIR}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{MODEL_DIR}")
    return model, preprocess, tokenizer


def test_scenes_are_deterministic():
    a = make_scene(np.random.default_rng(5), n_objects=3)
    b = make_scene(np.random.default_rng(5), n_objects=3)
    assert a.objects == b.objects
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_shipped_model_loads_as_local_dir(shipped):
    model, preprocess, _ = shipped
    assert model.visual.grid_size == (8, 8)
    assert (MODEL_DIR / "open_clip_model.safetensors").stat().st_size < 20 * 2**20


@pytest.mark.slow
def test_maps_point_at_the_named_object(shipped):
    """On 60 held-out 3-object scenes the soft-OR mask wins the pointing game far above chance."""
    model, preprocess, tokenizer = shipped
    pairs = held_out_queries(60, n_objects=3)
    attributor = CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer, device="cpu")
    maps = attributor(
        [scene.image for scene, _ in pairs], [phrase_caption([t.phrase]) for _, t in pairs]
    )
    rng = np.random.default_rng(0)
    hits = [
        score(amap.mask, target.box, scene.size)[0] for amap, (scene, target) in zip(maps, pairs)
    ]
    chance = [score(rng.random((8, 8)), target.box, scene.size)[0] for scene, target in pairs]
    assert np.mean(hits) >= np.mean(chance) + 0.2


@pytest.mark.slow
def test_command_runs_the_shipped_model(tmp_path):
    scene = make_scene(np.random.default_rng(11), n_objects=2)
    image = tmp_path / "scene.png"
    scene.image.save(image)
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("api-prompt")),
            str(image),
            phrase_caption([scene.objects[0].phrase]),
            "--model",
            f"local-dir:{MODEL_DIR}",
            "--device",
            "cpu",
            "-q",
            "--save-map",
            str(tmp_path / "m.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "scene_api.png").is_file()
    assert np.load(tmp_path / "m.npz")["mask"].shape == (8, 8)


# --- synthshapes-mcq and its small-object variant (benchmarks/synthshapes/mcq.py) -----------------


def _digest(variant: str, n: int) -> str:
    import hashlib
    import json

    from benchmarks.synthshapes.mcq import make_question

    digest = hashlib.sha256()
    for index in range(n):
        row, scene = make_question(index, variant)
        digest.update(json.dumps(row, sort_keys=True).encode())
        digest.update(np.asarray(scene.image).tobytes())
    return digest.hexdigest()


def test_default_mcq_is_still_the_measured_one():
    """Adding the small variant left the default questions and scenes as they were measured
    (digest of the first 40 made by mcq.py as of the commit before the variant, a0b712e^)."""
    assert (
        _digest("default", 40) == "bc3591b78608327cad55b80df5afe56e4c8e4be256172e157f7accdd6bd622ab"
    )


def test_small_variant_follows_its_recorded_design():
    """160 px scenes, 4 to 6 objects of 12-20 px (0.5-1.6 % of the image each); the templates'
    rules: the object asked about is the only one of its shape (colour questions) or colour
    (shape questions), the right option names it, and colour distractors are the scene's colours first."""
    from benchmarks.synthshapes.mcq import LETTERS, make_question
    from benchmarks.synthshapes.scenes import COLORS, SHAPES, phrase_caption

    for index in range(24):
        row, scene = make_question(index, "small")
        assert row["id"] == f"ssmcq-small-{index:04d}" and scene.image.size == (160, 160)
        assert 4 <= len(scene.objects) == row["n_objects"] <= 6
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert 12 <= x1 - x0 <= 20 and y1 - y0 == x1 - x0
            assert 0.005 <= (x1 - x0) * (y1 - y0) / 160**2 <= 0.016
        options = {letter: row[letter] for letter in LETTERS if letter in row}
        right = options[row["answer"]]
        if index % 2 == 0:
            assert row["category"] == "colour" and len(options) == 4
            shape = row["question"].removeprefix("What colour is the ").removesuffix("?")
            (asked,) = [o for o in scene.objects if o.shape == shape]
            assert right == phrase_caption([f"{asked.color} {shape}"])
            in_scene = list(dict.fromkeys(o.color for o in scene.objects if o.color != asked.color))
            offered = {c for c in COLORS if phrase_caption([f"{c} {shape}"]) in options.values()}
            assert len(offered) == 4 and asked.color in offered
            assert set(in_scene[:3]) <= offered  # the scene's colours first, in scene order
        else:
            assert row["category"] == "shape" and len(options) == 3 and "D" not in row
            colour = row["question"].removeprefix("What shape is the ").removesuffix(" object?")
            (asked,) = [o for o in scene.objects if o.color == colour]
            assert right == phrase_caption([f"{colour} {asked.shape}"])
            assert sorted(options.values()) == sorted(
                phrase_caption([f"{colour} {s}"]) for s in SHAPES
            )
    first, again = make_question(3, "small"), make_question(3, "small")
    assert first[0] == again[0] and np.array_equal(
        np.asarray(first[1].image), np.asarray(again[1].image)
    )


def test_small_variant_command_writes_its_own_file(tmp_path):
    from PIL import Image

    from benchmarks.synthshapes.mcq import main, write_benchmark

    main(["--out", str(tmp_path), "--n", "3", "--variant", "small"])
    rows = (tmp_path / "synthshapes_mcq_small.jsonl").read_text().splitlines()
    assert len(rows) == 3 and not (tmp_path / "synthshapes_mcq.jsonl").exists()
    assert Image.open(tmp_path / "images" / "0002.png").size == (160, 160)
    with pytest.raises(ValueError, match="unknown variant 'tiny'; choose one of: default, small"):
        write_benchmark(tmp_path / "never", 1, "tiny")
    assert not (tmp_path / "never").exists()
