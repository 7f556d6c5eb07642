"""Models on disk: where each registry entry's copies are, whether they can be used, and how a
MODEL argument (a registry name, an alias or the path of a .gguf file) becomes a file to load.

A model is on disk as a GGUF pulled from the hub (in the hub cache) or as a GGUF converted
locally from the published safetensors (``OSSRUN_HOME/models/NAME.gguf``); the converted one is
preferred when both exist, since the user built it on purpose.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ossrun import home as ossrun_home
from ossrun import hub, integrity
from ossrun.errors import ModelError
from ossrun.machine import total_memory
from ossrun.registry import ModelEntry, Registry, load_registry
from ossrun.units import format_memory, format_size

HUB = "hub"  # a GGUF pulled from the hub, in the hub cache
CONVERTED = "converted"  # built by `ossrun pull --from-safetensors`
FILE = "file"  # a .gguf path given directly


@dataclass(frozen=True)
class LocalModel:
    """A model ready to load: ``path`` is the file to open (for shards, the first one)."""

    path: Path
    files: tuple[Path, ...]
    entry: Optional[ModelEntry]  # None for a .gguf path outside the registry
    source: str  # HUB, CONVERTED or FILE

    @property
    def name(self) -> str:
        return self.entry.name if self.entry else self.path.name

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
    verified: Optional[bool]  # True: matched the hub's hashes; None: checked on first use

    @property
    def size_bytes(self) -> int:
        return sum(os.path.getsize(f) for f in self.files)


def converted_path(entry: ModelEntry) -> Path:
    return ossrun_home.models_dir() / f"{entry.name}.gguf"


def hub_files(entry: ModelEntry) -> Optional[list[Path]]:
    """The entry's GGUF files in the hub cache, all from one commit, or None."""
    if entry.gguf is None:
        return None
    return hub.find_snapshot(entry.gguf.repo, entry.gguf.revision, entry.gguf.files)


def partial_bytes(entry: ModelEntry) -> int:
    """Bytes of an interrupted GGUF download waiting to be resumed."""
    if entry.gguf is None:
        return 0
    return sum(p.stat().st_size for p in hub.partial_downloads(entry.gguf.repo))


def local_copies(entry: ModelEntry) -> list[LocalCopy]:
    copies = []
    converted = converted_path(entry)
    if converted.is_file():
        copies.append(LocalCopy(CONVERTED, (converted,), None))
    files = hub_files(entry)
    if files:
        verified = all(_expected_hash(f) is not None and integrity.is_verified(f, _expected_hash(f)) for f in files)
        copies.append(LocalCopy(HUB, tuple(files), True if verified else None))
    return copies


def _expected_hash(path: Path) -> Optional[integrity.ExpectedHash]:
    # The cache names each blob after the hub's hash; a copied (not linked) file has only our record.
    return hub.cached_hash(path) or integrity.recorded_hash(path)


def _usable_hub_copy(entry: ModelEntry, files: list[Path]) -> LocalModel:
    """Check each file against the hub's hash (once; later from the record). Damaged files are deleted."""
    for f in files:
        expected = _expected_hash(f)
        if expected is None:
            raise ModelError(f"cannot check {f} against the hub's hash: run `ossrun pull {entry.name}` once online")
        if not integrity.is_verified(f, expected):
            hub.notice(f"checking {f.name} against the hub's {expected.algorithm} (once)")
        if not hub.verify_file(f, expected):
            hub.delete_files(entry.gguf.repo, files)
            raise ModelError(
                f"{f.name} of {entry.name} is damaged (its {expected.algorithm} does not match the hub's) and was "
                f"deleted: run `ossrun pull {entry.name}` to download it again"
            )
    return LocalModel(files[0], tuple(files), entry, HUB)


def find_hub_copy(entry: ModelEntry) -> Optional[LocalModel]:
    """The entry's GGUF from the hub, verified, or None if it is not in the cache."""
    files = hub_files(entry)
    return _usable_hub_copy(entry, files) if files else None


def find_local(entry: ModelEntry) -> Optional[LocalModel]:
    """The entry's usable copy on disk (verified), or None if there is none."""
    converted = converted_path(entry)
    if converted.is_file():
        return LocalModel(converted, (converted,), entry, CONVERTED)
    return find_hub_copy(entry)


def is_model_path(name: str) -> bool:
    """MODEL arguments naming a file rather than a registry entry."""
    return name.endswith(".gguf") or "/" in name or os.sep in name


def memory_shortfall(entry: ModelEntry, total: Optional[int] = None) -> Optional[str]:
    """Why ``entry`` cannot run on this machine (its memory_required exceeds the RAM), or None."""
    total = total_memory() if total is None else total
    if total is None or entry.memory_bytes <= total:
        return None
    return (
        f"{entry.name} needs about {format_memory(entry.memory_bytes)} of memory "
        f"and this machine has {format_memory(total)}"
    )


def _not_on_disk(entry: ModelEntry) -> ModelError:
    if entry.gguf is None:
        size = format_size(entry.safetensors.download_bytes)
        return ModelError(
            f"{entry.name} is not on disk: run `ossrun pull {entry.name} --from-safetensors` "
            f"(a {size} download, converted locally)"
        )
    partial = partial_bytes(entry)
    if partial:
        return ModelError(
            f"{entry.name} is not fully downloaded ({format_size(partial)} of {format_size(entry.gguf.download_bytes)}):"
            f" run `ossrun pull {entry.name}` to resume, or pass --pull"
        )
    return ModelError(
        f"{entry.name} is not on disk: run `ossrun pull {entry.name}` to download it "
        f"({format_size(entry.gguf.download_bytes)}), or pass --pull"
    )


def resolve_model(name: Optional[str] = None, *, pull: bool = False, registry: Optional[Registry] = None) -> LocalModel:
    """Turn a MODEL argument into a verified local GGUF.

    ``name`` is a registry name or alias (None: the registry's default model) or the path of a
    .gguf file. A registry model not on disk raises a ModelError saying what to run, unless
    ``pull`` is set: then it is downloaded first. Nothing touches the network unless it must.
    """
    if name is not None and is_model_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelError(f"no such model file: {name}")
        if path.suffix != ".gguf":
            raise ModelError(f"{name} is not a .gguf file: give a registry name (see `ossrun models`) or a .gguf")
        return LocalModel(path, (path,), None, FILE)

    registry = registry or load_registry()
    entry = registry.default_entry() if name is None else registry.get(name)
    found = find_local(entry)
    if found is not None:
        return found
    if not pull:
        raise _not_on_disk(entry)
    shortfall = memory_shortfall(entry)
    if shortfall:  # say so before a download of many gigabytes, not after
        raise ModelError(f"{shortfall}: not downloading it; pick a smaller model (see `ossrun models`)")
    from ossrun.pull import pull_model

    return pull_model(entry, from_safetensors=entry.gguf is None)


def remove_model(name: str, *, registry: Optional[Registry] = None) -> list[Path]:
    """Delete every local copy of a registry model (and any partial download); return what went."""
    entry = (registry or load_registry()).get(name)
    removed = []
    converted = converted_path(entry)
    if converted.is_file():
        integrity.forget([converted])
        converted.unlink()
        removed.append(converted)
    if entry.gguf is not None:
        removed += hub.delete_partials(entry.gguf.repo)
        removed += hub.delete_files(entry.gguf.repo, hub.cached_copies(entry.gguf.repo, entry.gguf.files))
    if not removed:
        raise ModelError(f"{entry.name} is not on disk: nothing to remove")
    return removed
