"""The lmms-eval entry point: registers the ``api_prompt`` model (see :mod:`.lmms_plugin`).

lmms-eval 0.7 loads every entry point of the group ``lmms_eval.models`` when it builds its model
registry; a payload may be a callable returning a ``ModelManifest``. This module imports nothing
from lmms-eval until lmms-eval calls :func:`manifest`, so it is cheap and safe to load.
"""

from __future__ import annotations

MODEL_ID = "api_prompt"
CLASS_PATH = "api_prompt.evaluation.lmms_plugin.APIPromptModel"


def manifest():
    """lmms-eval's ``ModelManifest`` for the ``api_prompt`` model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
