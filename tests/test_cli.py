"""The ``api-prompt IMAGE QUERY`` command, against the tiny CLIP of the golden fixture.

Every bad and awkward input a user is likely to meet runs the installed ``api-prompt``
executable in a subprocess, as users do (marked ``installed`` where a list mixes both); the many
further option checks run in-process through Typer's ``CliRunner`` (cheap). Every failure must
exit non-zero with exactly one ``error:`` line on stderr, no traceback, and no file written.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

FIXTURE = Path(__file__).parent / "fixtures" / "clip_reference"
MODEL = f"local-dir:{FIXTURE / 'model'}"
BASE = ["--model", MODEL, "--device", "cpu"]  # the default layer is n_blocks - 2 = 4
QUERY = "What color is the car on the left?"
LONG_QUERY = " ".join(["the red car next to the tall building"] * 12)  # > 77 CLIP tokens


def _executable() -> str | None:
    beside_python = Path(sys.executable).with_name("api-prompt")
    return str(beside_python) if beside_python.exists() else shutil.which("api-prompt")


EXECUTABLE = _executable()
needs_executable = pytest.mark.skipif(EXECUTABLE is None, reason="api-prompt is not installed")


# --------------------------------------------------------------------------------------------
# Helpers


def run_installed(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed command in a subprocess (wide terminal, so help text does not wrap)."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    return subprocess.run(
        [EXECUTABLE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def invoke(*args: str):
    """The command in-process; returns Click's result (exit_code, stdout, stderr)."""
    from cli.app import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def run_cli(*args: str, cwd: Path, installed: bool) -> tuple[int, str, str]:
    """(exit code, stdout, stderr): the installed executable in ``cwd``, or in-process."""
    if installed:
        done = run_installed(*args, cwd=cwd)
        return done.returncode, done.stdout, done.stderr
    result = invoke(*args)
    return result.exit_code, result.stdout, result.stderr


def read(path: Path) -> Image.Image:
    """An image file, fully read and closed."""
    with Image.open(path) as image:
        copy = image.copy()
        copy.format = image.format
        return copy


def files_in(folder: Path) -> set[str]:
    """Every file and folder under ``folder`` (hidden temporaries included)."""
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def assert_one_error_line(stderr: str, *words: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in stderr
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with a copy of a fixture image as ``photo.png``."""
    shutil.copy(FIXTURE / "images" / "wide.png", tmp_path / "photo.png")
    return tmp_path


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width``×``height`` pixels: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written


def _make_bad_image(folder: Path, kind: str) -> str:
    good = (FIXTURE / "images" / "wide.png").read_bytes()
    path = folder / f"{kind}.png"
    if kind == "missing":
        return str(path)
    if kind == "directory":
        path.mkdir()
    elif kind == "not-an-image":
        path.write_text("hello, I am text")
    elif kind == "corrupt":
        path.write_bytes(good[:16] + bytes(range(256)) * 4)
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "bomb":
        path.write_bytes(_png_header_only(20_000, 10_000))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, words",
    [
        ("missing", ["no such file"]),
        ("directory", ["directory"]),
        ("not-an-image", ["not a recognised image"]),
        ("corrupt", ["corrupt"]),
        ("truncated", ["truncated"]),
        ("empty", ["empty"]),
        ("bomb", ["too large"]),
    ],
)
def test_bad_image_fails_cleanly(tmp_path: Path, kind: str, words: list[str]) -> None:
    image = _make_bad_image(tmp_path, kind)
    before = files_in(tmp_path)
    code, stdout, stderr = run_cli(image, QUERY, *BASE, cwd=tmp_path, installed=True)
    assert code == 2
    assert_one_error_line(stderr, kind if kind != "bomb" else "pixels", *words)
    assert stdout == ""
    assert files_in(tmp_path) == before


INSTALLED = pytest.mark.installed  # run through the installed executable

BAD_OPTIONS = [
    pytest.param(["photo.png", ""], ["query is empty"], id="empty-query", marks=INSTALLED),
    pytest.param(["photo.png", "  \t "], ["query is empty"], id="blank-query", marks=INSTALLED),
    pytest.param(
        ["photo.png", QUERY, "--preset", "best"],
        ["unknown preset", "mmvet"],
        id="preset",
        marks=INSTALLED,
    ),
    pytest.param(
        ["photo.png", QUERY, "-k", "2"], ["kernel size", "odd"], id="k-even", marks=INSTALLED
    ),
    pytest.param(["photo.png", QUERY, "-k", "0"], ["kernel size"], id="k-zero", marks=INSTALLED),
    pytest.param(["photo.png", QUERY, "--kernel-size", "-3"], ["kernel size"], id="k-negative"),
    pytest.param(["photo.png", QUERY, "-k", "three"], ["--kernel-size", "integer"], id="k-text"),
    pytest.param(
        ["photo.png", QUERY, "-g", "256"], ["background", "0..255"], id="g-high", marks=INSTALLED
    ),
    pytest.param(
        ["photo.png", QUERY, "--background", "-1"], ["background"], id="g-negative", marks=INSTALLED
    ),
    pytest.param(
        ["photo.png", QUERY, "--resample", "cubic"],
        ["--resample", "lanczos"],
        id="resample",
        marks=INSTALLED,
    ),
    pytest.param(["photo.png", QUERY, "--geometry", "crop"], ["--geometry"], id="geometry"),
    pytest.param(["photo.png", QUERY, "--enhance", "nan"], ["enhance"], id="enhance-nan"),
    pytest.param(["photo.png", QUERY, "--dtype", "fp8"], ["dtype"], id="dtype"),
    pytest.param(["photo.png", QUERY, "--device", "tpu:x"], ["device"], id="device"),
    pytest.param(["photo.png", QUERY, "--backend", "blip"], ["--backend"], id="backend"),
    pytest.param(["photo.png"], ["missing argument", "query"], id="no-query"),
    pytest.param(
        ["photo.png", QUERY, "-o", "out.xyz"], ["extension", ".xyz", ".png"], id="ext-unknown"
    ),
    pytest.param(["photo.png", QUERY, "-o", "out"], ["no extension"], id="ext-none"),
    pytest.param(["photo.png", QUERY, "--heatmap", "heat.abc"], ["'.abc'"], id="heatmap-ext"),
    pytest.param(
        ["photo.png", QUERY, "--save-map", "map.png"], ["--save-map", ".npz"], id="map-ext"
    ),
    pytest.param(
        ["photo.png", QUERY, "-o", "nowhere/out.png"],
        ["does not exist"],
        id="missing-dir",
        marks=INSTALLED,
    ),
    pytest.param(
        ["photo.png", QUERY, "-o", "photo.png/out.png"], ["not a folder"], id="file-as-dir"
    ),
    pytest.param(["photo.png", QUERY, "-o", "sub"], ["no extension"], id="output-is-dir"),
    pytest.param(["photo.png", QUERY, "-o", "sub.png"], ["it is a folder"], id="output-is-dir-png"),
    pytest.param(
        ["photo.png", QUERY, "-o", "a.png", "--heatmap", "a.png"], ["same file"], id="same-file"
    ),
    pytest.param(
        ["photo.png", QUERY, "-q", "--layer", "6"],
        ["layer 6", "out of range"],
        id="layer-high",
        marks=INSTALLED,
    ),
    pytest.param(
        ["photo.png", QUERY, "-q", "--layer", "-7"], ["layer -7", "out of range"], id="layer-low"
    ),
    # Fails only when the heat map is written (Pillow cannot store RGB as XBM), after the image
    # was: the atomic writer must remove what it wrote.
    pytest.param(
        ["photo.png", QUERY, "-q", "--heatmap", "heat.xbm"], ["xbm"], id="fails-while-writing"
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, words", BAD_OPTIONS)
def test_bad_option_fails_cleanly(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    args: list[str],
    words: list[str],
) -> None:
    monkeypatch.chdir(workdir)
    (workdir / "sub").mkdir()
    (workdir / "sub.png").mkdir()
    before = files_in(workdir)
    base = BASE if "--device" not in args else BASE[:2]
    installed = request.node.get_closest_marker("installed") is not None
    code, stdout, stderr = run_cli(*args, *base, cwd=workdir, installed=installed)
    assert code == 2
    assert_one_error_line(stderr, *words)
    assert stdout == ""
    assert files_in(workdir) == before


def test_read_only_folder_fails_before_loading(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder we may not write to (simulated: tests often run as root, who may write anywhere)."""
    import api_prompt.attribution.base as base

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded when the output cannot be written")

    real_access = os.access
    locked = workdir / "locked"
    locked.mkdir()
    monkeypatch.setattr(
        os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode)
    )
    monkeypatch.setattr(base, "create_attributor", no_model)
    result = invoke(str(workdir / "photo.png"), QUERY, "-o", str(locked / "out.png"), *BASE)
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "not writable")
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere"
)
def test_read_only_folder_for_real(workdir: Path) -> None:
    locked = workdir / "locked"
    locked.mkdir(mode=0o500)
    try:
        result = invoke(str(workdir / "photo.png"), QUERY, "-o", str(locked / "out.png"), *BASE)
        assert result.exit_code == 2
        assert_one_error_line(result.stderr, "not writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_option_errors_come_before_the_model_loads(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import api_prompt.attribution.base as base

    monkeypatch.setattr(base, "create_attributor", lambda *a, **k: pytest.fail("model loaded"))
    for args in (["-k", "4"], ["-o", "x.unknown"], ["--preset", "nope"], ["-g", "300"]):
        result = invoke(str(workdir / "photo.png"), QUERY, *args, *BASE)
        assert result.exit_code == 2, args
        assert "Loading" not in result.stderr  # no status line: the model was never started


def test_ask_option_errors_come_before_any_model_loads(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import api_prompt.attribution.base as base
    import api_prompt.targets as targets

    monkeypatch.setattr(base, "create_attributor", lambda *a, **k: pytest.fail("model loaded"))
    monkeypatch.setattr(targets, "create_target", lambda *a, **k: pytest.fail("target loaded"))
    for args in (["-k", "4"], ["--preset", "nope"], ["-g", "300"], ["--dtype", "fp8"]):
        result = invoke(
            "ask", str(workdir / "photo.png"), QUERY, "--target", "openai:m", *args, *BASE
        )
        assert result.exit_code == 2, args
        assert "Loading" not in result.stderr


# --------------------------------------------------------------------------------------------
# Awkward but valid input (the installed command)


def _make_awkward_image(folder: Path, kind: str) -> tuple[Path, tuple[int, int]]:
    """An image of the given kind and the (W, H) the prompted output must have."""
    base = read(FIXTURE / "images" / "tall.png").convert("RGB")
    w, h = base.size
    if kind == "rgba":
        image = base.convert("RGBA")
        image.putalpha(Image.linear_gradient("L").resize(base.size))
        path = folder / "rgba.png"
        image.save(path)
    elif kind == "palette-transparent":
        image = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        path = folder / "palette.png"
        image.save(path, transparency=0)
    elif kind == "animated-gif":
        frames = [base.convert("P"), base.rotate(180).convert("P")]
        path = folder / "anim.gif"
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif kind == "16-bit":
        array = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        path = folder / "deep.png"
        Image.fromarray(array).save(path)
        assert read(path).mode.startswith("I")
    elif kind == "cmyk":
        path = folder / "cmyk.jpg"
        base.convert("CMYK").save(path, quality=95)
    elif kind == "exif-rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90° clockwise to display
        path = folder / "phone.jpg"
        base.save(path, exif=exif.tobytes(), quality=95)
        w, h = h, w
    elif kind == "one-pixel":
        path = folder / "dot.png"
        Image.new("RGB", (1, 1), (200, 30, 30)).save(path)
        w, h = 1, 1
    else:  # pragma: no cover
        raise ValueError(kind)
    return path, (w, h)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind",
    ["rgba", "palette-transparent", "animated-gif", "16-bit", "cmyk", "exif-rotated", "one-pixel"],
)
def test_awkward_images_work(tmp_path: Path, kind: str) -> None:
    path, size = _make_awkward_image(tmp_path, kind)
    code, stdout, stderr = run_cli(str(path), QUERY, *BASE, "-q", cwd=tmp_path, installed=True)
    assert code == 0, stderr
    assert stdout == "" and stderr == ""
    written = read(tmp_path / f"{path.stem}_api.png")
    assert written.format == "PNG" and written.mode == "RGB" and written.size == size


@pytest.mark.slow
@pytest.mark.parametrize("query", ["Où est la voiture rouge ? 車はどこ？ 🚗", "x"])
def test_non_ascii_and_short_queries(workdir: Path, query: str) -> None:
    code, stdout, stderr = run_cli(
        str(workdir / "photo.png"),
        query,
        *BASE,
        "-o",
        str(workdir / "out.png"),
        cwd=workdir,
        installed=True,
    )
    assert code == 0, stderr
    assert stdout.strip() == f"Wrote {workdir / 'out.png'}"
    assert "warning" not in stderr


@pytest.mark.slow
def test_long_query_warns_once_and_still_works(workdir: Path) -> None:
    result = invoke(str(workdir / "photo.png"), LONG_QUERY, *BASE)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "77" in warnings[0] and "truncated" in warnings[0]
    assert (workdir / "photo_api.png").exists()
    quiet = invoke(str(workdir / "photo.png"), LONG_QUERY, *BASE, "-q")
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == ""


@pytest.mark.slow
def test_output_formats(workdir: Path) -> None:
    """JPEG at quality 95, lossless PNG equal to the Python API, and WebP from the extension."""
    from api_prompt import Prompter

    photo = workdir / "photo.png"
    args = [str(photo), QUERY, *BASE, "-q", "--preset", "mmvet", "-g", "30"]
    for name in ("out.png", "out.JPG", "out.webp"):
        assert invoke(*args, "-o", str(workdir / name)).exit_code == 0
    expected = Prompter(model=MODEL, device="cpu", preset="mmvet", background=30)(
        photo, QUERY
    ).image
    assert np.array_equal(np.asarray(read(workdir / "out.png")), np.asarray(expected))
    assert np.array_equal(np.asarray(read(workdir / "out.webp")), np.asarray(expected))
    jpeg = read(workdir / "out.JPG")
    assert jpeg.format == "JPEG"
    assert np.abs(np.asarray(jpeg, dtype=int) - np.asarray(expected, dtype=int)).mean() < 3
    assert sorted(files_in(workdir)) == ["out.JPG", "out.png", "out.webp", "photo.png"]
    assert (os.stat(workdir / "out.png").st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.slow
def test_presets_and_explicit_options(workdir: Path) -> None:
    """A preset fills the unset options; an explicit option beats the preset."""
    photo = workdir / "photo.png"

    def pixels(*options: str) -> np.ndarray:
        out = workdir / "out.png"
        result = invoke(str(photo), QUERY, *BASE, "-q", "-o", str(out), *options)
        assert result.exit_code == 0, result.stderr
        return np.asarray(read(out))

    default = pixels()
    assert np.array_equal(default, pixels("--preset", "package"))
    llava_wild = pixels("--preset", "llava-wild")
    assert not np.array_equal(default, llava_wild)
    explicit = pixels("--enhance", "10", "-k", "7", "--resample", "lanczos", "-g", "200")
    assert np.array_equal(llava_wild, explicit)
    # llava-wild with every setting overridden back to the package's is the package default.
    overridden = pixels("--preset", "llava-wild", "-k", "3", "-g", "0")
    assert np.array_equal(default, overridden)


# --------------------------------------------------------------------------------------------
# The installed executable (subprocesses: a representative set)


@pytest.mark.slow
@needs_executable
def test_installed_help_shows_defaults(tmp_path: Path) -> None:
    result = run_installed("prompt", "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = result.stdout
    for expected in (
        "IMAGE",
        "QUERY",
        "--output",
        "<stem>_api.png",
        "quality 95",
        "--save-map",
        "--heatmap",
        "--preset",
        "default package",
        "(preset: 10)",
        "(preset: 3)",
        "(preset: lanczos)",
        "(preset: 0)",
        "[default: clip]",
        "[default: stretch]",
        "[default: auto]",
        "ViT-L-14-336-quickgelu",
        "n_blocks-2",
        "--quiet",
        "--debug",
    ):
        assert expected in text, expected


@pytest.mark.slow
@needs_executable
def test_installed_version(tmp_path: Path) -> None:
    from api_prompt import __version__

    result = run_installed("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"api-prompt {__version__}"


@pytest.mark.slow
@needs_executable
def test_installed_end_to_end_matches_python_api(workdir: Path) -> None:
    """Default output name, map, heat map, status line, truncation warning and success line."""
    from api_prompt import Prompter

    result = run_installed(
        "photo.png",
        LONG_QUERY,
        *BASE,
        "--save-map",
        "map.npz",
        "--heatmap",
        "heat.jpg",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Wrote photo_api.png (map: map.npz, heat map: heat.jpg)"
    status, warning = result.stderr.strip().splitlines()
    assert status == f"Loading clip model {MODEL} ..."
    assert warning.startswith("warning: the query is") and "truncated to the first 77" in warning
    assert sorted(files_in(workdir)) == ["heat.jpg", "map.npz", "photo.png", "photo_api.png"]

    with pytest.warns(UserWarning, match="truncated"):
        # --save-map asks for the parts in the reference's scale (exact_parts=True), not the early exit
        expected = Prompter(model=MODEL, device="cpu")(
            workdir / "photo.png", LONG_QUERY, exact_parts=True
        )
    assert np.array_equal(np.asarray(read(workdir / "photo_api.png")), np.asarray(expected.image))
    with np.load(workdir / "map.npz") as saved:
        assert {"mask", "psi_cls", "psi_comp"} <= set(saved.files)
        assert saved["mask"].shape == (8, 8) and saved["mask"].dtype == np.float32
        np.testing.assert_array_equal(saved["mask"], expected.map.mask)
    heat = read(workdir / "heat.jpg")
    assert heat.format == "JPEG" and heat.width > expected.image.width  # the colour bar


@pytest.mark.slow
@needs_executable
@pytest.mark.parametrize("case", ["missing-file", "unknown-resample"])
def test_installed_failures(workdir: Path, case: str) -> None:
    """The real executable: one clear line on stderr, no traceback, nothing written."""
    args, words = {
        "missing-file": (["nope.png", QUERY], ["nope.png", "no such file"]),
        "unknown-resample": (["photo.png", QUERY, "--resample", "cubic"], ["--resample"]),
    }[case]
    before = files_in(workdir)
    result = run_installed(*args, *BASE, cwd=workdir)
    assert result.returncode == 2
    assert_one_error_line(result.stderr, *words)
    assert result.stdout == ""
    assert files_in(workdir) == before


@pytest.mark.slow
@needs_executable
def test_installed_debug_shows_the_traceback(workdir: Path) -> None:
    result = run_installed("photo.png", QUERY, *BASE, "-k", "4", "--debug", cwd=workdir)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "kernel size" in result.stderr


# --------------------------------------------------------------------------------------------
# Prompt styles: --style and --style-option on every command that makes a prompt


STYLED = [
    (
        "crop",
        {"crop_size": 64, "one_image": "crop"},
        ["-S", "crop_size=64", "-S", "one_image=crop"],
    ),
    ("crop", {"crop_size": 64}, ["-S", "crop_size=64"]),  # side by side
    ("box", {"color": "blue", "width": 3}, ["-S", "color=blue", "--style-option", "width=3"]),
    ("blur", {"blur": 0.05}, ["-S", "blur=0.05"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "style, options, args", STYLED, ids=["crop-alone", "crop-side-by-side", "box", "blur"]
)
def test_prompt_style_options_give_the_python_apis_pixels(
    workdir: Path, style: str, options: dict, args: list[str]
) -> None:
    from api_prompt import Prompter

    result = invoke(
        str(workdir / "photo.png"),
        QUERY,
        *BASE,
        "--style",
        style,
        *args,
        "-o",
        str(workdir / "styled.png"),
        "-q",
    )
    assert result.exit_code == 0, result.stderr
    expected = Prompter(model=MODEL, device="cpu", style=style, style_options=options)(
        workdir / "photo.png", QUERY
    )
    assert np.array_equal(
        np.asarray(read(workdir / "styled.png")), np.asarray(expected.image.convert("RGB"))
    )
    if options.get("one_image") == "crop":  # the crop alone: as the style's second image
        assert read(workdir / "styled.png").size == expected.images[1].size


@pytest.mark.slow
def test_batch_writes_the_style_a_one_image_output_asks_for(workdir: Path, tmp_path: Path) -> None:
    import json

    from api_prompt import Prompter
    from api_prompt.batch import run

    rows = [
        {"id": f"s{i}", "image": str(workdir / "photo.png"), "question": q}
        for i, q in enumerate([QUERY, "Is there a dog?"])
    ]
    source = tmp_path / "q.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    style = {"crop_size": 64, "one_image": "crop"}
    run(
        source,
        tmp_path / "api",
        Prompter(model=MODEL, device="cpu", style="crop", style_options=style),
        progress=False,
    )
    result = invoke(
        "batch",
        str(source),
        "--out",
        str(tmp_path / "cli"),
        *BASE,
        "--style",
        "crop",
        "-S",
        "crop_size=64",
        "-S",
        "one_image=crop",
        "-q",
    )
    assert result.exit_code == 0, result.stderr
    by_api = sorted(p.read_bytes() for p in (tmp_path / "api" / "images").iterdir())
    by_cli = sorted(p.read_bytes() for p in (tmp_path / "cli" / "images").iterdir())
    assert len(by_cli) == 2 and by_api == by_cli
    with Image.open(
        tmp_path / "cli" / "images" / "s0.png"
    ) as image:  # the crop, not the whole photo
        assert image.size != Image.open(workdir / "photo.png").size


def test_serve_passes_the_style_and_its_typed_options_to_the_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import signal

    import uvicorn

    import api_prompt.serve.app as serve_app

    made = {}

    def create_app(prompter, config, **kwargs):
        made.update(kwargs, prompter=prompter)
        return object()

    monkeypatch.setattr(serve_app, "create_app", create_app)
    monkeypatch.setattr(uvicorn.Server, "__init__", lambda self, config: None)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    result = invoke(
        "serve",
        "--upstream",
        "http://127.0.0.1:9/v1",
        "--port",
        "0",
        *BASE,
        "--style",
        "crop",
        "-S",
        "crop_size=64",
        "-S",
        "zoom=32",
        "-S",
        "width=5",
        "-q",
    )
    assert result.exit_code == 0, result.stderr
    # a request may ask for another style: the options of every style are the server's defaults
    assert made["style"] == "crop" and made["style_options"] == {
        "crop_size": 64,
        "zoom": 32,
        "width": 5,
    }
    assert made["prompter"].style.name == "crop" and made["prompter"].style.zoom == 32

    result = invoke(
        "serve",
        "--upstream",
        "http://127.0.0.1:9/v1",
        "--port",
        "0",
        *BASE,
        "--style",
        "crop",
        "-S",
        "zoom=wide",
    )
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == "error: the crop style's option 'zoom' must be an integer, got 'wide'"
    )


def test_playground_opens_with_the_style_and_takes_options_of_every_style_it_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gradio = pytest.importorskip("gradio", reason="pip install -e '.[playground]'")
    from api_prompt.playground import app as page_module

    pages = []
    monkeypatch.setattr(
        page_module,
        "build_app",
        lambda playground, **kw: pages.append(playground) or gradio.Blocks(),
    )
    monkeypatch.setattr(gradio.Blocks, "launch", lambda page, **options: None)
    result = invoke(
        "playground",
        "--device",
        "cpu",
        "--style",
        "crop",
        "-S",
        "crop_size=64",
        "-S",
        "blur=0.1",
        "-q",
    )
    assert result.exit_code == 0, result.stderr
    assert pages[0].style == "crop" and pages[0].style_options == {"crop_size": 64, "blur": 0.1}
    shown = pages[0].styles(resample="lanczos", background=0, geometry="stretch")
    assert shown["crop"].crop_size == 64 and shown["blur"].blur == 0.1

    for args, words in [
        (
            ["--style", "crop", "-S", "crop_size=big"],
            "the crop style's option 'crop_size' must be an integer",
        ),
        (["--recipe", "llava"], "the playground does not take --recipe"),
    ]:
        result = invoke("playground", "--device", "cpu", *args)
        assert (
            result.exit_code == 2
            and words in result.stderr
            and len(result.stderr.strip().splitlines()) == 1
        )


def test_a_batch_folder_written_before_styles_is_still_done_without_the_model(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    rows = [{"id": "s0", "image": str(workdir / "photo.png"), "question": QUERY}]
    source = tmp_path / "q.jsonl"
    source.write_text(json.dumps(rows[0]) + "\n")
    out = tmp_path / "out"
    assert invoke("batch", str(source), "--out", str(out), *BASE, "-q").exit_code == 0
    run_json = json.loads((out / "run.json").read_text())
    request = run_json["run"]["request"]
    # what a run recorded before --recipe, --style and --style-option existed
    assert not {"recipe", "style", "style_options"} & set(request)

    import cli.options

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although every sample was done")

    monkeypatch.setattr(cli.options.PromptOptions, "build", no_model)
    assert invoke("batch", str(source), "--out", str(out), *BASE, "-q").exit_code == 0
    with pytest.raises(
        AssertionError, match="the model was loaded"
    ):  # a new folder needs the model
        invoke(
            "batch", str(source), "--out", str(tmp_path / "styled"), *BASE, "--style", "blur", "-q"
        )
