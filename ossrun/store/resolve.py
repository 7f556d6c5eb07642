"""How a MODEL argument becomes a file to load: a registry name or alias, the path of a .gguf
file, or ``demo``; a registry model that is not on disk is pulled only when asked to."""

from __future__ import annotations

import os
from pathlib import Path

from ossrun.errors import ModelError
from ossrun.store.hub_cache import FileProgress
from ossrun.store.local import DEMO, FILE, LocalModel, find_local, memory_shortfall, partial_bytes
from ossrun.store.pull import pull_model
from ossrun.store.registry import ModelEntry, Registry, load_registry
from ossrun.units import format_size


def is_model_path(name: str) -> bool:
    """MODEL arguments naming a file rather than a registry entry."""
    return name.endswith(".gguf") or "/" in name or os.sep in name


def resolve(model: str | os.PathLike | None, *, pull: bool = False, progress: FileProgress | None = None) -> LocalModel:
    """What ``ossrun.load`` opens for a path, ``"demo"`` or a registry name (None: the default).

    A path is taken as it is: the GGUF checks before loading say what is wrong with it.
    ``progress`` hears how far a registry model's download or first hash check is.
    """
    text = None if model is None else os.fspath(model)
    if text is not None and (isinstance(model, os.PathLike) or is_model_path(text)):
        path = Path(text).expanduser()
        return LocalModel(path, (path,), None, FILE)
    if text == DEMO:
        from ossrun.store.demo import demo_gguf  # numpy and the converter: only for the demo

        path = Path(demo_gguf())
        return LocalModel(path, (path,), None, DEMO)
    return resolve_model(text, pull=pull, progress=progress)


def resolve_model(
    name: str | None = None, *, pull: bool = False, registry: Registry | None = None, progress: FileProgress | None = None
) -> LocalModel:
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
    found = find_local(entry, progress)
    if found is not None:
        return found
    if not pull:
        raise not_on_disk(entry)
    shortfall = memory_shortfall(entry)
    if shortfall:  # say so before a download of many gigabytes, not after
        raise ModelError(f"{shortfall}: not downloading it; pick a smaller model (see `ossrun models`)")
    return pull_model(entry, from_safetensors=entry.gguf is None, progress=progress)


def not_on_disk(entry: ModelEntry) -> ModelError:
    """The error for a registry model with no copy on disk: what to run to get one."""
    if entry.gguf is None:
        size = format_size(entry.download_bytes)
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
