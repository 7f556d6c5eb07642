"""``ossrun pull``: bring a registry model onto disk, as the published GGUF or converted locally
from the published safetensors."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ossrun import home as ossrun_home
from ossrun.errors import DownloadError, RegistryError
from ossrun.store import hub, hub_cache
from ossrun.store.hub_cache import FileProgress
from ossrun.store.local import CONVERTED, HUB, LocalModel, converted_path, find_hub_copy, memory_shortfall
from ossrun.store.registry import ModelEntry, Registry, load_registry
from ossrun.units import format_size

LAYOUTS = ("hf", "original")  # Hugging Face layout at the repo root, OpenAI's own in a subfolder
DEFAULT_LAYOUT = "hf"
DEFAULT_OUTTYPE = "q8_0"  # what the published GGUFs use for the non-expert matrices
# What the converter reads: the checkpoint folder's config, weights and index; the tokenizer and
# chat template from the repo root (the `original/` folder has none).
CHECKPOINT_FILES = ("config.json", "model.safetensors.index.json", "generation_config.json")
CHECKPOINT_SUFFIX = ".safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def pull(
    name: str | None = None,
    *,
    from_safetensors: bool = False,
    layout: str = DEFAULT_LAYOUT,
    registry: Registry | None = None,
    progress: FileProgress | None = None,
) -> LocalModel:
    """Download a registry model (None: the default one) and return it, verified, on disk.

    ``progress`` is called with each step (a file's download, its hash check, the conversion)
    and its bytes done of a total: the library draws nothing, front ends show it."""
    registry = registry or load_registry()
    entry = registry.default_entry() if name is None else registry.get(name)
    return pull_model(entry, from_safetensors=from_safetensors, layout=layout, progress=progress)


def pull_model(
    entry: ModelEntry, *, from_safetensors: bool = False, layout: str = DEFAULT_LAYOUT, progress: FileProgress | None = None
) -> LocalModel:
    shortfall = memory_shortfall(entry)
    if shortfall:  # a download for another machine is fine, but say it will not run here
        hub_cache.notice(f"note: {shortfall}")
    if from_safetensors:
        return _pull_and_convert(entry, layout, progress)
    return _pull_gguf(entry, progress)


def _pull_gguf(entry: ModelEntry, progress: FileProgress | None) -> LocalModel:
    source = entry.gguf
    if source is None:
        raise RegistryError(f"{entry.name} has no GGUF on the hub: use `ossrun pull {entry.name} --from-safetensors`")
    what = f"download {entry.name} ({format_size(source.download_bytes)})"
    if hub.is_offline():
        local = find_hub_copy(entry, progress)
        if local is not None:
            hub_cache.notice(f"offline: {entry.name} is on disk, not checked for a newer version")
            return local
        hub.require_online(what)

    remote = hub.fetch_repo(source.repo, source.revision, what)
    files = [remote.file(path) for path in source.files]
    missing = sum(hub.bytes_missing(remote, f) for f in files)
    hub_cache.check_disk_space([(hub_cache.cache_dir(), missing)], what)
    if all(hub_cache.snapshot_path(remote.repo, remote.commit, f.path).exists() for f in files):
        hub_cache.notice(f"{entry.name} is up to date")
    paths = [hub.download(remote, f, progress) for f in files]
    hub_cache.write_ref(remote.repo, remote.revision, remote.commit)
    older = hub_cache.cached_copies(source.repo, source.files, except_commit=remote.commit)
    if older:  # replaced by this version: do not keep two copies of a multi-gigabyte model
        hub_cache.delete_files(source.repo, older)
        hub_cache.notice(f"removed the previous version of {entry.name}")
    return LocalModel(paths[0], tuple(paths), entry, HUB)


def _checkpoint_files(remote: hub.RemoteRepo, folder: str) -> list[hub.RemoteFile]:
    """The files of one layout the converter needs, and nothing else (no other layouts, no docs)."""
    prefix = f"{folder}/" if folder else ""
    chosen = []
    for path, file in remote.files.items():
        if not path.startswith(prefix) or "/" in path[len(prefix) :]:
            continue
        name = path[len(prefix) :]
        if name in CHECKPOINT_FILES or name.endswith(CHECKPOINT_SUFFIX):
            chosen.append(file)
    if not any(f.path.endswith(CHECKPOINT_SUFFIX) for f in chosen):
        where = f"{remote.repo}/{folder}" if folder else remote.repo
        raise DownloadError(f"{where} holds no .safetensors files: check the safetensors source in models.toml")
    tokenizer = [remote.files[name] for name in TOKENIZER_FILES if name in remote.files]
    return sorted({f.path: f for f in chosen + tokenizer}.values(), key=lambda f: f.path)


def _pull_and_convert(entry: ModelEntry, layout: str, progress: FileProgress | None) -> LocalModel:
    source = entry.safetensors
    if source is None:
        raise RegistryError(f"{entry.name} has no safetensors source in models.toml: use `ossrun pull {entry.name}`")
    if layout not in LAYOUTS:
        raise RegistryError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    out = converted_path(entry)
    if out.is_file():
        hub_cache.notice(f"{entry.name} was already converted: {out} (`ossrun rm {entry.name}` to convert it again)")
        return LocalModel(out, (out,), entry, CONVERTED)

    what = f"download {entry.name}'s safetensors ({format_size(source.download_bytes)})"
    hub.require_online(what)
    remote = hub.fetch_repo(source.repo, source.revision, what)
    folder = source.original if layout == "original" else ""
    files = _checkpoint_files(remote, folder)
    missing = sum(hub.bytes_missing(remote, f) for f in files)
    weights = sum(f.size for f in files if f.path.endswith(CHECKPOINT_SUFFIX))  # the GGUF is no bigger in Q8_0
    hub_cache.check_disk_space([(hub_cache.cache_dir(), missing), (ossrun_home.models_dir(), weights)], what)
    for f in files:
        hub.download(remote, f, progress)
    hub_cache.write_ref(remote.repo, remote.revision, remote.commit)

    snapshot = hub_cache.snapshot_path(source.repo, remote.commit, "")
    hub_cache.notice(f"converting {entry.name} from {source.repo}{'/' + folder if folder else ''} to {out}")
    ossrun_home.ensure_dir(out.parent)
    with _named_checkpoint(entry, snapshot, [f.path for f in files]) as root:
        _convert(root / folder if folder else root, out, root if folder else None, progress)
    return LocalModel(out, (out,), entry, CONVERTED)


@contextmanager
def _named_checkpoint(entry: ModelEntry, snapshot: Path, paths: list[str]) -> Iterator[Path]:
    """The checkpoint seen through a folder named after the entry.

    The converter names the model after its folder, and a cache snapshot is named after a
    commit id. Without symlinks (some Windows setups) the snapshot is used as it is.
    """
    stage = ossrun_home.cache_dir() / "convert" / entry.name
    shutil.rmtree(stage, ignore_errors=True)
    try:
        for path in paths:
            (stage / path).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(snapshot / path, stage / path)
    except OSError:
        shutil.rmtree(stage, ignore_errors=True)
        yield snapshot
        return
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _convert(src: Path, out: Path, tokenizer_dir: Path | None, progress: FileProgress | None) -> None:
    from ossrun.convert import convert

    def written(done: int, total: int) -> None:
        if progress is not None:
            progress(f"convert {out.name}", done, total)

    convert(src, out, outtype=DEFAULT_OUTTYPE, tokenizer_dir=tokenizer_dir, progress=written)
