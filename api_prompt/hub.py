"""Loading checkpoints without hanging, shared by every backend (CLIP, LLaVA) and HFTarget.

A name is a local folder or a Hub id (``name`` or ``org/name``). The folder or the local cache is
tried first; the network only when not offline and after one quick request shows it answers,
because ``from_pretrained`` and open_clip retry every file for minutes without a network. Every
failure is one :class:`~api_prompt.errors.ModelLoadError` that ends with the caller's advice.

The pieces: :func:`offline`, :func:`hf_cached_file` (is a file in the HF cache?),
:func:`reachable` / :func:`require_online` (a bounded probe of a download host) and
:func:`load_cache_first` / :func:`check_hub` (``from_pretrained``-style loaders).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, TypeVar

from .errors import ModelLoadError

T = TypeVar("T")


_PROBE_TIMEOUT_S = 3.0


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
        where = "the folder" if folder is not None else "the local cache" + ("" if files_only else " or the Hub")
        raise ModelLoadError(f"could not load {what} {name!r} from {where}: {reason}. {advice}") from exc


def check_hub(name: str, revision: str | None, advice: str) -> None:
    """ModelLoadError at once when the Hub cannot be reached or has no such model.

    One metadata request without retries tells in about a second what ``from_pretrained`` would
    take minutes to find out.
    """
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        model_info(name, revision=revision, timeout=10)
    except GatedRepoError:
        return  # from_pretrained explains access to gated models itself
    except RevisionNotFoundError:
        raise ModelLoadError(f"model {name!r} has no revision {revision!r} on the Hugging Face Hub") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"{name!r} is neither a local folder nor a model on the Hugging Face Hub (a private "
            f"model needs `hf auth login`). {advice}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any network failure means the same to the user
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
