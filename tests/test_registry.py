"""Backends as specs (:mod:`api_prompt.attribution.registry`) and the torch-free data modules."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def modules_imported_by(code: str) -> set[str]:
    """Top-level module names a fresh Python has in ``sys.modules`` after running ``code``."""
    probe = (
        textwrap.dedent(code)
        + "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


@pytest.mark.parametrize(
    "code",
    [
        "import api_prompt.targets; from api_prompt.targets import wrap, as_target, OpenAITarget",
        "from api_prompt import AttentionMap; from api_prompt.attention_map import AttentionMap",
    ],
)
def test_targets_and_maps_as_data_never_import_torch(code: str) -> None:
    imported = modules_imported_by(code)
    assert "api_prompt" in imported  # the probe ran
    assert "torch" not in imported


# --------------------------------------------------------------------------------------------
# A toy backend: registered once, then the CLI, Prompter and batch take it with no other change

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from api_prompt.attribution.base import AttentionMap, Attributor  # noqa: E402
from api_prompt.attribution.registry import (  # noqa: E402
    BACKENDS,
    BackendOption,
    BackendSpec,
    create_attributor,
    get_backend,
    register_backend,
)
from api_prompt.errors import ConfigError  # noqa: E402
from api_prompt.maps import combine_llava  # noqa: E402


class ToyAttributor(Attributor):
    """No model: a (rows, rows + 1) ramp that depends on the query's length.

    Its maps carry the raw part and (as attributors may) the mask its default recipe makes with
    its own settings; a Prompter makes the mask again with its own recipe and settings.
    """

    name = "toy"
    default_recipe = "llava"
    instances: list[ToyAttributor] = []

    def __init__(self, *, rows: int = 2, model=None, layer=None, device=None, dtype=None) -> None:
        self.rows, self.model, self.device = rows, model, device
        ToyAttributor.instances.append(self)

    def attribute(self, images, queries):
        maps = []
        for image, query in zip(images, queries):
            ramp = np.roll(np.arange(self.rows * (self.rows + 1), dtype=np.float32), len(query))
            parts = {"attention": ramp.reshape(self.rows, self.rows + 1)}
            maps.append(
                AttentionMap(
                    combine_llava(parts["attention"], coe=2.0, kernel_size=3),
                    parts,
                    image.size,
                    (0.0, 0.0, *map(float, image.size)),
                    query,
                )
            )
        return maps

    def describe(self):
        return {**super().describe(), "rows": self.rows}

    def query_overflow(self, query):
        return (len(query), 10) if len(query) > 10 else None


TOY = BackendSpec(
    name="toy",
    loader=f"{__name__}:ToyAttributor",
    help="a model-free backend for tests",
    default_model="none",
    default_layer="none",
    default_recipe="llava",
    options=(BackendOption("rows", int, 2, "rows of the ramp"),),
)


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch):
    """The toy spec registered for one test (the registry is restored afterwards)."""
    monkeypatch.delitem(BACKENDS, "toy", raising=False)
    register_backend(TOY)
    yield TOY
    BACKENDS.pop("toy", None)


@pytest.fixture
def app():
    try:
        from api_prompt.cli.app import app
    except ImportError:  # a source tree that was not pip-installed
        from cli.app import app
    return app


def invoke(app, *args) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path)
    return path


def test_built_in_specs_name_loadable_classes_and_known_recipes() -> None:
    from api_prompt.maps import RECIPES

    for name in ("clip", "siglip", "llava"):
        spec = get_backend(name)
        assert spec.name == name and spec.default_recipe in RECIPES
        assert spec.loader.startswith("api_prompt.attribution.")
    with pytest.raises(
        ConfigError, match="unknown backend 'nope'; choose one of: clip, siglip, llava"
    ):
        get_backend("nope")
    with pytest.raises(ConfigError, match="takes no option 'pretrained'"):
        create_attributor("llava", pretrained="openai")  # refused before anything loads


@pytest.mark.parametrize(
    "name", ["clip", "siglip", "llava", "llava-next", "qwen2-vl", "qwen2.5-vl"]
)
def test_built_in_specs_declare_what_the_constructors_take(name: str) -> None:
    import inspect

    from api_prompt.attribution.registry import COMMON_OPTIONS

    spec = get_backend(name)
    parameters = inspect.signature(spec.load().__init__).parameters
    for option in (*COMMON_OPTIONS, *(option.name for option in spec.options)):
        assert option in parameters, f"{name} spec declares {option!r}, the constructor lacks it"
    default_model = parameters[
        "model"
    ].default  # None: the class's default_model (decoder backends)
    assert (
        default_model if default_model is not None else spec.load().default_model
    ) == spec.default_model
    for option in spec.options:
        default = parameters[option.name].default
        assert option.default == default, (name, option.name, option.default, default)


def test_options_are_typed_from_text() -> None:
    assert BackendOption("n", int, 1, "").convert("12") == 12
    assert BackendOption("x", float, 1.0, "").convert("0.5") == 0.5
    assert BackendOption("b", bool, False, "").convert("yes") is True
    assert BackendOption("s", str, None, "").convert(7) == "7"
    processor = object()
    assert BackendOption("p", object, None, "").convert(processor) is processor
    for option, bad in (
        (BackendOption("n", int, 1, ""), "1.5"),
        (BackendOption("n", int, 1, ""), True),
        (BackendOption("x", float, 1.0, ""), "nan"),
        (BackendOption("b", bool, False, ""), "maybe"),
    ):
        with pytest.raises(ConfigError, match=f"option {option.name!r} must be"):
            option.convert(bad)


def test_prompter_takes_a_registered_backend(toy, photo: Path) -> None:
    from api_prompt import Prompter

    prompter = Prompter(backend="toy", rows="3", kernel_size=1)  # typed by the spec
    assert ToyAttributor.instances[-1].rows == 3
    amap = prompter.attribute(photo, "a query")[0]
    assert amap.grid_shape == (3, 4) and amap.recipe == "llava"
    np.testing.assert_allclose(
        amap.mask, combine_llava(amap.parts["attention"], coe=10.0, kernel_size=1)
    )
    assert prompter.describe()["backend"] == "toy" and prompter.describe()["rows"] == 3
    assert prompter.query_overflow("a much longer query") == (19, 10)  # asked of the attributor
    with pytest.warns(UserWarning, match="19 tokens long"):
        prompter(photo, "a much longer query")
    with pytest.raises(ConfigError, match="toy backend's option 'rows' must be an integer"):
        Prompter(backend="toy", rows="many")
    with pytest.raises(ConfigError, match="toy backend takes no option 'pretrained'"):
        Prompter(backend="toy", pretrained="openai")


def test_cli_takes_a_registered_backend(toy, app, photo: Path, tmp_path: Path) -> None:
    from api_prompt import Prompter

    out, saved = tmp_path / "out.png", tmp_path / "map.npz"
    code, _, stderr = invoke(
        app,
        photo,
        "a query",
        "--backend",
        "toy",
        "-B",
        "rows=3",
        "-k",
        "1",
        "-o",
        out,
        "--save-map",
        saved,
        "-q",
    )
    assert code == 0, stderr
    with np.load(saved) as data:
        assert data["mask"].shape == (3, 4) and "attention" in data.files
    expected = Prompter(backend="toy", rows=3, kernel_size=1)(photo, "a query").image
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))

    for args, words in [
        (["--backend", "nope"], "unknown backend 'nope'; choose one of: clip, siglip, llava"),
        (["--backend", "toy", "-B", "rows=many"], "option 'rows' must be an integer"),
        (["--backend", "toy", "-B", "depth=2"], "toy backend takes no option 'depth'"),
        (["--backend", "toy", "-B", "rows"], "expected KEY=VALUE"),
        (
            ["--backend", "toy", "--pretrained", "openai"],
            "--pretrained is not an option of the toy backend",
        ),
    ]:
        code, stdout, stderr = invoke(app, photo, "a query", "-o", tmp_path / "bad.png", *args)
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and words in lines[0], (args, stderr)
        assert not (tmp_path / "bad.png").exists()


def test_batch_takes_a_registered_backend(toy, app, photo: Path, tmp_path: Path) -> None:
    from api_prompt import Prompter
    from api_prompt.batch import run

    rows = [{"id": f"s{i}", "image": str(photo), "question": "q" * (i + 1)} for i in range(3)]
    source = tmp_path / "q.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))

    summary = run(
        source, tmp_path / "api", Prompter(backend="toy", rows=3), batch_size=2, progress=False
    )
    assert summary.ok == 3
    code, _, stderr = invoke(
        app,
        "batch",
        source,
        "--out",
        tmp_path / "cli",
        "--backend",
        "toy",
        "-B",
        "rows=3",
        "--batch-size",
        "2",
        "-q",
    )
    assert code == 0, stderr
    by_api = sorted(p.read_bytes() for p in (tmp_path / "api" / "images").iterdir())
    by_cli = sorted(p.read_bytes() for p in (tmp_path / "cli" / "images").iterdir())
    assert len(by_cli) == 3 and by_api == by_cli
    settings = json.loads((tmp_path / "cli" / "run.json").read_text())
    assert "toy" in json.dumps(settings)
