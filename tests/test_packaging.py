"""The converter and models.toml work the same from a built wheel and from the editable install.

The wheel is built from a copy of the working tree and installed with --no-deps into a fresh
virtualenv; the dependencies (numpy, gguf, llama-cpp-python...) come from this interpreter's
site-packages through a .pth file, so nothing is downloaded or rebuilt.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import pytest

from helpers import checkpoints

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# What a wheel is built from: the package sources and metadata, not tests, benchmarks or caches.
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".ci",
    ".cache",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "*.gguf",
)
TOP_LEVEL_IGNORE = {"tests", "benchmarks", "demo"}  # only at the root: ossrun/data/demo is package data


def wheel_sources(folder: str, names: list[str]) -> set[str]:
    ignored = set(COPY_IGNORE(folder, names))
    return ignored | (TOP_LEVEL_IGNORE & set(names)) if Path(folder) == ROOT else ignored


# Run inside the interpreter under test, from a folder outside the repository: every package
# pyproject.toml lists is imported, and where it was found is reported.
PROBE = """
import importlib, importlib.resources, importlib.util, json, sys, ossrun.convert.mxfp4, ossrun.server.page
print(json.dumps({
    "page_files": list(ossrun.server.page.names()),
    "packages": {name: importlib.import_module(name).__file__ for name in sys.argv[1:]},
    "top_level_convert": importlib.util.find_spec("convert") is not None,
    "models_toml": importlib.resources.files("ossrun").joinpath("models.toml").read_text(),
}))
"""


def listed_packages() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def probe(python: Path, cwd: Path) -> dict:
    result = subprocess.run([str(python), "-c", PROBE, *listed_packages()], capture_output=True, text=True, cwd=cwd, check=True)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = Path(shutil.copytree(ROOT, tmp_path_factory.mktemp("src") / "ossrun", ignore=wheel_sources, symlinks=True))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(source)],
        check=True,
        capture_output=True,
    )
    (built,) = dist.glob("ossrun-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_python(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel installed (no deps; this interpreter's packages visible)."""
    env = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # Only the dependencies: a plain path entry does not run the editable install's finder.
    (site / "outer-site-packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
    )
    return python


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "ossrun/models.toml" in names
    assert "ossrun/py.typed" in names  # type checkers read the package's annotations (PEP 561)
    assert "ossrun/convert/__init__.py" in names and "ossrun/convert/mxfp4.py" in names
    assert not any(name.startswith("convert/") for name in names)  # never a top-level "convert"
    assert not any(name.startswith("tests/") for name in names)
    # The o200k vocabulary and the demo model's compact checkpoint are package data.
    for name in ("o200k_base.tiktoken", "demo/config.json", "demo/weights.npz"):
        assert f"ossrun/data/{name}" in names
    # The chat page of ossrun serve: its files, nothing to build.
    for name in ("index.html", "chat.css", "chat.js", "conversations.js", "markdown.js", "stream.js", "views.js"):
        assert f"ossrun/server/static/{name}" in names


def test_every_package_is_listed():
    """Each folder of ossrun/ with an __init__.py is a package pyproject.toml installs."""
    folders = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "ossrun").rglob("__init__.py")}
    assert folders | {"ossrun.convert"} == set(listed_packages())


def test_wheel_install(wheel_python, tmp_path):
    found = probe(wheel_python, tmp_path)
    site = Path(wheel_python).parent.parent
    for name, file in found["packages"].items():
        assert Path(file).is_relative_to(site), name
        assert Path(file).parent.relative_to(site).parts[-len(name.split(".")) :] == tuple(name.split("."))
    assert not found["top_level_convert"]
    assert found["models_toml"] == (ROOT / "models.toml").read_text()
    assert found["page_files"] == [
        "chat.css",
        "chat.js",
        "conversations.js",
        "index.html",
        "markdown.js",
        "stream.js",
        "views.js",
    ]


def test_editable_install(tmp_path):
    found = probe(Path(sys.executable), tmp_path)
    assert Path(found["packages"]["ossrun.convert"]) == ROOT / "convert" / "__init__.py"
    assert Path(found["packages"]["ossrun.engine"]) == ROOT / "ossrun" / "engine" / "__init__.py"
    assert not found["top_level_convert"]
    assert found["models_toml"] == (ROOT / "models.toml").read_text()


def test_the_wheels_demo_model_is_the_same_file(wheel_python, tmp_path, monkeypatch):
    """The installed package data builds the demo GGUF, byte for byte the editable install's."""
    build = "from ossrun.store import demo; print(demo.demo_gguf())"
    env = {**os.environ, "OSSRUN_HOME": str(tmp_path / "wheel-home")}
    result = subprocess.run([str(wheel_python), "-c", build], capture_output=True, text=True, check=True, cwd=tmp_path, env=env)
    from_wheel = Path(result.stdout.strip())
    assert from_wheel.is_relative_to(tmp_path / "wheel-home")
    from ossrun.store import demo

    monkeypatch.setenv("OSSRUN_HOME", str(tmp_path / "editable-home"))
    assert filecmp.cmp(from_wheel, demo.demo_gguf(), shallow=False)


def test_the_wheels_converter_writes_the_same_file(wheel_python, tmp_path):
    config = checkpoints.TinyConfig(vocab_rows=320)
    folder = checkpoints.write_hf_checkpoint(tmp_path / "model", checkpoints.make_weights(config), config, tokenizer_dir=None)
    checkpoints.write_byte_tokenizer(folder)
    from_wheel = tmp_path / "wheel.gguf"
    ossrun_script = Path(wheel_python).parent / "ossrun"
    subprocess.run(
        [str(ossrun_script), "convert", str(folder), "-o", str(from_wheel)], check=True, capture_output=True, cwd=tmp_path
    )
    from ossrun.convert import convert

    assert filecmp.cmp(from_wheel, convert(folder, tmp_path / "editable.gguf"), shallow=False)
