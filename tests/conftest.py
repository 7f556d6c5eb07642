"""Shared test fixtures. Every test is offline: nothing here reaches the network."""

from __future__ import annotations

from pathlib import Path

import pytest

import ossrun

# The o200k vocabulary ships with ossrun as package data.
VOCAB_DIR = Path(ossrun.__file__).parent / "data"

# The python sandbox's fixtures (a local server, an ordinary user...), shared by its test files.
pytest_plugins = ["helpers.sandboxes"]


def pytest_terminal_summary(terminalreporter, config):
    """Where the browser tests left their screenshots, for a person to look at."""
    from helpers.browser import SCREENSHOT_FOLDERS

    for folder in config.stash.get(SCREENSHOT_FOLDERS, []):
        terminalreporter.write_line(f"chat page screenshots: {folder}")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Each test gets its own empty ossrun home and never sees the user's."""
    home = tmp_path_factory.mktemp("ossrun-home")
    monkeypatch.setenv("OSSRUN_HOME", str(home))
    monkeypatch.delenv("OSSRUN_DEBUG", raising=False)
    # Nor the user's hub cache, nor the hub: tests that need one start their own on 127.0.0.1.
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="session")
def encoding():
    """The real gpt-oss harmony encoding, loaded offline from ossrun's packaged vocabulary."""
    from ossrun.harmony.encoding import load_encoding

    return load_encoding(VOCAB_DIR)


@pytest.fixture
def scripted(monkeypatch, encoding):
    """Make ``ossrun run``/``chat`` load a Model over a scripted engine (tests/scripted.py);
    ``scripted(*scripts)`` returns the list of engines made."""
    from helpers.scripted import ScriptedEngine
    from ossrun.cli import options
    from ossrun.model import Model
    from ossrun.store.registry import load_registry

    engines = []

    def install(*scripts):
        def load_model(name, **kwargs):
            engine = ScriptedEngine(encoding, list(scripts))
            engines.append(engine)
            return Model(engine, encoding, name=name or load_registry().default)

        monkeypatch.setattr(options, "load_model", load_model)
        return engines

    return install


# --- Tiny gpt-oss checkpoints and GGUFs (builders in tests/checkpoints.py) --------------------------


@pytest.fixture(scope="session")
def o200k_tokenizer_dir(tmp_path_factory) -> Path:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json of o200k_harmony,
    built from ossrun/data/o200k_base.tiktoken as gpt-oss publishes them."""
    from ossrun.harmony.vocab import write_tokenizer_files

    return write_tokenizer_files(VOCAB_DIR / "o200k_base.tiktoken", tmp_path_factory.mktemp("o200k-tokenizer"))


@pytest.fixture(scope="session")
def tiny_weights():
    """The weights of the tiny test model (HF names; see tests/checkpoints.py)."""
    from helpers.checkpoints import TinyConfig, make_weights

    return TinyConfig(), make_weights(TinyConfig())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_weights, o200k_tokenizer_dir) -> Path:
    """A tiny gpt-oss in the HF layout (2 shards + index, real tokenizer and chat template)."""
    from helpers.checkpoints import write_hf_checkpoint

    config, weights = tiny_weights
    return write_hf_checkpoint(tmp_path_factory.mktemp("tiny-gpt-oss"), weights, config, o200k_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tiny_checkpoint) -> Path:
    """``tiny_checkpoint`` converted with the default layout (MXFP4 experts, Q8_0 matrices):
    2 layers (sliding + full attention), hidden 128, 4 heads of 64 (2 KV heads), 4 experts top-2,
    the real 201088-token vocabulary, context 131072 (YaRN)."""
    from ossrun.convert import convert

    return convert(tiny_checkpoint, tmp_path_factory.mktemp("tiny-gguf") / "tiny-gpt-oss.gguf")


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory) -> Path:
    """The demo GGUF, built from the package data into a session-wide ossrun home."""
    from ossrun.store import demo

    home = tmp_path_factory.mktemp("demo-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OSSRUN_HOME", str(home))
        return demo.demo_gguf()
