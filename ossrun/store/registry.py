"""The model registry: ``models.toml`` shipped with ossrun, merged with the user's own.

The shipped file is read from the package (``ossrun/models.toml``), then ``models.toml`` in the
ossrun home, if there is one, adds entries and aliases or overrides fields. Every entry is
validated on load; a bad one is reported with its file, its name and the field at fault.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ossrun import home as ossrun_home
from ossrun.errors import RegistryError
from ossrun.harmony.messages import REASONING_EFFORTS
from ossrun.units import parse_count, parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

USER_FILE_NAME = "models.toml"
DEFAULT_REVISION = "main"


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float


@dataclass(frozen=True)
class GgufSource:
    """A ready-to-run GGUF on the hub; several files are shards, the first is the one to load."""

    repo: str
    files: tuple[str, ...]
    revision: str
    download_bytes: int


@dataclass(frozen=True)
class SafetensorsSource:
    """The published checkpoint: Hugging Face layout at the repo root, OpenAI's under ``original``."""

    repo: str
    original: str
    revision: str
    download_bytes: int


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    aliases: tuple[str, ...]
    parameters_total: int
    parameters_active: int
    context_length: int
    memory_bytes: int  # memory needed to run at the default context
    reasoning_effort: str
    sampling: Sampling
    gguf: GgufSource | None
    safetensors: SafetensorsSource | None  # one of the two at least (checked when models.toml is read)

    @property
    def download_bytes(self) -> int:
        """What a pull downloads: the GGUF, or the safetensors checkpoint for a model published as that only."""
        source = self.gguf or self.safetensors
        return source.download_bytes if source else 0


@dataclass(frozen=True)
class Registry:
    entries: Mapping[str, ModelEntry]
    aliases: Mapping[str, str]  # alias -> entry name
    default: str
    files: tuple[Path, ...] = field(default=())  # the models.toml files read, in order

    def find(self, name: str) -> ModelEntry | None:
        """The entry called ``name`` or aliased so, or None."""
        return self.entries.get(self.aliases.get(name, name))

    def aliases_of(self, name: str) -> list[str]:
        """Every alias selecting the entry: its own and those of an [aliases] table."""
        return [alias for alias, target in self.aliases.items() if target == name]

    def get(self, name: str) -> ModelEntry:
        entry = self.find(name)
        if entry is None:
            known = ", ".join(self.describe_names(e.name) for e in self.entries.values())
            raise RegistryError(f"unknown model {name!r}: known models are {known}; or give the path of a .gguf file")
        return entry

    def default_entry(self) -> ModelEntry:
        return self.entries[self.default]

    def describe_names(self, name: str) -> str:
        aliases = self.aliases_of(name)
        return f"{name} ({', '.join(aliases)})" if aliases else name


def builtin_file() -> Path:
    """The models.toml shipped inside the package (the repository's models.toml)."""
    return Path(str(resources.files("ossrun") / "models.toml"))


def user_file() -> Path:
    return ossrun_home.home() / USER_FILE_NAME


def load_registry() -> Registry:
    """The shipped registry merged with the user's ``models.toml``, validated."""
    files = [builtin_file()]
    if user_file().is_file():
        files.append(user_file())
    return load_registry_files(files)


def load_registry_files(files: list[Path]) -> Registry:
    """Merge ``files`` in order (later ones override earlier ones) and validate the result."""
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, ...], Path] = {}  # key path -> the file that last set it
    for path in files:
        _merge(merged, _read_toml(path), (), path, origins)
    return _Validator(origins, files[-1]).registry(merged, tuple(files))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read it: {exc.strerror}") from None


def _merge(into: dict, new: Mapping, prefix: tuple[str, ...], path: Path, origins: dict) -> None:
    """Merge tables key by key; any other value replaces the old one.

    ``origins`` records which file set each value (a table's keys inherit the table's file unless
    a later file set them), so an error can name the file that holds the bad value.
    """
    for key, value in new.items():
        key_path = (*prefix, key)
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, key_path, path, origins)
        else:
            into[key] = value
            for stale in [p for p in origins if p[: len(key_path)] == key_path]:
                del origins[stale]
            origins[key_path] = path


class _Validator:
    """Turns the merged TOML data into typed entries; every failure names file, entry and field."""

    def __init__(self, origins: dict[tuple[str, ...], Path], fallback_file: Path):
        self.origins = origins
        self.fallback_file = fallback_file

    def fail(self, key_path: tuple[str, ...], problem: str) -> RegistryError:
        for end in range(len(key_path), 0, -1):  # the most specific key whose file we know
            if key_path[:end] in self.origins:
                where = self.origins[key_path[:end]]
                break
        else:
            where = self.fallback_file
        return RegistryError(f"{where}: {'.'.join(key_path)}: {problem}")

    def registry(self, data: dict[str, Any], files: tuple[Path, ...]) -> Registry:
        self.only_keys(data, (), {"default", "models", "aliases"})
        models = data.get("models")
        if not isinstance(models, dict) or not models:
            raise self.fail(("models",), "expected at least one [models.NAME] table")
        entries = {}
        for name, table in models.items():
            self.check_name(("models", name), name)
            if not isinstance(table, dict):
                raise self.fail(("models", name), "expected a table of fields")
            entries[name] = self.entry(name, table)

        aliases: dict[str, str] = {}
        for entry in entries.values():
            for alias in entry.aliases:
                self.add_alias(aliases, entries, alias, entry.name, ("models", entry.name, "aliases"))
        extra = data.get("aliases", {})
        if not isinstance(extra, dict):
            raise self.fail(("aliases",), 'expected a table of alias = "model-name"')
        for alias, target in extra.items():
            if not isinstance(target, str) or target not in entries:
                raise self.fail(("aliases", alias), f"{target!r} is not a model in the registry")
            self.add_alias(aliases, entries, alias, target, ("aliases", alias))

        default = data.get("default")
        if not isinstance(default, str) or aliases.get(default, default) not in entries:
            raise self.fail(("default",), f"{default!r} is not a model in the registry")
        return Registry(entries, aliases, aliases.get(default, default), files)

    def add_alias(self, aliases: dict, entries: dict, alias: str, target: str, key_path: tuple[str, ...]) -> None:
        self.check_name(key_path, alias)
        if alias in entries and alias != target:
            raise self.fail(key_path, f"alias {alias!r} is already the name of another model")
        if aliases.get(alias, target) != target:
            raise self.fail(key_path, f"alias {alias!r} already selects {aliases[alias]}")
        aliases[alias] = target

    def check_name(self, key_path: tuple[str, ...], name: str) -> None:
        # Names must never look like file paths: those select a .gguf file instead.
        if not name or any(c.isspace() or c in "/\\" for c in name) or name.endswith(".gguf"):
            raise self.fail(key_path, f"{name!r} is not a usable model name (no spaces, slashes or .gguf)")

    def entry(self, name: str, table: dict[str, Any]) -> ModelEntry:
        at = ("models", name)
        self.only_keys(
            table,
            at,
            {
                "description",
                "aliases",
                "parameters",
                "context_length",
                "memory_required",
                "reasoning_effort",
                "sampling",
                "gguf",
                "safetensors",
            },
        )
        parameters = self.table(table, at, "parameters")
        self.only_keys(parameters, (*at, "parameters"), {"total", "active"})
        total = self.value(parameters, (*at, "parameters"), "total", _as_count)
        active = self.value(parameters, (*at, "parameters"), "active", _as_count)
        if active > total:
            raise self.fail((*at, "parameters", "active"), "cannot be more than the total")
        sampling = self.table(table, at, "sampling")
        self.only_keys(sampling, (*at, "sampling"), {"temperature", "top_p"})
        gguf = self.gguf(table["gguf"], (*at, "gguf")) if "gguf" in table else None
        safetensors = self.safetensors(table["safetensors"], (*at, "safetensors")) if "safetensors" in table else None
        if gguf is None and safetensors is None:
            raise self.fail(at, "needs a gguf or a safetensors source")
        return ModelEntry(
            name=name,
            description=self.value(table, at, "description", _as_text),
            aliases=tuple(self.value(table, at, "aliases", _as_names, default=[])),
            parameters_total=total,
            parameters_active=active,
            context_length=self.value(table, at, "context_length", _as_positive_int),
            memory_bytes=self.value(table, at, "memory_required", _as_size),
            reasoning_effort=self.value(table, at, "reasoning_effort", _as_effort),
            sampling=Sampling(
                temperature=self.value(sampling, (*at, "sampling"), "temperature", _as_temperature),
                top_p=self.value(sampling, (*at, "sampling"), "top_p", _as_top_p),
            ),
            gguf=gguf,
            safetensors=safetensors,
        )

    def gguf(self, table: Any, at: tuple[str, ...]) -> GgufSource:
        table = self.as_table(table, at)
        self.only_keys(table, at, {"repo", "files", "revision", "download_size"})
        return GgufSource(
            repo=self.value(table, at, "repo", _as_repo_id),
            files=tuple(self.value(table, at, "files", _as_gguf_files)),
            revision=self.value(table, at, "revision", _as_text, default=DEFAULT_REVISION),
            download_bytes=self.value(table, at, "download_size", _as_size),
        )

    def safetensors(self, table: Any, at: tuple[str, ...]) -> SafetensorsSource:
        table = self.as_table(table, at)
        self.only_keys(table, at, {"repo", "original", "revision", "download_size"})
        return SafetensorsSource(
            repo=self.value(table, at, "repo", _as_repo_id),
            original=self.value(table, at, "original", _as_subfolder, default="original"),
            revision=self.value(table, at, "revision", _as_text, default=DEFAULT_REVISION),
            download_bytes=self.value(table, at, "download_size", _as_size),
        )

    def only_keys(self, table: dict, at: tuple[str, ...], allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail((*at, key), f"unknown field (expected one of: {', '.join(sorted(allowed))})")

    def as_table(self, value: Any, at: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(at, "expected a table")
        return value

    def table(self, table: dict, at: tuple[str, ...], key: str) -> dict:
        if key not in table:
            raise self.fail((*at, key), "missing")
        return self.as_table(table[key], (*at, key))

    _MISSING = object()

    def value(self, table: dict, at: tuple[str, ...], key: str, convert: Callable[[Any], Any], default: Any = _MISSING):
        if key not in table:
            if default is self._MISSING:
                raise self.fail((*at, key), "missing")
            return convert(default)
        try:
            return convert(table[key])
        except (TypeError, ValueError) as exc:
            raise self.fail((*at, key), str(exc)) from None


# Field converters: return the typed value or raise ValueError/TypeError with the problem.


def _as_text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected non-empty text, got {value!r}")
    return value


def _as_positive_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"expected a positive whole number, got {value!r}")
    return value


def _quantity(parse: Callable[[str], int], example: str) -> Callable[[Any], int]:
    """A converter for sizes or counts written with a unit (or as a plain positive integer)."""

    def convert(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        if not isinstance(value, str):
            raise ValueError(f"expected {example}, got {value!r}")
        return parse(value)

    return convert


_as_size = _quantity(parse_size, 'a size like "12.1 GB"')
_as_count = _quantity(parse_count, 'a count like "20.9B"')


def _as_effort(value: Any) -> str:
    if value not in REASONING_EFFORTS:
        raise ValueError(f"expected one of {', '.join(REASONING_EFFORTS)}, got {value!r}")
    return value


def _as_number(value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _as_temperature(value: Any) -> float:
    number = _as_number(value)
    if number < 0:
        raise ValueError(f"expected a temperature of 0 or more, got {value!r}")
    return number


def _as_top_p(value: Any) -> float:
    number = _as_number(value)
    if not 0 < number <= 1:
        raise ValueError(f"expected a top_p above 0 and at most 1, got {value!r}")
    return number


def _as_names(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"expected a list of names, got {value!r}")
    return value


def _as_repo_id(value: Any) -> str:
    text = _as_text(value)
    parts = text.split("/")
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in text):
        raise ValueError(f'expected a hub repo id like "owner/name", got {value!r}')
    return text


def _as_subfolder(value: Any) -> str:
    text = _as_text(value)
    if text.startswith("/") or ".." in text.split("/"):
        raise ValueError(f"expected a folder inside the repo, got {value!r}")
    return text.strip("/")


def _as_gguf_files(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of .gguf file names, got {value!r}")
    for name in value:
        if not isinstance(name, str) or not name.endswith(".gguf") or name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"expected .gguf file names inside the repo, got {name!r}")
    folders = {name.rpartition("/")[0] for name in value}
    if len(folders) > 1:  # llama.cpp finds the other shards next to the first one
        raise ValueError("the files of one model must be in the same folder of the repo")
    return value
