"""TEMPORARY shim on the siglip branch only: at merge, take the core helper's clip/__init__.py.

``api_prompt/attribution/clip.py`` is still a module here; a folder of the same name with an
``__init__`` shadows it, so this runs clip.py's source as the package body (same names, same
monkeypatch targets) to make ``api_prompt.attribution.clip.attention_pool`` importable.
"""

from pathlib import Path as _Path

__package__ = "api_prompt.attribution"  # clip.py's relative imports are relative to attribution/
_source = _Path(__file__).resolve().parent.parent / "clip.py"
exec(compile(_source.read_text(), str(_source), "exec"))
