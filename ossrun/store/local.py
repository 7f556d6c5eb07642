"""Models on disk: where each registry entry's copies are and whether they can be used.

A model is on disk as a GGUF pulled from the hub (in the hub cache) or as a GGUF converted
locally from the published safetensors (``OSSRUN_HOME/models/NAME.gguf``); the converted one is
preferred when both exist, since the user built it on purpose.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ossrun import home as ossrun_home
from ossrun.errors import ModelError
from ossrun.machine import total_memory
from ossrun.store import hub_cache, integrity
from ossrun.store.hub_cache import FileProgress
from ossrun.store.registry import ModelEntry, Registry, load_registry
from ossrun.units import format_memory

HUB = "hub"  # a GGUF pulled from the hub, in the hub cache
CONVERTED = "converted"  # built by `ossrun pull --from-safetensors`
FILE = "file"  # a .gguf path given directly
DEMO = "demo"  # the demo model built from ossrun's package data


@dataclass(frozen=True)
class LocalModel:
    """A model ready to load: ``path`` is the file to open (for shards, the first one)."""

    path: Path
    files: tuple[Path, ...]
    entry: ModelEntry | None  # None for a .gguf path outside the registry
    source: str  # HUB, CONVERTED or FILE

    @property
    def name(self) -> str:
        """The registry name; ``demo`` for the demo model; a file's name without ``.gguf``."""
        if self.entry is not None:
            return self.entry.name
        return DEMO if self.source == DEMO else self.path.stem

    @property
    def size_bytes(self) -> int:
        return sum(os.path.getsize(f) for f in self.files)

    def __fspath__(self) -> str:  # usable wherever a path is: open(), Path(), llama.cpp
        return os.fspath(self.path)


@dataclass(frozen=True)
class LocalCopy:
    """One copy of an entry on disk, as ``ossrun models`` reports it (no hashing involved)."""

    source: str  # HUB or CONVERTED
    files: tuple[Path, ...]
    verified: bool | None  # True: matched the hub's hashes; None: checked on first use

    @property
    def size_bytes(self) -> int:
        return sum(os.path.getsize(f) for f in self.files)


def converted_path(entry: ModelEntry) -> Path:
    return ossrun_home.models_dir() / f"{entry.name}.gguf"


def hub_files(entry: ModelEntry) -> list[Path] | None:
    """The entry's GGUF files in the hub cache, all from one commit, or None."""
    if entry.gguf is None:
        return None
    return hub_cache.find_snapshot(entry.gguf.repo, entry.gguf.revision, entry.gguf.files)


def partial_bytes(entry: ModelEntry) -> int:
    """Bytes of an interrupted GGUF download waiting to be resumed."""
    if entry.gguf is None:
        return 0
    return sum(p.stat().st_size for p in hub_cache.partial_downloads(entry.gguf.repo))


def local_copies(entry: ModelEntry) -> list[LocalCopy]:
    copies = []
    converted = converted_path(entry)
    if converted.is_file():
        copies.append(LocalCopy(CONVERTED, (converted,), None))
    files = hub_files(entry)
    if files:
        hashes = [(f, _expected_hash(f)) for f in files]
        verified = all(expected is not None and integrity.is_verified(f, expected) for f, expected in hashes)
        copies.append(LocalCopy(HUB, tuple(files), True if verified else None))
    return copies


def _expected_hash(path: Path) -> integrity.ExpectedHash | None:
    # The cache names each blob after the hub's hash; a copied (not linked) file has only our record.
    return hub_cache.cached_hash(path) or integrity.recorded_hash(path)


def _usable_hub_copy(entry: ModelEntry, repo: str, files: list[Path], progress: FileProgress | None) -> LocalModel:
    """Check each file against the hub's hash (once; later from the record). Damaged files are deleted."""
    for f in files:
        expected = _expected_hash(f)
        if expected is None:
            raise ModelError(f"cannot check {f} against the hub's hash: run `ossrun pull {entry.name}` once online")
        if not integrity.is_verified(f, expected):
            hub_cache.notice(f"checking {f.name} against the hub's {expected.algorithm} (once)")
        if not hub_cache.verify_file(f, expected, progress=progress):
            hub_cache.delete_files(repo, files)
            raise ModelError(
                f"{f.name} of {entry.name} is damaged (its {expected.algorithm} does not match the hub's) and was "
                f"deleted: run `ossrun pull {entry.name}` to download it again"
            )
    return LocalModel(files[0], tuple(files), entry, HUB)


def find_hub_copy(entry: ModelEntry, progress: FileProgress | None = None) -> LocalModel | None:
    """The entry's GGUF from the hub, verified (``progress`` hears how far a first check is), or None
    if it is not in the cache."""
    files = hub_files(entry)
    return _usable_hub_copy(entry, entry.gguf.repo, files, progress) if files and entry.gguf else None


def find_local(entry: ModelEntry, progress: FileProgress | None = None) -> LocalModel | None:
    """The entry's usable copy on disk (verified), or None if there is none."""
    converted = converted_path(entry)
    if converted.is_file():
        return LocalModel(converted, (converted,), entry, CONVERTED)
    return find_hub_copy(entry, progress)


def memory_shortfall(entry: ModelEntry, total: int | None = None) -> str | None:
    """Why ``entry`` cannot run on this machine (its memory_required exceeds the RAM), or None."""
    total = total_memory() if total is None else total
    if total is None or entry.memory_bytes <= total:
        return None
    return f"{entry.name} needs about {format_memory(entry.memory_bytes)} of memory and this machine has {format_memory(total)}"


def remove_model(name: str, *, registry: Registry | None = None) -> list[Path]:
    """Delete every local copy of a registry model (and any partial download); return what went."""
    entry = (registry or load_registry()).get(name)
    removed = []
    converted = converted_path(entry)
    if converted.is_file():
        integrity.forget([converted])
        converted.unlink()
        removed.append(converted)
    if entry.gguf is not None:
        removed += hub_cache.delete_partials(entry.gguf.repo)
        removed += hub_cache.delete_files(entry.gguf.repo, hub_cache.cached_copies(entry.gguf.repo, entry.gguf.files))
    if not removed:
        raise ModelError(f"{entry.name} is not on disk: nothing to remove")
    return removed
