"""Attention-pool decomposition (SigLIP towers): identities, untouched models, refusals.

Models: open_clip's ``ViT-B-16-SigLIP`` image tower with random weights (built from open_clip's
config, nothing downloaded) and the small attention-pooled model trained on the synthetic shapes
(``assets/synthshapes-siglip``, a timm ``test_vit`` with dynamic image size). The identities are
checked against the tower's own modules, not against the decomposition's helpers.
"""

from __future__ import annotations

import copy
from pathlib import Path

import open_clip
import pytest
import torch
from torch import nn
from torch.func import jvp

from api_prompt.attribution.clip.attention_pool import (
    AttentionPoolDecomposition,
    pool_contributions,
)
from api_prompt.errors import UnsupportedModelError

SIGLIP_DIR = Path(__file__).parents[1] / "assets" / "synthshapes-siglip"


@pytest.fixture(scope="module")
def vit_b_siglip_visual():
    """open_clip's ViT-B-16-SigLIP image tower, random weights (built as open_clip builds it)."""
    from open_clip.timm_model import TimmModel

    config = open_clip.get_model_config("ViT-B-16-SigLIP")
    vision = config["vision_cfg"]
    torch.manual_seed(0)
    visual = TimmModel(
        vision["timm_model_name"],
        embed_dim=config["embed_dim"],
        image_size=vision["image_size"],
        pool=vision["timm_pool"],
        proj=vision["timm_proj"],
        pretrained=vision["timm_model_pretrained"],
    )
    _randomise_biases(visual)
    return visual.eval()


@pytest.fixture(scope="module")
def synthshapes_model():
    model = open_clip.create_model(f"local-dir:{SIGLIP_DIR}")
    return model.eval()


def _randomise_biases(module: nn.Module) -> None:
    """Random init leaves biases and the LayerNorms at 0/1; make every bias term matter."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.ndim == 1:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


def _text(batch: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return nn.functional.normalize(torch.randn(batch, width, generator=generator), dim=-1)


def _pixels(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _forward_with_capture(visual, pixels, text, layer=None):
    decomposition = AttentionPoolDecomposition()
    layer = decomposition.n_layers(visual) - 1 if layer is None else layer
    handles: list = []
    with torch.no_grad():
        capture = decomposition.capture(visual, layer, text, handles)
        features = visual(pixels)
    for handle in handles:
        handle.remove()
    return decomposition, capture, features


def _rest_from_modules(visual):
    """The tower after the pool's output projection, written from timm's head (the test's own R)."""
    trunk, pool = visual.trunk, visual.trunk.attn_pool

    def rest(z):
        y = z + pool.mlp(pool.norm(z))
        return visual.head(trunk.head(trunk.fc_norm(y)))

    return rest


def _check_pool_identity(visual, pixels, text):
    decomposition, capture, features = _forward_with_capture(visual, pixels, text)
    pooled = capture.pooled[:, 0]
    contributions = pool_contributions(visual, capture)  # (B, N, C)
    rest = _rest_from_modules(visual)
    with torch.no_grad():
        assert torch.allclose(rest(pooled), features, atol=1e-5)  # the test's R is right
        # Σ_m c_m = z, the pool's output
        assert torch.allclose(contributions.sum(dim=1), pooled, atol=1e-5)
        linear_part = jvp(rest, (pooled,), (pooled,))[1]  # J z
        push = torch.func.vmap(
            lambda tangent: jvp(rest, (pooled,), (tangent,))[1], in_dims=1, out_dims=1
        )
        pushed = push(contributions)  # J c_m, (B, N, E)
        # the contributions sum to the pooled embedding's linear part
        assert torch.allclose(pushed.sum(dim=1), linear_part, atol=1e-4 * linear_part.norm())
        parts = decomposition.decompose(visual, capture, features, text)
    rho = features.norm(dim=-1, keepdim=True)
    expected = torch.einsum("bne,be->bn", pushed, text) / rho
    first = visual.trunk.num_prefix_tokens if visual.trunk.pool_include_prefix else 0
    grid = decomposition.grid_shape(visual, pixels)
    assert parts["psi_pool"].shape == (pixels.shape[0], *grid)
    assert parts["psi_pool"].dtype == torch.float32
    torch.testing.assert_close(
        parts["psi_pool"], expected[:, first:].reshape(-1, *grid), atol=1e-6, rtol=1e-4
    )
    # the maps are not trivially zero: the identity above is about real numbers
    assert parts["psi_pool"].abs().max() > 1e-4
    return parts


@pytest.mark.slow
def test_vit_b_16_siglip_is_supported_and_the_pool_part_sums_to_the_linear_part(
    vit_b_siglip_visual,
):
    assert AttentionPoolDecomposition().unsupported_reason(vit_b_siglip_visual) is None
    _check_pool_identity(vit_b_siglip_visual, _pixels(2, 224, 224), _text(2, 768))


@pytest.mark.parametrize(
    "name, grid", [("ViT-SO400M-14-SigLIP-384", (27, 27)), ("ViT-B-16-SigLIP2-256", (16, 16))]
)
def test_the_larger_siglip_and_siglip2_towers_are_accepted(name, grid):
    """Built on the meta device (no weights, no memory): the structure is what is checked."""
    from open_clip.timm_model import TimmModel

    config = open_clip.get_model_config(name)
    vision = config["vision_cfg"]
    with torch.device("meta"):
        visual = TimmModel(
            vision["timm_model_name"],
            embed_dim=config["embed_dim"],
            image_size=vision["image_size"],
            pool=vision["timm_pool"],
            proj=vision["timm_proj"],
        )
        pixels = torch.empty(1, 3, *visual.image_size)
    decomposition = AttentionPoolDecomposition()
    assert decomposition.unsupported_reason(visual) is None
    assert decomposition.grid_shape(visual, pixels) == grid


@pytest.mark.slow
def test_trained_model_identity_with_batches_of_mixed_sizes_including_non_square(synthshapes_model):
    visual = synthshapes_model.visual
    assert AttentionPoolDecomposition().unsupported_reason(visual) is None
    square = _check_pool_identity(visual, _pixels(3, 128, 128), _text(3, 64))
    assert square["psi_pool"].shape == (3, 8, 8)
    wide = _check_pool_identity(visual, _pixels(2, 96, 160, seed=1), _text(2, 64, seed=1))
    assert wide["psi_pool"].shape == wide["psi_token"].shape == (2, 6, 10)


@pytest.mark.slow
def test_token_part_is_each_token_alone_through_the_head(synthshapes_model):
    """A pool input made of token m repeated everywhere makes the probe attend to m alone."""
    visual = synthshapes_model.visual
    trunk, pool = visual.trunk, visual.trunk.attn_pool
    pixels, text = _pixels(2, 96, 128, seed=2), _text(2, 64, seed=2)
    grid_h, grid_w = trunk.patch_embed.dynamic_feat_size((96, 128))
    pool_inputs: list[torch.Tensor] = []
    handle = pool.register_forward_pre_hook(lambda module, args: pool_inputs.append(args[0]))
    try:
        parts = AttentionPoolDecomposition().run(visual, pixels, text, layer=len(trunk.blocks) - 1)
    finally:
        handle.remove()
    tokens = pool_inputs[0]  # LN(x_m), (B, P, C)
    with torch.no_grad():
        for m in (0, 5, grid_h * grid_w - 1):
            alone = tokens[:, m : m + 1].expand_as(tokens)
            embedding = visual.head(trunk.head(trunk.fc_norm(pool(alone))))
            expected = nn.functional.cosine_similarity(embedding, text, dim=-1)
            torch.testing.assert_close(
                parts["psi_token"].flatten(1)[:, m], expected, atol=1e-5, rtol=1e-4
            )


def test_token_part_at_an_earlier_block_uses_that_blocks_tokens(synthshapes_model):
    visual = synthshapes_model.visual
    trunk = visual.trunk
    pixels, text = _pixels(2, 128, 128, seed=3), _text(2, 64, seed=3)
    outputs: list[torch.Tensor] = []
    handle = trunk.blocks[2].register_forward_hook(
        lambda module, args, output: outputs.append(output)
    )
    try:
        early = AttentionPoolDecomposition().run(visual, pixels, text, layer=2)
    finally:
        handle.remove()
    last = AttentionPoolDecomposition().run(visual, pixels, text, layer=len(trunk.blocks) - 1)
    torch.testing.assert_close(early["psi_pool"], last["psi_pool"])  # the real pool either way
    with torch.no_grad():
        tokens = trunk.norm(outputs[0][:, trunk.num_prefix_tokens :])
        m = 9
        alone = trunk.attn_pool(tokens[:, m : m + 1].expand_as(tokens))
        expected = nn.functional.cosine_similarity(
            visual.head(trunk.head(trunk.fc_norm(alone))), text, dim=-1
        )
    torch.testing.assert_close(early["psi_token"].flatten(1)[:, m], expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(early["psi_token"], last["psi_token"])


def test_the_model_is_left_untouched(synthshapes_model):
    model = copy.deepcopy(synthshapes_model).train()
    model.visual.trunk.blocks[1].eval()  # a mixed-mode model
    modes = {name: module.training for name, module in model.named_modules()}
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    flags = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    decomposition = AttentionPoolDecomposition()
    decomposition.run(model.visual, _pixels(2, 128, 128), _text(2, 64))
    decomposition.run(model.visual, _pixels(1, 64, 96), _text(1, 64), layer=0)
    assert {name: module.training for name, module in model.named_modules()} == modes
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert {name: parameter.requires_grad for name, parameter in model.named_parameters()} == flags
    assert all(parameter.grad is None for parameter in model.parameters())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_refusals_name_what_is_missing(synthshapes_model):
    decomposition = AttentionPoolDecomposition()
    text_cfg = {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}

    class_token = open_clip.CLIP(
        64,
        {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        text_cfg,
    )
    assert "not an open_clip timm tower" in decomposition.unsupported_reason(class_token.visual)

    coca_style = open_clip.CLIP(
        64,
        {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 16,
            "attentional_pool": True,
        },
        text_cfg,
    )
    assert "own attention pooler (attn_pool" in decomposition.unsupported_reason(coca_style.visual)

    resnet = open_clip.CLIP(64, {"image_size": 32, "layers": (1, 1, 1, 1), "width": 8}, text_cfg)
    assert "ModifiedResNet" in decomposition.unsupported_reason(resnet.visual)

    mean_pooled = open_clip.CLIP(
        64,
        {
            "image_size": 64,
            "timm_model_name": "test_vit",
            "timm_pool": "avg",
            "timm_proj": "linear",
        },
        text_cfg,
    )
    assert "global_pool='avg', not with an attention pool" in decomposition.unsupported_reason(
        mean_pooled.visual
    )

    two_latents = copy.deepcopy(synthshapes_model.visual)
    two_latents.trunk.attn_pool.latent_len = 2
    assert "2 latent queries" in decomposition.unsupported_reason(two_latents)


def test_a_head_that_computes_something_else_is_refused_not_mis_explained(synthshapes_model):
    visual = copy.deepcopy(synthshapes_model.visual)
    pool = visual.trunk.attn_pool
    original = pool.forward
    pool.forward = lambda x, attn_mask=None: 2.0 * original(x, attn_mask)
    with pytest.raises(UnsupportedModelError, match="rebuilt embedding differs"):
        AttentionPoolDecomposition().run(visual, _pixels(1, 128, 128), _text(1, 64))


@pytest.mark.slow
def test_default_mask_points_at_the_named_object_on_held_out_scenes(synthshapes_model):
    """The recipe on the trained model beats a random map by far (README table: 0.55 vs 0.16)."""
    import numpy as np

    from api_prompt.maps import get_recipe
    from benchmarks.synthshapes.localize import held_out_queries, score
    from benchmarks.synthshapes.scenes import phrase_caption

    model = synthshapes_model
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{SIGLIP_DIR}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{SIGLIP_DIR}")
    pairs = held_out_queries(40, 3)
    with torch.no_grad():
        text = model.encode_text(
            tokenizer([phrase_caption([target.phrase]) for _, target in pairs])
        )
    text = nn.functional.normalize(text, dim=-1)
    pixels = torch.stack([preprocess(scene.image) for scene, _ in pairs])
    parts = AttentionPoolDecomposition().run(model.visual, pixels, text)
    masks = get_recipe(AttentionPoolDecomposition.default_recipe)(
        parts, enhance=10.0, kernel_size=3
    ).numpy()
    hits = [score(mask, target.box, scene.size)[0] for mask, (scene, target) in zip(masks, pairs)]
    assert np.mean(hits) >= 0.4


@pytest.mark.slow
def test_through_the_clip_attributor_with_images_of_mixed_sizes():
    """The CLIP attributor picks the attention-pool decomposition for an attention-pooled tower."""
    from PIL import Image

    from api_prompt.attribution.clip import CLIPAttributor

    attributor = CLIPAttributor(f"local-dir:{SIGLIP_DIR}", device="cpu")
    assert attributor.decomposition.name == "attention-pool"
    images = [Image.new("RGB", (64, 64), "red"), Image.new("RGB", (96, 48), "blue")]
    maps = attributor(images, ["a red circle", "a blue square"])
    assert attributor.layer == 4  # n_blocks - 2
    for amap in maps:
        assert amap.mask.shape == (8, 8) and sorted(amap.parts) == ["psi_pool", "psi_token"]
        assert amap.recipe == "siglip-soft-or"
    assert maps[1].region == (24.0, 0.0, 72.0, 48.0)  # centre crop of 96x48


@pytest.mark.slow
def test_siglip_backend_through_the_registry_prompter_and_command_line(tmp_path):
    """--backend siglip: the spec's loader, default recipe and the CLI, on the shipped model."""
    import subprocess
    import sys

    from PIL import Image

    from api_prompt import Prompter
    from api_prompt.attribution.registry import get_backend

    spec = get_backend("siglip")
    assert spec.default_recipe == "siglip-soft-or" and spec.default_model == "ViT-B-16-SigLIP"
    prompter = Prompter(backend="siglip", model=f"local-dir:{SIGLIP_DIR}", device="cpu")
    scene = Image.new("RGB", (80, 64), "white")
    result = prompter(scene, "a red circle")
    assert prompter.recipe.name == "siglip-soft-or" and result.map.recipe == "siglip-soft-or"
    scene_path, out = tmp_path / "scene.png", tmp_path / "out.png"
    scene.save(scene_path)
    command = [
        str(Path(sys.executable).with_name("api-prompt")),
        str(scene_path),
        "a red circle",
        "--backend",
        "siglip",
        "-m",
        f"local-dir:{SIGLIP_DIR}",
        "--device",
        "cpu",
        "-o",
        str(out),
        "-q",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert Image.open(out).tobytes() == result.image.tobytes()
