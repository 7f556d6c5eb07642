"""The model registry: the shipped models.toml, its validation, user overrides, MODEL resolution."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ossrun.errors import ModelError, RegistryError
from ossrun.store.local import FILE, memory_shortfall
from ossrun.store.registry import builtin_file, load_registry, load_registry_files, user_file
from ossrun.store.resolve import resolve_model
from ossrun.units import format_memory, format_size, parse_count, parse_size

ROOT = Path(__file__).parent.parent
GIB = 1024**3

# A complete entry; tests break one field at a time.
GOOD_ENTRY = """
[models.mini]
description = "a small model"
aliases = ["m"]
parameters = { total = "2B", active = "1B" }
context_length = 8192
memory_required = "3 GiB"
reasoning_effort = "low"
sampling = { temperature = 1.0, top_p = 1.0 }
gguf = { repo = "someone/mini-GGUF", files = ["mini.gguf"], download_size = "2.1 GB" }
"""


def write_user_file(text: str) -> Path:
    path = user_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_shipped_registry_describes_both_models():
    registry = load_registry()
    small, large = registry.get("gpt-oss-20b"), registry.get("gpt-oss-120b")
    assert registry.default == "gpt-oss-20b"
    assert registry.get("20b") is small and registry.get("120b") is large
    assert (small.parameters_total, small.parameters_active) == (20_900_000_000, 3_600_000_000)
    assert (large.parameters_total, large.parameters_active) == (116_800_000_000, 5_100_000_000)
    for entry in (small, large):
        assert entry.context_length == 131072
        assert (entry.sampling.temperature, entry.sampling.top_p) == (1.0, 1.0)
        assert entry.reasoning_effort == "medium"
        assert entry.safetensors.original == "original"
    assert small.gguf.repo == "ggml-org/gpt-oss-20b-GGUF" and small.gguf.files == ("gpt-oss-20b-mxfp4.gguf",)
    assert large.gguf.repo == "ggml-org/gpt-oss-120b-GGUF"
    assert [f.split("-")[-3] for f in large.gguf.files] == ["00001", "00002", "00003"]
    assert (small.safetensors.repo, large.safetensors.repo) == ("openai/gpt-oss-20b", "openai/gpt-oss-120b")
    # What the memory check relies on: 20b fits a 24 GiB machine, 120b (about 61 GiB) does not.
    assert small.memory_bytes < 24 * GIB < 60 * GIB < large.memory_bytes < 64 * GIB
    assert small.gguf.download_bytes == 12_100_000_000


def test_the_package_reads_the_repository_models_toml():
    assert builtin_file().read_bytes() == (ROOT / "models.toml").read_bytes()


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ('description = ""', "description", "non-empty text"),
        ('context_length = "long"', "context_length", "positive whole number"),
        ('memory_required = "12 parsecs"', "memory_required", "not a size"),
        ('reasoning_effort = "extreme"', "reasoning_effort", "low, medium, high"),
        ("sampling = { temperature = 1.0, top_p = 1.5 }", "sampling.top_p", "at most 1"),
        ('parameters = { total = "1B", active = "2B" }', "parameters.active", "more than the total"),
        ('gguf = { repo = "noslash", files = ["mini.gguf"], download_size = "1 GB" }', "gguf.repo", "owner/name"),
        ('gguf = { repo = "a/b", files = ["mini.bin"], download_size = "1 GB" }', "gguf.files", ".gguf"),
        ('gguf = { repo = "a/b", files = ["x/1.gguf", "y/2.gguf"], download_size = "1 GB" }', "gguf.files", "same folder"),
        ('gguf = { repo = "a/b", files = ["mini.gguf"] }', "gguf.download_size", "missing"),
        ("contxt_length = 4096", "contxt_length", "unknown field"),
        ('aliases = ["20b"]', "aliases", "already selects gpt-oss-20b"),
        ('aliases = ["mini/2"]', "aliases", "'mini/2' is not a usable model name"),  # it would name a file
    ],
)
def test_a_bad_field_is_reported_with_file_entry_and_field(change, field, problem):
    key = change.split("=")[0].strip()
    lines = [line for line in GOOD_ENTRY.splitlines() if not line.startswith(key + " ")]
    path = write_user_file("\n".join(lines) + "\n" + change + "\n")
    with pytest.raises(RegistryError) as caught:
        load_registry()
    message = str(caught.value)
    assert message.startswith(f"{path}: models.mini.{field}: ")
    assert problem in message
    assert "\n" not in message


def test_registry_level_mistakes_are_reported():
    path = write_user_file('default = "gpt-oss-7b"\n')
    with pytest.raises(RegistryError, match=r"^.*models\.toml: default: 'gpt-oss-7b' is not a model"):
        load_registry()
    write_user_file('[aliases]\nsmall = "gpt-oss-7b"\n')
    with pytest.raises(RegistryError, match=rf"^{path}: aliases.small: 'gpt-oss-7b' is not a model"):
        load_registry()
    write_user_file("[models.mini\n")
    with pytest.raises(RegistryError, match=rf"^{path}: not valid TOML: "):
        load_registry()
    write_user_file('[models."my model"]\ndescription = "x"\n')
    with pytest.raises(RegistryError, match="not a usable model name"):
        load_registry()


def test_entry_with_no_source_is_rejected(tmp_path):
    text = GOOD_ENTRY.replace('gguf = { repo = "someone/mini-GGUF", files = ["mini.gguf"], download_size = "2.1 GB" }', "")
    path = tmp_path / "models.toml"
    path.write_text('default = "mini"\n' + text)
    with pytest.raises(RegistryError, match=rf"^{path}: models.mini: needs a gguf or a safetensors source"):
        load_registry_files([path])


def test_user_file_overrides_fields_and_adds_entries_and_aliases():
    write_user_file(
        'default = "mini"\n'
        + GOOD_ENTRY
        + """
[models.gpt-oss-20b]
context_length = 32768
sampling = { temperature = 0.7 }

[models.gpt-oss-20b.gguf]
revision = "0123456789abcdef0123456789abcdef01234567"

[aliases]
small = "gpt-oss-20b"
"""
    )
    registry = load_registry()
    assert registry.default == "mini" and registry.default_entry().name == "mini"
    assert registry.get("m").gguf.files == ("mini.gguf",)
    small = registry.get("small")
    assert small.name == "gpt-oss-20b" and registry.get("20b") is small
    assert small.context_length == 32768
    # Tables merge field by field: what the user did not set stays as shipped.
    assert (small.sampling.temperature, small.sampling.top_p) == (0.7, 1.0)
    assert small.gguf.revision == "0123456789abcdef0123456789abcdef01234567"
    assert small.gguf.repo == "ggml-org/gpt-oss-20b-GGUF" and small.description.startswith("OpenAI gpt-oss-20b")
    assert registry.aliases_of("gpt-oss-20b") == ["20b", "small"]
    assert registry.files == (builtin_file(), user_file())


def test_an_override_error_names_the_user_file_and_a_shipped_value_the_shipped_file(tmp_path):
    path = write_user_file('[models.gpt-oss-120b.gguf]\nfiles = ["part-1.bin"]\n')
    with pytest.raises(RegistryError, match=rf"^{path}: models.gpt-oss-120b.gguf.files: "):
        load_registry()
    # A bad shipped value, untouched by the user file, is blamed on the shipped file.
    shipped = tmp_path / "shipped.toml"
    shipped.write_text(builtin_file().read_text().replace('memory_required = "61 GiB"', 'memory_required = "lots"'))
    user = tmp_path / "user.toml"
    user.write_text("[models.gpt-oss-120b]\ncontext_length = 65536\n")
    with pytest.raises(RegistryError, match=rf"^{shipped}: models.gpt-oss-120b.memory_required: "):
        load_registry_files([shipped, user])


def test_unknown_model_names_the_known_ones():
    with pytest.raises(
        RegistryError, match=r"unknown model 'gpt-oss-7b': known models are gpt-oss-20b \(20b\), gpt-oss-120b \(120b\)"
    ):
        resolve_model("gpt-oss-7b")


def test_a_registry_model_not_on_disk_says_what_to_run():
    with pytest.raises(ModelError) as caught:
        resolve_model("120b")
    assert str(caught.value) == (
        "gpt-oss-120b is not on disk: run `ossrun pull gpt-oss-120b` to download it (63.4 GB), or pass --pull"
    )
    with pytest.raises(ModelError, match=r"^gpt-oss-20b is not on disk: run `ossrun pull gpt-oss-20b` .*12.1 GB"):
        resolve_model(None)  # the default model


def test_the_memory_check_knows_120b_does_not_fit_24_gib_before_any_download():
    registry = load_registry()
    assert memory_shortfall(registry.get("120b"), total=24 * GIB) == (
        "gpt-oss-120b needs about 61 GiB of memory and this machine has 24 GiB"
    )
    assert memory_shortfall(registry.get("20b"), total=24 * GIB) is None
    # With --pull, a model bigger than the machine is refused before downloading anything.
    write_user_file('[models.gpt-oss-120b]\nmemory_required = "1000 TiB"\n')
    with pytest.raises(
        ModelError, match=r"^gpt-oss-120b needs about 1000 TiB of memory and this machine has .*: not downloading it"
    ):
        resolve_model("120b", pull=True)


def test_a_gguf_path_is_used_as_is(tmp_path):
    model = tmp_path / "mine.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    local = resolve_model(str(model))
    assert (local.path, local.files, local.entry, local.source, local.size_bytes) == (model, (model,), None, FILE, 64)
    assert Path(local) == model
    with pytest.raises(ModelError, match=r"^no such model file: .*missing.gguf$"):
        resolve_model(str(tmp_path / "missing.gguf"))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"is not a \.gguf file"):
        resolve_model(str(other))


def test_units_round_trip():
    assert parse_size("12.1 GB") == 12_100_000_000
    assert parse_size("61 GiB") == 61 * GIB
    assert parse_size("512 B") == 512
    assert parse_count("20.9B") == 20_900_000_000 and parse_count("500M") == 500_000_000
    for bad in ("12 parsecs", "GB", "-1 GB", "512", ""):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert format_size(12_100_000_000) == "12.1 GB" and format_size(999) == "999 B"
    assert format_memory(61 * GIB) == "61 GiB" and format_memory(int(1.5 * GIB)) == "1.5 GiB"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ossrun", *args], capture_output=True, text=True, timeout=120)


def test_models_command_lists_the_registry():
    result = run_cli("models")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ALIASES", "PARAMETERS", "CONTEXT", "DOWNLOAD", "MEMORY", "ON", "DISK"]
    assert lines[1].split() == ["gpt-oss-20b", "*", "20b", "20.9B", "(3.6B", "active)", "131072", "12.1", "GB", "13", "GiB", "no"]
    assert lines[2].split() == ["gpt-oss-120b", "120b", "116.8B", "(5.1B", "active)", "131072", "63.4", "GB", "61", "GiB", "no"]


def test_a_broken_user_registry_is_one_line_and_exit_1():
    path = write_user_file("[models.gpt-oss-20b]\ncontext_length = -1\n")
    for args in (("models",), ("pull", "20b"), ("rm", "20b")):
        result = run_cli(*args)
        assert result.returncode == 1
        assert result.stderr == f"error: {path}: models.gpt-oss-20b.context_length: expected a positive whole number, got -1\n"
        assert result.stdout == ""
