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


def test_maps_point_at_the_named_object(shipped):
    """On 60 held-out 3-object scenes the soft-OR mask wins the pointing game far above chance."""
    model, preprocess, tokenizer = shipped
    pairs = held_out_queries(60, n_objects=3)
    attributor = CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer, device="cpu")
    maps = attributor([scene.image for scene, _ in pairs], [phrase_caption([t.phrase]) for _, t in pairs])
    rng = np.random.default_rng(0)
    hits = [score(amap.mask, target.box, scene.size)[0] for amap, (scene, target) in zip(maps, pairs)]
    chance = [score(rng.random((8, 8)), target.box, scene.size)[0] for scene, target in pairs]
    assert np.mean(hits) >= np.mean(chance) + 0.2


def test_command_runs_the_shipped_model(tmp_path):
    scene = make_scene(np.random.default_rng(11), n_objects=2)
    image = tmp_path / "scene.png"
    scene.image.save(image)
    result = subprocess.run(
        [str(Path(sys.executable).with_name("api-prompt")), str(image), phrase_caption([scene.objects[0].phrase]),
         "--model", f"local-dir:{MODEL_DIR}", "--device", "cpu", "-q", "--save-map", str(tmp_path / "m.npz")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "scene_api.png").is_file()
    assert np.load(tmp_path / "m.npz")["mask"].shape == (8, 8)
