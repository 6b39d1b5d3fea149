"""CLIP backend: agreement with the reference fixture, the decomposition identity, and hygiene.

The golden fixture (tests/fixtures/clip_reference, see its README) is a tiny 6-block ViT, so
every test here runs in seconds on a CPU. Other architectures are built in the tests with random
weights and ``pretrained=None``; nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from api_prompt import hub
from api_prompt.attribution import clip as clip_backend
from api_prompt.attribution.clip import (
    CLIPAttributor,
    cls_attention_contributions,
    cls_contribution_dots,
    crop_region,
)
from api_prompt.attribution.clip import loading as clip_loading
from api_prompt.errors import ConfigError, ModelLoadError, UnsupportedModelError
from api_prompt.maps import minmax
from api_prompt.prompter import Prompter

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "clip_reference"
CASE_NAMES = [
    case["name"] for case in json.loads((FIXTURE_DIR / "cases.json").read_text())["cases"]
]
LAYER = 4  # the fixture's L'


@pytest.fixture(scope="module")
def fixture_model(clip_fixture_dir):
    """(model, preprocess, tokenizer) of the fixture's tiny CLIP, loaded once."""
    name = f"local-dir:{clip_fixture_dir / 'model'}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


@pytest.fixture(scope="module")
def attributor(fixture_model):
    model, preprocess, tokenizer = fixture_model
    return CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer, layer=LAYER)


@pytest.fixture(scope="module")
def images(clip_fixture_dir):
    folder = clip_fixture_dir / "images"
    return {path.stem: Image.open(path).convert("RGB") for path in sorted(folder.glob("*.png"))}


def case_by_name(clip_cases, name):
    return next(case for case in clip_cases if case["name"] == name)


def assert_matches_reference(name, psi_cls, psi_comp, mask, expected):
    np.testing.assert_allclose(
        minmax(psi_cls), minmax(expected[f"{name}_psi_cls"]), atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(
        minmax(psi_comp), minmax(expected[f"{name}_psi_comp"]), atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(mask, expected[f"{name}_mask"], atol=1e-5, rtol=0)
    scaled = 255.0 * expected[f"{name}_mask"].astype(np.float64)
    near_integer = np.abs(scaled - np.round(scaled)) <= 1e-4
    mask_u8 = np.floor(255.0 * mask.astype(np.float32)).astype(np.uint8)
    differs = mask_u8 != expected[f"{name}_mask_u8"]
    assert not (differs & ~near_integer).any(), (
        f"{name}: 8-bit mask differs away from rounding edges"
    )


def assert_image_close(actual: Image.Image, expected_path: Path):
    expected = np.asarray(Image.open(expected_path).convert("RGB"), dtype=np.int16)
    actual = np.asarray(actual.convert("RGB"), dtype=np.int16)
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1


# -- agreement with the reference ----------------------------------------------------------------


@pytest.mark.parametrize("name", CASE_NAMES)
def test_fixture_case_python_api(name, clip_cases, clip_fixture_dir, expected_npz, fixture_model):
    case = case_by_name(clip_cases, name)
    model, preprocess, tokenizer = fixture_model
    attr = CLIPAttributor(
        model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        layer=case["layer"],
        enhance=case["enhance"],
        kernel_size=case["kernel_size"],
    )
    prompter = Prompter(attributor=attr, resample=case["resample"], background=case["background"])
    result = prompter(clip_fixture_dir / case["image"], case["query"])

    amap = result.map
    assert amap.mask.shape == (case["grid"], case["grid"]) and amap.mask.dtype == np.float32
    assert amap.query == case["query"]
    assert_matches_reference(
        name, amap.parts["psi_cls"], amap.parts["psi_comp"], amap.mask, expected_npz
    )
    assert_image_close(result.image, clip_fixture_dir / case["expected_image"])


@pytest.mark.parametrize("name", CASE_NAMES)
def test_raw_maps_match_the_reference_scale(name, clip_cases, expected_npz, fixture_model, images):
    """Ψ itself, not only its min-max normalisation: pins μ/(K·N), β/(K·N), σ and ρ of §1."""
    case = case_by_name(clip_cases, name)
    model, preprocess, tokenizer = fixture_model
    attr = CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer, layer=case["layer"])
    parts = attr.raw_maps([images[Path(case["image"]).stem]], [case["query"]])
    assert sorted(parts) == ["psi_cls", "psi_comp"]
    for part, actual in ((name, tensor[0].numpy()) for name, tensor in parts.items()):
        expected = expected_npz[f"{name}_{part}"]
        np.testing.assert_allclose(actual, expected, atol=1e-5 * np.ptp(expected), rtol=0)


def test_loading_by_local_dir_name_matches_reference(
    clip_cases, clip_fixture_dir, expected_npz, images
):
    case = clip_cases[0]
    attr = CLIPAttributor(
        f"local-dir:{clip_fixture_dir / 'model'}",
        layer=case["layer"],
        enhance=case["enhance"],
        kernel_size=case["kernel_size"],
        device="cpu",
    )
    amap = attr(images[Path(case["image"]).stem], case["query"])[0]
    assert_matches_reference(
        case["name"], amap.parts["psi_cls"], amap.parts["psi_comp"], amap.mask, expected_npz
    )
    description = attr.describe()
    assert description["model"].startswith("local-dir:") and description["layer"] == case["layer"]
    assert len(description["weights_sha256"]) == 16
    assert attr.describe()["weights_sha256"] == description["weights_sha256"]


CLI = Path(sys.executable).parent / "api-prompt"


# Each run starts a fresh Python (torch + open_clip import): one case by default, the rest `slow`.
CLI_CASES = [
    CASE_NAMES[0],
    *(pytest.param(name, marks=pytest.mark.slow) for name in CASE_NAMES[1:]),
]


@pytest.mark.slow
@pytest.mark.skipif(
    not CLI.exists(), reason="the api-prompt command is not installed (pip install -e .)"
)
@pytest.mark.parametrize("name", CLI_CASES)
def test_fixture_case_command_line(name, clip_cases, clip_fixture_dir, expected_npz, tmp_path):
    case = case_by_name(clip_cases, name)
    out, saved_map = tmp_path / "out.png", tmp_path / "out.npz"
    command = [
        str(CLI),
        str(clip_fixture_dir / case["image"]),
        case["query"],
        "--model",
        f"local-dir:{clip_fixture_dir / 'model'}",
        "--layer",
        str(case["layer"]),
        "--enhance",
        str(case["enhance"]),
        "--kernel-size",
        str(case["kernel_size"]),
        "--resample",
        case["resample"].lower(),
        "--background",
        str(case["background"]),
        "-o",
        str(out),
        "--save-map",
        str(saved_map),
        "--device",
        "cpu",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    with np.load(saved_map) as saved:
        assert_matches_reference(
            name, saved["psi_cls"], saved["psi_comp"], saved["mask"], expected_npz
        )
    assert_image_close(Image.open(out), clip_fixture_dir / case["expected_image"])


# -- the decomposition ---------------------------------------------------------------------------


def attention_output_at_cls(block, block_input):
    """What the real attention module adds to the class token (after LayerScale, if any)."""
    caught = {}
    # nn.MultiheadAttention (open_clip 3) returns (output, weights); open_clip 4's Attention the output
    handle = block.attn.register_forward_hook(
        lambda module, args, output: caught.update(
            out=output[0] if isinstance(output, tuple) else output
        )
    )
    try:
        with torch.no_grad():
            block(block_input)
    finally:
        handle.remove()
    return block.ls_1(caught["out"])[:, 0]


def test_contributions_sum_to_the_attention_output(fixture_model, images, attributor):
    model, preprocess, _ = fixture_model
    block = model.visual.transformer.resblocks[LAYER]
    pixels = torch.stack([preprocess(images["wide"]), preprocess(images["tall"])])
    caught = {}
    handle = block.register_forward_pre_hook(lambda module, args: caught.update(x=args[0]))
    try:
        with torch.no_grad():
            model.encode_image(pixels)
    finally:
        handle.remove()
    with torch.no_grad():
        contributions = cls_attention_contributions(block, caught["x"])
    assert contributions.shape == caught["x"].shape
    torch.testing.assert_close(
        contributions.sum(dim=1), attention_output_at_cls(block, caught["x"]), atol=1e-5, rtol=1e-5
    )
    assert_dots_match_contributions(block, caught["x"])


def test_contributions_include_layer_scale():
    from open_clip.transformer import ResidualAttentionBlock

    torch.manual_seed(0)
    block = ResidualAttentionBlock(32, 4, ls_init_value=0.5).eval()
    with torch.no_grad():
        block.ls_1.gamma.uniform_(0.1, 2.0)
        x = torch.randn(2, 10, 32)
        contributions = cls_attention_contributions(block, x)
    torch.testing.assert_close(
        contributions.sum(dim=1), attention_output_at_cls(block, x), atol=1e-5, rtol=1e-5
    )
    assert_dots_match_contributions(block, x)


def assert_dots_match_contributions(block, x):
    """The attributor's lean path (dot products only) equals the explicit c_m projected on w."""
    direction = torch.randn(x.shape[0], x.shape[-1])
    with torch.no_grad():
        explicit = torch.einsum("bnd,bd->bn", cls_attention_contributions(block, x), direction)
        lean = cls_contribution_dots(block, x, direction)
    torch.testing.assert_close(lean, explicit, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_batched_equals_one_by_one(fixture_model, images):
    model, preprocess, tokenizer = fixture_model
    attr = CLIPAttributor(
        model, preprocess=preprocess, tokenizer=tokenizer, layer=LAYER, batch_size=2
    )
    inputs = [images["wide"], images["tall"], images["square"]]
    queries = ["a dog", "read the sign", "a dog"]
    together = attr(inputs, queries)
    for image, query, batched in zip(inputs, queries, together):
        alone = attr([image], [query])[0]
        np.testing.assert_allclose(batched.mask, alone.mask, atol=1e-6)
        for part in ("psi_cls", "psi_comp"):
            np.testing.assert_allclose(batched.parts[part], alone.parts[part], atol=1e-6, rtol=1e-5)
        assert batched.image_size == image.size and batched.region == alone.region


@pytest.mark.slow
def test_fp32_is_deterministic(attributor, images):
    first = attributor(images["wide"], "a red bus")[0]
    second = attributor(images["wide"], "a red bus")[0]
    np.testing.assert_array_equal(first.mask, second.mask)
    np.testing.assert_array_equal(first.parts["psi_cls"], second.parts["psi_cls"])


@pytest.mark.slow
def test_region_is_the_centre_crop(attributor, images):
    wide, tall, square = (attributor(images[k], "x")[0] for k in ("wide", "tall", "square"))
    # wide 151×97: resized to 174×112, crop starts at round(62 / 2) = 31 resized pixels
    assert wide.region == pytest.approx((31 * 151 / 174, 0, 143 * 151 / 174, 97))
    assert tall.region[0] == 0 and tall.region[2] == tall.image_size[0]
    assert square.region == (0.0, 0.0, 112.0, 112.0)


def test_crop_region_with_padding():
    from open_clip.transform import CenterCropOrPad, ResizeKeepRatio
    from torchvision import transforms as T

    longest = T.Compose([ResizeKeepRatio(100, longest=1), CenterCropOrPad(100)])
    left, top, right, bottom = crop_region(longest, (200, 100))
    assert (left, right) == (0.0, 200.0) and top < 0 and bottom > 100


@pytest.mark.slow
def test_text_embeddings_are_cached(fixture_model, images):
    model, preprocess, tokenizer = fixture_model
    calls = []

    def counting_tokenizer(texts):
        calls.append(list(texts))
        return tokenizer(texts)

    attr = CLIPAttributor(model, preprocess=preprocess, tokenizer=counting_tokenizer, layer=LAYER)
    attr([images["wide"], images["tall"]], ["a dog", "a dog"])
    attr(images["square"], "a dog")
    assert calls == [["a dog"]]


# -- the user's model is left as it was ----------------------------------------------------------


def all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, {
        m: m.training for m in model.modules()
    }


def assert_unchanged(model, before):
    weights, modes = before
    after = model.state_dict()
    assert weights.keys() == after.keys()
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert all_hooks(model) == 0
    assert all(m.training == modes[m] for m in model.modules())


def test_model_is_left_unchanged(fixture_model, images):
    model, preprocess, tokenizer = fixture_model
    model.train()
    model.visual.transformer.resblocks[2].eval()  # a mixed state must come back as it was
    try:
        before = snapshot(model)
        attr = CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer, layer=LAYER)
        attr([images["wide"], images["tall"]], "a dog")
        assert_unchanged(model, before)
    finally:
        model.eval()


def test_model_is_left_unchanged_when_a_block_fails(fixture_model, images, monkeypatch):
    model, preprocess, tokenizer = fixture_model
    model.train()
    try:
        before = snapshot(model)
        attr = CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer, layer=LAYER)

        def fail(*args, **kwargs):
            raise RuntimeError("boom")

        monkeypatch.setattr(model.visual.transformer.resblocks[LAYER + 1].mlp, "forward", fail)
        with pytest.raises(RuntimeError, match="boom"):
            attr(images["wide"], "a dog")
        monkeypatch.undo()
        assert_unchanged(model, before)
    finally:
        model.eval()


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [6, -7, 100, 1.5, 4.0, "4", True])
def test_bad_layer_is_a_config_error(fixture_model, layer):
    model, preprocess, tokenizer = fixture_model
    with pytest.raises(ConfigError):
        CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer, layer=layer)


def test_default_and_negative_layer(fixture_model):
    model, preprocess, tokenizer = fixture_model
    assert CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer).layer == 4
    assert CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer, layer=-1).layer == 5


@pytest.mark.parametrize(
    "options",
    [
        {"enhance": 0},
        {"enhance": "10"},
        {"kernel_size": 2},
        {"batch_size": 0},
        {"dtype": "fp8"},
        {"dtype": "bf16"},
        {"preprocess": None},
    ],
)
def test_bad_settings_are_config_errors(fixture_model, options):
    model, preprocess, tokenizer = fixture_model
    kwargs = {"preprocess": preprocess, "tokenizer": tokenizer, **options}
    with pytest.raises(ConfigError):
        CLIPAttributor(model, **kwargs)


@pytest.mark.slow
def test_bf16_follows_fp32(clip_fixture_dir, attributor, images):
    """Low precision runs the model in bf16 but the decomposition in float32: maps stay close."""
    low = CLIPAttributor(
        f"local-dir:{clip_fixture_dir / 'model'}", layer=LAYER, device="cpu", dtype="bf16"
    )
    assert low.describe()["dtype"] == "bfloat16"
    reference, approximate = (
        attributor(images["wide"], "a red bus")[0],
        low(images["wide"], "a red bus")[0],
    )
    for part in ("psi_cls", "psi_comp"):
        assert (
            np.corrcoef(reference.parts[part].ravel(), approximate.parts[part].ravel())[0, 1] > 0.99
        )


def test_fp16_on_cpu_is_refused(clip_fixture_dir):
    with pytest.raises(ConfigError, match="fp16"):
        CLIPAttributor(f"local-dir:{clip_fixture_dir / 'model'}", device="cpu", dtype="fp16")


def test_checkpoint_path_as_model_name_is_explained(clip_fixture_dir):
    with pytest.raises(ConfigError, match="pretrained="):
        CLIPAttributor(str(clip_fixture_dir / "model" / "open_clip_model.safetensors"))


# -- other architectures -------------------------------------------------------------------------


def tiny_clip(**vision):
    vision_cfg = {
        "image_size": 64,
        "patch_size": 16,
        "layers": 4,
        "width": 32,
        "head_width": 8,
        **vision,
    }
    text_cfg = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    torch.manual_seed(0)
    return open_clip.model.CLIP(embed_dim=16, vision_cfg=vision_cfg, text_cfg=text_cfg).eval()


def tiny_tools(model, fixture_model):
    """The eval transform for a tiny model's input size, and the (shared) CLIP tokenizer."""
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    return open_clip.image_transform(image_size, is_train=False), fixture_model[2]


@pytest.mark.parametrize(
    "vision", [{}, {"ls_init_value": 0.1}, {"patch_size": 8, "image_size": 48}]
)
def test_other_grids_and_negative_layers(vision, fixture_model, images):
    model = tiny_clip(**vision)
    preprocess, tokenizer = tiny_tools(model, fixture_model)
    attr = CLIPAttributor(
        model, preprocess=preprocess, tokenizer=tokenizer, layer=-1, kernel_size=1
    )
    assert attr.layer == 3
    grid = model.visual.grid_size[0]
    for amap in attr([images["wide"], images["tall"]], "a dog"):
        assert amap.mask.shape == (grid, grid)
        assert amap.mask.min() == 0.0 and amap.mask.max() == 1.0
        for part in amap.parts.values():
            assert part.shape == (grid, grid) and np.isfinite(part).all() and part.std() > 0


@pytest.mark.parametrize(
    "vision, reason",
    [
        ({"layers": (1, 1, 1, 1), "width": 8, "head_width": 8}, "ModifiedResNet"),
        ({"pool_type": "avg"}, "pool_type"),
        ({"attentional_pool": True, "attn_pooler_heads": 2, "attn_pooler_queries": 4}, "attn_pool"),
        ({"qk_norm": True}, "normalises queries \\(qk_norm\\)"),
    ],
)
def test_unsupported_towers_are_refused(vision, reason, fixture_model):
    model = tiny_clip(**vision)
    preprocess, tokenizer = tiny_tools(model, fixture_model)
    with pytest.raises(UnsupportedModelError, match=reason) as error:
        CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer)
    assert "Supported" in str(error.value)


# -- loading by name -----------------------------------------------------------------------------


def test_openai_weights_get_quickgelu(monkeypatch, caplog, tmp_path):
    """`ViT-L-14-336` + `openai` must not silently run GELU: it is switched to the -quickgelu config."""
    built = {}

    def fake_create(name, **kwargs):
        built.update(name=name, **kwargs)
        raise RuntimeError("stop before building a large model")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    monkeypatch.setattr(
        clip_loading, "_cached_pretrained_file", lambda cfg, cache_dir: str(tmp_path / "w.pt")
    )
    with caplog.at_level("WARNING", logger=clip_backend.__name__), pytest.raises(ModelLoadError):
        CLIPAttributor("ViT-L-14-336", pretrained="openai", device="cpu")
    assert built["name"] == "ViT-L-14-336-quickgelu"
    assert "QuickGELU" in caplog.text
    assert built["force_preprocess_cfg"]["mean"] == open_clip.OPENAI_DATASET_MEAN


def test_builtin_name_with_checkpoint_file(
    clip_fixture_dir, tmp_path, clip_cases, expected_npz, images
):
    """model=<architecture name>, pretrained=<checkpoint path>: the third way to supply weights."""
    config = json.loads((clip_fixture_dir / "model" / "open_clip_config.json").read_text())[
        "model_cfg"
    ]
    (tmp_path / "api-prompt-test-tiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "api-prompt-test-tiny.json")
    case = clip_cases[2]
    attr = CLIPAttributor(
        "api-prompt-test-tiny",
        pretrained=str(clip_fixture_dir / "model" / "open_clip_model.safetensors"),
        layer=LAYER,
        enhance=case["enhance"],
        kernel_size=case["kernel_size"],
        device="cpu",
    )
    amap = attr(images[Path(case["image"]).stem], case["query"])[0]
    np.testing.assert_allclose(amap.mask, expected_npz[f"{case['name']}_mask"], atol=1e-5)


def test_random_weights_warn(monkeypatch, caplog):
    def fake_create(name, **kwargs):
        raise RuntimeError("stop before building the model")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    with caplog.at_level("WARNING", logger=clip_backend.__name__), pytest.raises(ModelLoadError):
        CLIPAttributor("ViT-B-16", device="cpu")
    assert "randomly initialised" in caplog.text


def test_unknown_name_and_tag_are_explained():
    with pytest.raises(ModelLoadError, match="unknown open_clip model"):
        CLIPAttributor("ViT-Nope-1", device="cpu")
    with pytest.raises(ModelLoadError, match="known tags"):
        CLIPAttributor("ViT-B-32", pretrained="no-such-tag", device="cpu")


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Point the hub at a closed local port and the caches at an empty folder."""
    for variable in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return str(tmp_path / "cache")


@pytest.mark.parametrize("offline_flag", [True, False])
@pytest.mark.parametrize(
    "model, pretrained", [("ViT-B-32", "openai"), ("hf-hub:timm/not-cached", None)]
)
def test_missing_weights_fail_fast_offline(
    model, pretrained, offline_flag, no_network, monkeypatch
):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline_flag)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as error:
        CLIPAttributor(model, pretrained=pretrained, device="cpu", cache_dir=no_network)
    assert time.perf_counter() - start < 10
    message = str(error.value)
    assert "local-dir:" in message and "HF_HUB_OFFLINE=1" in message and "pretrained=" in message


def test_probe_gives_up_on_a_silent_host():
    """A host that accepts connections but never answers (a sandbox, a captive proxy) is offline."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        start = time.perf_counter()
        assert not hub.reachable(f"http://127.0.0.1:{port}", timeout=0.5)
        assert time.perf_counter() - start < 2


def test_cached_hf_hub_model_loads_offline(
    clip_fixture_dir, tmp_path, monkeypatch, expected_npz, clip_cases, images
):
    """An hf-hub: model already in the HF cache loads with HF_HUB_OFFLINE=1 and no network."""
    from huggingface_hub import constants

    snapshot_dir = tmp_path / "models--someone--tiny-clip" / "snapshots" / "0123abcd"
    shutil.copytree(clip_fixture_dir / "model", snapshot_dir)
    (tmp_path / "models--someone--tiny-clip" / "refs").mkdir()
    (tmp_path / "models--someone--tiny-clip" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    case = clip_cases[1]
    attr = CLIPAttributor(
        "hf-hub:someone/tiny-clip",
        cache_dir=str(tmp_path),
        layer=LAYER,
        enhance=case["enhance"],
        kernel_size=case["kernel_size"],
        device="cpu",
    )
    amap = attr(images[Path(case["image"]).stem], case["query"])[0]
    np.testing.assert_allclose(amap.mask, expected_npz[f"{case['name']}_mask"], atol=1e-5)
    assert attr.describe()["model"] == "hf-hub:someone/tiny-clip"


# -- attention blocks are recognised by what they compute ------------------------------------------


def attention_modules():
    """(module, expected reason or None): nn.MultiheadAttention, and open_clip's own Attention
    (open_clip 4 uses it in every block) when this open_clip has one."""
    cases = [
        (torch.nn.MultiheadAttention(16, 4), None),
        (torch.nn.MultiheadAttention(16, 4, add_bias_kv=True), "extra key/value biases"),
        (torch.nn.MultiheadAttention(16, 4, kdim=8, vdim=8), "no fused in_proj_weight"),
        (torch.nn.Linear(16, 16), "no fused in_proj_weight, out_proj, num_heads"),
    ]
    own = getattr(open_clip.transformer, "Attention", None)
    if own is not None:
        cases += [
            (own(16, 4), None),
            (own(16, 4, qk_norm=True), "qk_norm"),
            (own(16, 4, scaled_cosine=True), "scaled cosine"),
            (own(16, 4, scale_heads=True), "scales each head"),
        ]
    return cases


@pytest.mark.parametrize("index", range(8))
def test_attention_is_recognised_by_what_it_computes(index):
    from api_prompt.attribution.clip import attention_unsupported_reason

    cases = attention_modules()
    if index >= len(cases):
        pytest.skip(f"open_clip {open_clip.__version__} has no Attention module of its own")
    module, expected = cases[index]
    reason = attention_unsupported_reason(module)
    assert reason == expected if expected is None else expected in reason


def test_every_decomposition_follows_the_protocol():
    from api_prompt.attribution.clip import DECOMPOSITIONS, Decomposition
    from api_prompt.maps import RECIPES

    assert DECOMPOSITIONS and DECOMPOSITIONS[0].name == "class-token"
    for decomposition in DECOMPOSITIONS:
        assert isinstance(decomposition, Decomposition)
        assert set(RECIPES[decomposition.default_recipe].parts) <= set(decomposition.parts)
