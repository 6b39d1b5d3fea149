"""Loading open_clip models by name, offline when the weights are local, or adopting an instance.

Names: built-in architectures with a ``pretrained`` tag or checkpoint file, ``hf-hub:org/repo``,
``local-dir:/folder``, and the models shipped in the package (``synthshapes``,
:data:`api_prompt.hub.BUILTIN_MODELS`). The local files are found first (HF cache, open_clip's URL cache);
the network only after a bounded probe (:mod:`api_prompt.hub`, shared with the other backends),
so a machine without network fails in seconds with advice instead of a minute of retries.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ... import hub
from ...errors import ConfigError, ModelLoadError, UnsupportedModelError
from ..base import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

#: The paper's auxiliary model: OpenAI CLIP ViT-L/14 at 336 px (QuickGELU, as trained).
DEFAULT_MODEL = "ViT-L-14-336-quickgelu"
DEFAULT_PRETRAINED = "openai"
#: The ``siglip`` backend's default: SigLIP ViT-B/16 at 224 px, with its only open_clip weights.
SIGLIP_DEFAULT_MODEL = "ViT-B-16-SigLIP"
SIGLIP_DEFAULT_PRETRAINED = "webli"
#: the weights a backend's default model is loaded with when no pretrained tag is given
DEFAULT_TAGS = {DEFAULT_MODEL: DEFAULT_PRETRAINED, SIGLIP_DEFAULT_MODEL: SIGLIP_DEFAULT_PRETRAINED}

HOW_TO_SUPPLY_WEIGHTS = (
    "Supply the weights locally instead: model='local-dir:/path/to/folder' (a folder with "
    "open_clip_config.json and the weights file); or model='hf-hub:org/repo' with the repository "
    "already in the Hugging Face cache (HF_HOME) and HF_HUB_OFFLINE=1; or an architecture name "
    "with a checkpoint file, e.g. model='ViT-B-16', pretrained='/path/to/checkpoint.safetensors'."
)


def resolve_name(model: Any, pretrained: str | None) -> tuple[str, str | None]:
    """Check a model name and fill in the default pretrained tag; no loading yet."""
    if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
        raise ConfigError(
            f"model must be an open_clip name or an open_clip model instance, got {model!r}"
        )
    name = hub.builtin_model(str(model).strip()) or str(model).strip()  # "synthshapes": shipped
    schema = _schema(name)
    if schema is not None:
        if pretrained is not None:
            raise ConfigError(
                f"pretrained={pretrained!r} cannot be combined with a {schema}: model; "
                f"the weights come from the {schema} source"
            )
        if schema == "local-dir":  # absolute, so run manifests compare equal from any folder
            name = "local-dir:" + str(Path(name.split(":", 1)[1]).expanduser().resolve())
        return name, None
    if Path(name).is_file():
        raise ConfigError(
            f"{name!r} is a checkpoint file: name its architecture and pass the file as "
            f"pretrained, e.g. model='ViT-B-16', pretrained={name!r}"
        )
    if Path(name).is_dir():
        raise ConfigError(f"{name!r} is a folder: load it with model='local-dir:{name}'")
    if pretrained is None:
        pretrained = DEFAULT_TAGS.get(name)
    return name, pretrained


def _schema(name: str) -> str | None:
    for schema in ("hf-hub", "local-dir"):
        if name.startswith(schema + ":"):
            return schema
    return None


def load_open_clip(
    name: str,
    pretrained: str | None,
    device: torch.device,
    dtype: torch.dtype,
    cache_dir: str | None,
):
    """open_clip's model, eval transform, tokenizer and the architecture name actually built.

    Weights must be on disk or their download host must answer at once (see :func:`_require_online`).
    """
    import open_clip

    options: dict[str, Any] = {}
    source = architecture = name
    schema = _schema(name)
    if schema == "hf-hub":
        cached = _cached_hf_hub_folder(name[len("hf-hub:") :], cache_dir)
        if cached is None:
            _require_online(name, "https://huggingface.co")
        source = name if cached is None else cached
    elif schema is None:
        _check_builtin_name(name)
        if pretrained is None:
            logger.warning(
                "no pretrained weights for %s: the model is randomly initialised "
                "(pass pretrained=TAG or a checkpoint path)",
                name,
            )
        elif not os.path.isfile(pretrained):
            source, options = _builtin_with_tag(name, pretrained, cache_dir)
            architecture = source
            pretrained = options.pop("pretrained")

    precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            source,
            pretrained=pretrained if _schema(source) is None else None,
            device=device,
            precision=precision,
            cache_dir=cache_dir,
            **options,
        )
        tokenizer = open_clip.get_tokenizer(source, cache_dir=cache_dir)
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/FileNotFoundError/...
        reason = " ".join(str(exc).split())  # one line: open_clip/hub messages span several
        raise ModelLoadError(f"could not load open_clip model {name!r}: {reason}") from exc
    model.eval()
    return model, preprocess, tokenizer, architecture


def _check_builtin_name(name: str) -> None:
    import open_clip

    if open_clip.get_model_config(name.replace("/", "-")) is None:
        raise ModelLoadError(
            f"unknown open_clip model {name!r}: use a built-in name (open_clip.list_models(), "
            f"e.g. {DEFAULT_MODEL!r}), or 'hf-hub:org/repo', or 'local-dir:/path/to/folder'"
        )


def _builtin_with_tag(name: str, tag: str, cache_dir: str | None) -> tuple[str, dict[str, Any]]:
    """Resolve a (built-in name, pretrained tag) pair to something open_clip loads offline if it can.

    Returns the model name to build (possibly its ``-quickgelu`` twin) and options for
    ``create_model_and_transforms``, among them the ``pretrained`` value to pass: the cached
    checkpoint file when the weights are already local (so no network request is made at all),
    else the tag itself (open_clip downloads it) once the download host has answered a quick probe.
    """
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg
    from open_clip.transform import PreprocessCfg

    tag_cfg = get_pretrained_cfg(name, tag)
    if not tag_cfg:
        raise ModelLoadError(
            f"pretrained={tag!r} is neither a known tag for {name!r} nor an existing file; "
            f"known tags: {', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'}"
        )
    name = _with_matching_activation(name, tag, tag_cfg)
    local_file = _cached_pretrained_file(tag_cfg, cache_dir)
    if local_file is None:
        _require_online(f"{name} pretrained={tag!r}", _download_url(tag_cfg))
        return name, {"pretrained": tag}
    preprocess_keys = set(PreprocessCfg.__dataclass_fields__)
    return name, {
        "pretrained": local_file,
        # what open_clip would take from the tag: mean/std/interpolation/resize_mode
        "force_preprocess_cfg": {k: v for k, v in tag_cfg.items() if k in preprocess_keys},
    }


def _with_matching_activation(name: str, tag: str, tag_cfg: dict) -> str:
    """Switch to the ``-quickgelu`` config when the weights were trained with QuickGELU."""
    import open_clip

    model_quick_gelu = bool(open_clip.get_model_config(name).get("quick_gelu", False))
    if not tag_cfg.get("quick_gelu", False) or model_quick_gelu:
        return name
    twin = f"{name}-quickgelu"
    if open_clip.get_model_config(twin) is None:
        raise ModelLoadError(
            f"pretrained={tag!r} was trained with QuickGELU but {name!r} uses GELU and open_clip "
            f"has no {twin!r} config; load a -quickgelu model name"
        )
    logger.warning(
        "%s weights %r were trained with QuickGELU: loading %r instead of %r", name, tag, twin, name
    )
    return twin


def _cached_pretrained_file(tag_cfg: dict, cache_dir: str | None) -> str | None:
    """Path of the tag's checkpoint if it is already on disk (HF cache or open_clip's URL cache)."""
    if tag_cfg.get("file"):
        return tag_cfg["file"] if os.path.isfile(tag_cfg["file"]) else None
    hub_path = tag_cfg.get("hf_hub", "")
    if hub_path:
        from open_clip.pretrained import _get_safe_alternatives

        repo_id, filename = os.path.split(hub_path)
        filename = filename or "open_clip_pytorch_model.bin"
        for candidate in [*_get_safe_alternatives(filename), filename]:
            found = hub.hf_cached_file(repo_id, candidate, cache_dir)
            if found:
                return found
    url = tag_cfg.get("url", "")
    if url:
        folder = cache_dir or os.path.expanduser("~/.cache/clip")
        path = os.path.join(folder, os.path.basename(url))
        if os.path.isfile(path):
            return path
    return None


def _cached_hf_hub_folder(repo_id: str, cache_dir: str | None) -> str | None:
    """``local-dir:`` name of the cached snapshot of an ``hf-hub:`` model, if config and weights are cached."""
    config = hub.hf_cached_file(repo_id, "open_clip_config.json", cache_dir)
    if config is None:
        return None
    for weights in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if hub.hf_cached_file(repo_id, weights, cache_dir):
            return "local-dir:" + os.path.dirname(config)
    return None


def _download_url(tag_cfg: dict) -> str:
    if tag_cfg.get("hf_hub"):
        return "https://huggingface.co"
    return tag_cfg.get("url", "") or "https://huggingface.co"


def _require_online(what: str, url: str) -> None:
    """ModelLoadError at once when the download host of ``what`` does not answer (see
    :func:`api_prompt.hub.require_online`); without this open_clip spends about a minute in retries."""
    hub.require_online(what, url, HOW_TO_SUPPLY_WEIGHTS)


def adopt_instance(model: nn.Module, preprocess, tokenizer, device, dtype):
    """Use a caller's model where and as it is: never moved, cast or otherwise changed."""
    if preprocess is None or tokenizer is None:
        raise ConfigError(
            "a model instance needs its eval transform and tokenizer: CLIPAttributor(model, "
            "preprocess=preprocess, tokenizer=open_clip.get_tokenizer(name))"
        )
    if not hasattr(model, "visual") or not hasattr(model, "encode_image"):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not an open_clip CLIP model (no .visual / .encode_image)"
        )
    model_device = module_device(model)
    if device is not None and str(device) != "auto":
        requested = resolve_device(device)
        same_index = requested.index is None or requested.index == model_device.index
        if requested.type != model_device.type or not same_index:
            raise ConfigError(
                f"the model is on {model_device} but device={device!r} was requested; "
                f"move the model first or pass device='auto'"
            )
    if dtype is not None and resolve_dtype(dtype) != module_dtype(model.visual):
        raise ConfigError(
            f"the model's weights are {module_dtype(model.visual)} but dtype={dtype!r} was "
            f"requested; cast the model first or leave dtype unset"
        )
    return model, preprocess, tokenizer


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def module_dtype(visual: nn.Module) -> torch.dtype:
    """The dtype images must have for ``visual``: that of its first convolution or linear layer
    (the patch embedding, whatever the tower calls it)."""
    for module in visual.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return module.weight.dtype
    return next(visual.parameters()).dtype


def check_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    if dtype == torch.float16 and device.type == "cpu":
        raise ConfigError("fp16 is not supported on CPU: use fp32 (default) or bf16")
    return dtype


def weights_sha256(model: nn.Module, length: int = 16) -> str:
    """Short sha256 of every state_dict tensor (names, dtypes, shapes and bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:length]
