"""The documentation: the site builds with warnings as errors, every page is reachable, the
README stays a first screen whose links resolve, and Getting started is all runnable blocks.

(The blocks themselves run in ``tests/test_first_run.py``, in a freshly installed package.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: The marker of the one Getting started block the tests do not run (PyTorch's CPU-only index).
NOT_TESTED = "# not tested here"


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """``(language, text)`` of every fenced code block of a Markdown file, in order."""
    text = path.read_text(encoding="utf-8")
    return [
        (m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)
    ]


def nav_pages() -> set[str]:
    """The pages named in mkdocs.yml's nav (read as text: the file has no custom YAML tags)."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text.split("\nnav:\n", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r":\s*([\w/.-]+\.md)\s*$", nav, re.M))


@pytest.mark.slow
def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    pytest.importorskip(
        "mkdocs", reason="the docs site needs the dev extra: pip install -e '.[dev]'"
    )
    pytest.importorskip("mkdocstrings")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # the Python API page is generated from the docstrings, not left empty
    api = (tmp_path / "site" / "python" / "index.html").read_text(encoding="utf-8")
    assert 'id="api_prompt.prompter.Prompter"' in api
    assert 'id="api_prompt.attribution.clip.attributor.CLIPAttributor"' in api


def test_every_page_is_in_the_nav() -> None:
    pages = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")}
    assert pages - nav_pages() == set(), "pages that no menu entry reaches"
    assert nav_pages() - pages == set(), "menu entries without a page"


def test_readme_is_a_first_screen_whose_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 200
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert local, "the README links into the docs"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert missing == []
    # the two set-up commands stay at the top, the first one being the offline main job
    blocks = [text for language, text in code_blocks(ROOT / "README.md") if language == "bash"]
    assert (
        'pip install . && api-prompt example:synthshapes-23 "a red square" -m synthshapes'
        in blocks[0]
    )
    assert 'pip install -e ".[dev,all]" && python -m pytest' in blocks[0]


def test_getting_started_is_runnable_blocks() -> None:
    blocks = code_blocks(DOCS / "getting-started.md")
    assert {language for language, _ in blocks} <= {"bash", "python"}, (
        "only blocks the first-run test runs"
    )
    skipped = [text for _, text in blocks if NOT_TESTED in text]
    assert len(skipped) == 1 and "download.pytorch.org/whl/cpu" in skipped[0]
    first = [text for language, text in blocks if language == "bash" and "api-prompt" in text][0]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert first.strip() in readme, "README and Getting started start with the same command"


def test_algorithm_is_where_the_code_cites_it() -> None:
    assert (DOCS / "ALGORITHM.md").is_file()
    citing = [
        path
        for folder in ("api_prompt", "cli", "tests", "benchmarks")
        for path in (ROOT / folder).rglob("*.py")
        if path != Path(__file__)
        and re.search(r"(?<!docs/)\bALGORITHM\.md", path.read_text(encoding="utf-8"))
    ]
    assert citing == [], "cite docs/ALGORITHM.md"


def test_the_wheel_lists_every_package() -> None:
    """pyproject.toml names the packages one by one (cli/ is mapped to api_prompt.cli), so a new
    subpackage left out of the list would be missing from the wheel (tests/test_first_run.py
    shows the failure end to end; this says which one, at once)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "api_prompt").rglob("__init__.py")
    }
    assert found - listed == set()
