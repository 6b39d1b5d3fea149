"""Loading checkpoints without hanging, shared by every backend (CLIP, LLaVA) and HFTarget.

A name is a local folder or a Hub id (``name`` or ``org/name``). The folder or the local cache is
tried first; the network only when not offline and after one quick request shows it answers,
because ``from_pretrained`` and open_clip retry every file for minutes without a network. Every
failure is one :class:`~api_prompt.errors.ModelLoadError` that ends with the caller's advice.

The pieces: :func:`offline`, :func:`hf_cached_file` (is a file in the HF cache?),
:func:`reachable` / :func:`require_online` (a bounded probe of a download host) and
:func:`load_cache_first` / :func:`check_hub` (``from_pretrained``-style loaders).

What ships inside the package needs no network at all: :func:`builtin_model` turns a built-in
model name (``synthshapes``, the small CLIP trained for this project) into the ``local-dir:`` name
of its folder, and :func:`example_image` names the example scenes shipped beside it.

>>> builtin_model("synthshapes").startswith("local-dir:")
True
>>> builtin_model("ViT-B-16") is None
True
>>> sorted(EXAMPLES)[:2]
['synthshapes-23', 'synthshapes-30']
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError, ModelLoadError

T = TypeVar("T")


_PROBE_TIMEOUT_S = 3.0

_PACKAGE = Path(__file__).resolve().parent
#: Built-in model names and where their open_clip folder is: inside the installed package (the
#: wheel ships it), else in ``assets/`` of a clone of the repository (the same files).
BUILTIN_MODELS: dict[str, tuple[Path, ...]] = {
    "synthshapes": (
        _PACKAGE / "playground" / "synthshapes_clip",
        _PACKAGE.parent / "assets" / "synthshapes-clip",
    ),
}
_OPEN_CLIP_FILES = ("open_clip_config.json", "open_clip_model.safetensors")
#: The example scenes shipped with the package (synthetic shapes), with the question each one
#: was picked for (the map points at the named shape).
EXAMPLES_DIR = _PACKAGE / "playground" / "examples"
EXAMPLES: dict[str, str] = {
    Path(entry["file"]).stem: entry["question"]
    for entry in json.loads((EXAMPLES_DIR / "examples.json").read_text(encoding="utf-8"))
}
#: How a shipped example image is named where a path is expected: ``example:synthshapes-23``.
EXAMPLE_SCHEME = "example:"


def builtin_model(name: Any) -> str | None:
    """``local-dir:<folder>`` for a built-in model name (``synthshapes``), None for any other name.

    A ModelLoadError if the name is built in but its files are missing from this copy.
    """
    if not isinstance(name, str) or name.strip() not in BUILTIN_MODELS:
        return None
    folders = BUILTIN_MODELS[name.strip()]
    for folder in folders:
        if all((folder / file).is_file() for file in _OPEN_CLIP_FILES):
            return f"local-dir:{folder}"
    raise ModelLoadError(
        f"the built-in model {name.strip()!r} is not installed with this copy of api-prompt "
        f"(looked in {', '.join(str(folder) for folder in folders)}); reinstall api-prompt"
    )


def example_image(name: str) -> Path:
    """The file of a shipped example image, by its name (``synthshapes-23``) or as
    ``example:synthshapes-23``; a ConfigError listing the names for any other.

    >>> example_image("example:synthshapes-23").name
    'synthshapes-23.png'
    """
    key = name[len(EXAMPLE_SCHEME) :] if name.startswith(EXAMPLE_SCHEME) else name
    if key not in EXAMPLES:
        raise ConfigError(
            f"no example image {key!r}; the examples are {', '.join(sorted(EXAMPLES))}"
        )
    return EXAMPLES_DIR / f"{key}.png"


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids the network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_offline() -> bool:
    """:func:`offline`, or ``HF_HUB_OFFLINE`` as ``huggingface_hub`` read it when imported."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers and open_clip
        return offline()
    return offline() or bool(constants.HF_HUB_OFFLINE)


def hf_cached_file(repo_id: str, filename: str, cache_dir: str | None = None) -> str | None:
    """Path of ``filename`` of the Hub repository ``repo_id`` if it is in the local HF cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers and open_clip
        return None
    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    return found if isinstance(found, str) else None


def reachable(url: str, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether the URL's host answers an HTTP HEAD request (any status) within ``timeout`` seconds.

    A plain TCP connect is not enough: sandboxes and captive proxies accept connections and then
    never answer, which is exactly where loaders hang in retries. Proxies from the environment are
    honoured (urllib reads them).
    """
    import threading
    import urllib.error
    import urllib.request
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if not parsed.scheme or not parsed.hostname:
        return False
    answered: list[bool] = []

    def probe() -> None:
        request = urllib.request.Request(f"{parsed.scheme}://{parsed.netloc}/", method="HEAD")
        try:
            urllib.request.urlopen(request, timeout=timeout).close()
            answered.append(True)
        except urllib.error.HTTPError:  # the server answered, with an error status: reachable
            answered.append(True)
        except (OSError, ValueError):  # URLError, timeouts, TLS errors, refused connections
            answered.append(False)

    # a thread bounds the DNS lookup too, which socket timeouts do not cover
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(answered and answered[0])


def require_online(what: str, url: str, advice: str) -> None:
    """Return if the download host of ``what`` answers quickly, else raise ModelLoadError at once.

    For the Hugging Face Hub, ``HF_ENDPOINT`` is honoured and ``HF_HUB_OFFLINE`` refuses at once.
    """
    from urllib.parse import urlparse

    if "huggingface.co" in url:
        url = os.environ.get("HF_ENDPOINT", url)
        if _hub_offline():
            raise ModelLoadError(
                f"the weights of {what} are not in the local cache and HF_HUB_OFFLINE is set. {advice}"
            )
    if not reachable(url):
        raise ModelLoadError(
            f"the weights of {what} are not in the local cache and {urlparse(url).hostname} "
            f"cannot be reached (offline?). {advice}"
        )


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a folder: it exists, or is not shaped like ``[org/]name``."""
    return (
        Path(name).expanduser().exists()
        or name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or "\\" in name
    )


def local_folder(name: str, advice: str) -> Path | None:
    """The folder ``name`` points at, or None for a Hub id; ModelLoadError for a missing folder."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if looks_like_path(name):
        raise ModelLoadError(f"model folder {name!r} does not exist. {advice}")
    return None


def check_model_name(name: str | None, *, open_clip: bool, pretrained: str | None = None) -> None:
    """Refuse, without torch or any download, a model name that names a local file wrongly.

    ``open_clip``: the name is read as open_clip reads it (``local-dir:FOLDER``, ``hf-hub:ID``,
    an architecture name with ``pretrained``), else as ``from_pretrained`` does (a Hub id or a
    folder). Names that need the network or the cache are left to the loader.

    >>> check_model_name("local-dir:/no/such/folder", open_clip=True)
    Traceback (most recent call last):
    ...
    api_prompt.errors.ModelLoadError: model folder '/no/such/folder' does not exist; model='local-dir:FOLDER' needs a folder with open_clip_config.json and open_clip_model.safetensors
    """
    if (
        pretrained is not None
        and looks_like_path(pretrained)
        and not Path(pretrained).expanduser().is_file()
    ):
        raise ModelLoadError(
            f"checkpoint file {pretrained!r} does not exist (pretrained={pretrained!r})"
        )
    if name is None:
        return
    if builtin_model(name) is not None:
        if not open_clip:
            raise ConfigError(
                f"{name.strip()!r} is a built-in open_clip (CLIP) model: use it with backend='clip'"
            )
        return
    name = str(name).strip()
    if not open_clip:
        local_folder(
            name, "Pass a Hugging Face model id or an existing folder as model=ID_OR_FOLDER."
        )
        return
    if name.startswith("hf-hub:"):
        return
    if name.startswith("local-dir:"):
        folder = name[len("local-dir:") :]
        path = Path(folder).expanduser()
        needs = "model='local-dir:FOLDER' needs a folder with " + " and ".join(_OPEN_CLIP_FILES)
        if not path.is_dir():
            raise ModelLoadError(f"model folder {folder!r} does not exist; {needs}")
        if not (path / _OPEN_CLIP_FILES[0]).is_file():
            raise ModelLoadError(f"model folder {folder!r} has no {_OPEN_CLIP_FILES[0]}; {needs}")
        return
    path = Path(name).expanduser()
    if path.is_dir():
        raise ConfigError(f"{name!r} is a folder: load it with model='local-dir:{name}'")
    if path.is_file():
        raise ConfigError(
            f"{name!r} is a checkpoint file: name its architecture and pass the file as "
            f"pretrained, e.g. model='ViT-B-16' pretrained={name!r}"
        )
    if looks_like_path(name):
        raise ModelLoadError(
            f"model folder {name!r} does not exist; an open_clip folder is given as "
            f"model='local-dir:FOLDER', a built-in model by name (e.g. model='synthshapes')"
        )


def load_cache_first(
    load: Callable[[bool], T],
    name: str,
    *,
    advice: str,
    what: str = "model",
    local_files_only: bool | None = None,
    revision: str | None = None,
) -> T:
    """``load(local_files_only)``: from the folder or cache, then (unless offline) from the Hub.

    ``local_files_only`` defaults to :func:`offline`. OSError, ValueError and KeyError (what
    ``from_pretrained`` raises for missing or unreadable files) become a ModelLoadError.
    """
    folder = local_folder(name, advice)
    files_only = offline() if local_files_only is None else local_files_only
    try:
        try:
            return load(True)
        except (OSError, ValueError):
            if files_only or folder is not None:
                raise
            check_hub(name, revision, advice)
            return load(False)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        reason = " ".join(str(exc).split())[:300].rstrip(".") or type(exc).__name__
        where = (
            "the folder"
            if folder is not None
            else "the local cache" + ("" if files_only else " or the Hub")
        )
        raise ModelLoadError(
            f"could not load {what} {name!r} from {where}: {reason}. {advice}"
        ) from exc


def check_hub(name: str, revision: str | None, advice: str) -> None:
    """ModelLoadError at once when the Hub cannot be reached or has no such model.

    One metadata request without retries tells in about a second what ``from_pretrained`` would
    take minutes to find out.
    """
    from huggingface_hub import model_info
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        model_info(name, revision=revision, timeout=10)
    except GatedRepoError:
        return  # from_pretrained explains access to gated models itself
    except RevisionNotFoundError:
        raise ModelLoadError(
            f"model {name!r} has no revision {revision!r} on the Hugging Face Hub"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"{name!r} is neither a local folder nor a model on the Hugging Face Hub (a private "
            f"model needs `hf auth login`). {advice}"
        ) from None
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ModelLoadError(
            f"{name!r} is not in the local cache and the Hugging Face Hub cannot be reached "
            f"({reason}). {advice}"
        ) from None


def dtype_argument(dtype: Any) -> dict[str, Any]:
    """``{"dtype": dtype}`` for ``from_pretrained``; ``torch_dtype`` before transformers 4.56.

    Older versions pass an unknown ``dtype`` on to the config and silently load in fp32.
    """
    import transformers

    version = tuple(int(part) for part in transformers.__version__.split(".")[:2] if part.isdigit())
    return {"dtype" if version >= (4, 56) else "torch_dtype": dtype}
