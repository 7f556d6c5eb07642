"""The Hugging Face cache on disk: where a repo's snapshots, blobs and partial downloads are, which
copies exist, the checks before and after a download (free space, hashes), and deleting copies.

Nothing here reaches the network (``hub.py`` does). The layout is ``huggingface_hub``'s own, so
its tools see what ossrun pulled; the folder is read from the environment at call time.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from ossrun.errors import DownloadError
from ossrun.home import write_atomically
from ossrun.store import integrity
from ossrun.store.integrity import ExpectedHash
from ossrun.units import format_size

PARTIAL_SUFFIX = ".incomplete"  # <blob>.incomplete: the bytes of <blob> received so far

# How far one step on a file is: called with what it is ("download model.gguf", "verify
# model.gguf", "convert model.gguf"), the bytes done and the bytes in all. Nothing here draws:
# front ends show it (ossrun.terminal.progress.file_steps).
FileProgress = Callable[[str, int, int], None]


def cache_dir() -> Path:
    """The hub cache, as ``huggingface_hub`` resolves it (HF_HUB_CACHE, then HF_HOME/hub)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(hf_home)).expanduser() / "hub"


def notice(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def repo_storage(repo: str) -> Path:
    """The repo's folder in the hub cache (``models--owner--name``)."""
    return cache_dir() / ("models--" + repo.replace("/", "--"))


def snapshot_path(repo: str, commit: str, path: str) -> Path:
    return repo_storage(repo) / "snapshots" / commit / path


def blob_path(repo: str, expected: ExpectedHash) -> Path:
    return repo_storage(repo) / "blobs" / expected.digest


def partial_path(repo: str, expected: ExpectedHash) -> Path:
    return repo_storage(repo) / "blobs" / (expected.digest + PARTIAL_SUFFIX)


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk_space(needs: list[tuple[Path, int]], what: str) -> None:
    """Refuse to start unless each disk has room for what will be written to it."""
    by_disk: dict[int, tuple[Path, int]] = {}
    for folder, n_bytes in needs:
        anchor = _existing_ancestor(folder)
        device = anchor.stat().st_dev
        first_folder, total = by_disk.get(device, (folder, 0))
        by_disk[device] = (first_folder, total + n_bytes)
    for folder, n_bytes in by_disk.values():
        free = shutil.disk_usage(_existing_ancestor(folder)).free
        if n_bytes > free:
            raise DownloadError(
                f"not enough disk space to {what}: it needs {format_size(n_bytes)} in {folder} and only "
                f"{format_size(free)} is free; free some space or set HF_HUB_CACHE/OSSRUN_HOME to a bigger disk"
            )


def verify_file(path: Path, expected: ExpectedHash, label: str | None = None, progress: FileProgress | None = None) -> bool:
    """Hash ``path`` once (saying how far through ``progress``) unless the record says it already passed."""
    if integrity.is_verified(path, expected):
        return True
    if progress is None:
        return integrity.verify(path, expected)
    what, total, done = f"verify {label or path.name}", path.stat().st_size, 0
    progress(what, done, total)

    def read(n_bytes: int) -> None:
        nonlocal done
        done += n_bytes
        progress(what, done, total)

    return integrity.verify(path, expected, read)


def write_ref(repo: str, revision: str, commit: str) -> None:
    """Point ``refs/<revision>`` at the pulled commit, as huggingface_hub does, so tools see it as current."""
    if revision != commit:
        write_atomically(repo_storage(repo) / "refs" / revision, commit.encode())


def find_snapshot(repo: str, revision: str, paths: tuple[str, ...]) -> list[Path] | None:
    """The cached copies of ``paths`` (all from one commit), preferring the one ``revision`` points to."""
    snapshots = repo_storage(repo) / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_storage(repo) / "refs" / revision
    preferred = ref.read_text().strip() if ref.is_file() else revision
    commits = sorted(snapshots.iterdir(), key=lambda p: (p.name != preferred, -p.stat().st_mtime))
    for commit in commits:
        files = [commit / path for path in paths]
        if all(f.exists() for f in files):
            return files
    return None


def cached_copies(repo: str, paths: tuple[str, ...], *, except_commit: str | None = None) -> list[Path]:
    """Every snapshot's copy of ``paths`` (complete or not), but those of ``except_commit``."""
    snapshots = repo_storage(repo) / "snapshots"
    if not snapshots.is_dir():
        return []
    return [
        commit / path
        for commit in sorted(snapshots.iterdir())
        if commit.name != except_commit
        for path in paths
        if (commit / path).is_symlink() or (commit / path).exists()
    ]


def cached_hash(path: Path) -> ExpectedHash | None:
    """The published hash a cached file must match: its blob is named after it."""
    return ExpectedHash.from_etag(Path(os.path.realpath(path)).name)


def partial_downloads(repo: str) -> list[Path]:
    blobs = repo_storage(repo) / "blobs"
    return sorted(blobs.glob("*" + PARTIAL_SUFFIX)) if blobs.is_dir() else []


def delete_partials(repo: str) -> list[Path]:
    """Delete the repo's interrupted downloads; return what went."""
    removed = partial_downloads(repo)
    for partial in removed:
        partial.unlink()
    _prune_empty(repo_storage(repo))
    return removed


def delete_files(repo: str, snapshot_files: list[Path]) -> list[Path]:
    """Delete cached files (their snapshot entries and the blobs no other entry uses); return what went."""
    storage = repo_storage(repo)
    blobs = {Path(os.path.realpath(p)) for p in snapshot_files}
    removed = []
    for pointer in snapshot_files:
        if pointer.is_symlink() or pointer.exists():
            pointer.unlink()
            removed.append(pointer)
    still_used = {Path(os.path.realpath(p)) for p in (storage / "snapshots").rglob("*") if p.is_symlink()}
    for blob in blobs - still_used:
        if blob.exists() and blob.parent == storage / "blobs":
            blob.unlink()
            removed.append(blob)
    integrity.forget([*blobs, *snapshot_files])
    _prune_empty(storage)
    return removed


def _prune_empty(storage: Path) -> None:
    """Remove snapshot folders left empty, and the repo's folder once it holds no file at all."""
    if not storage.is_dir():
        return
    snapshots = storage / "snapshots"
    if snapshots.is_dir():
        for folder in sorted(snapshots.rglob("*"), key=lambda p: -len(p.parts)):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    holds_files = any(p.is_file() or p.is_symlink() for p in storage.rglob("*") if "refs" not in p.relative_to(storage).parts)
    if not holds_files:
        shutil.rmtree(storage)
