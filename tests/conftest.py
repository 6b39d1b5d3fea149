"""Shared pytest fixtures.

The golden CLIP fixture lives in ``tests/fixtures/clip_reference`` (a copy, so tests never read
outside the repository). See its README.md for what each file holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

CLIP_FIXTURE_DIR = Path(__file__).parent / "fixtures" / "clip_reference"


@pytest.fixture(autouse=True)
def pil_default_truncated_image_handling():
    """Importing lmms-eval (its plugin tests do) turns on PIL's process-wide
    ``LOAD_TRUNCATED_IMAGES``; every test here starts from PIL's default, whatever ran before."""
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False


@pytest.fixture(scope="session")
def clip_fixture_dir() -> Path:
    """Folder of the golden CLIP fixture (model/, images/, expected/, cases.json, expected.npz)."""
    return CLIP_FIXTURE_DIR


@pytest.fixture(scope="session")
def clip_cases(clip_fixture_dir: Path) -> list[dict]:
    """The parsed ``cases`` list of cases.json (each with name, image, query, layer, ...)."""
    return json.loads((clip_fixture_dir / "cases.json").read_text())["cases"]


@pytest.fixture(scope="session")
def expected_npz(clip_fixture_dir: Path) -> dict[str, np.ndarray]:
    """expected.npz loaded into a plain dict: ``<case>_psi_cls``, ``_psi_comp``, ``_mask``, ``_mask_u8``."""
    with np.load(clip_fixture_dir / "expected.npz") as data:
        return {key: data[key] for key in data.files}
