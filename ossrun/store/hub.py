"""Files from the Hugging Face hub: listed, downloaded into its standard cache, resumed, verified.

Everything goes through ``huggingface_hub``. ossrun adds what a multi-gigabyte download needs:
a free-space check before starting, a partial file that survives an interrupted run and is
resumed by the next one, and a hash check of every file against the hub's published sha256 (or
git SHA-1) before it lands in the cache; a file that fails is deleted, never used.

The environment (``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``) is read at
call time, not when ``huggingface_hub`` is first imported.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ossrun.errors import DownloadError
from ossrun.home import write_atomically
from ossrun.store import integrity
from ossrun.store.integrity import ExpectedHash
from ossrun.units import format_size

DEFAULT_ENDPOINT = "https://huggingface.co"
PARTIAL_SUFFIX = ".incomplete"  # <blob>.incomplete: the bytes of <blob> received so far
METADATA_TIMEOUT_SECONDS = 10
_TRUE = {"1", "on", "yes", "true"}


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    """The hub cache, as ``huggingface_hub`` resolves it (HF_HUB_CACHE, then HF_HOME/hub)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(hf_home)).expanduser() / "hub"


def is_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def require_online(what: str) -> None:
    if is_offline():
        raise DownloadError(f"cannot {what}: offline mode is on (HF_HUB_OFFLINE=1); unset it to download")


def notice(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class RemoteFile:
    path: str  # inside the repo
    size: int
    expected: ExpectedHash  # sha256 for LFS files, the git blob id for the others


@dataclass(frozen=True)
class RemoteRepo:
    repo: str
    revision: str  # as asked ("main")
    commit: str  # what it resolved to: every file is fetched at this commit
    files: Mapping[str, RemoteFile]

    def file(self, path: str) -> RemoteFile:
        if path not in self.files:
            raise DownloadError(f"{self.repo} has no file {path!r} at {self.revision}: check models.toml")
        return self.files[path]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """Turn ``huggingface_hub`` and network failures into one-line DownloadErrors."""
    from huggingface_hub import errors as hf

    try:
        yield
    except hf.OfflineModeIsEnabled:
        raise DownloadError(f"cannot {what}: offline mode is on (HF_HUB_OFFLINE=1); unset it to download") from None
    except hf.GatedRepoError:
        raise DownloadError(f"cannot {what}: the repo is gated; accept its terms on the hub and log in") from None
    except hf.RepositoryNotFoundError:
        raise DownloadError(f"cannot {what}: the repo was not found on {endpoint()}; check models.toml") from None
    except hf.RevisionNotFoundError:
        raise DownloadError(f"cannot {what}: no such revision on {endpoint()}; check models.toml") from None
    except hf.RemoteEntryNotFoundError:
        raise DownloadError(f"cannot {what}: no such file on {endpoint()}; check models.toml") from None
    except hf.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "an error"
        raise DownloadError(f"cannot {what}: {endpoint()} answered HTTP {status}; try again later") from None
    except (hf.HTTPError, hf.LocalEntryNotFoundError) as exc:  # no connection, timeouts, cut transfers
        raise DownloadError(
            f"cannot {what}: cannot reach {endpoint()} ({_one_line(exc)}); check the network and try again"
        ) from None
    except hf.FileMetadataError as exc:
        raise DownloadError(f"cannot {what}: {endpoint()} does not answer like the hub ({_one_line(exc)})") from None


def fetch_repo(repo: str, revision: str, what: str | None = None) -> RemoteRepo:
    """The repo's file list at ``revision``, with sizes and published hashes (one API call).

    ``what`` names the task in error messages ("download gpt-oss-20b").
    """
    what = what or f"list {repo}"
    require_online(what)
    from huggingface_hub import HfApi

    with hub_errors(what):
        info = HfApi(endpoint=endpoint()).model_info(
            repo, revision=revision, files_metadata=True, timeout=METADATA_TIMEOUT_SECONDS
        )
    if not info.sha or info.siblings is None:
        raise DownloadError(f"cannot {what}: {endpoint()} sent no commit or file list for {repo}")
    files = {}
    for sibling in info.siblings:
        if sibling.lfs is not None:
            expected, size = ExpectedHash(integrity.SHA256, sibling.lfs.sha256.lower()), sibling.lfs.size
        elif sibling.blob_id is not None and sibling.size is not None:
            expected, size = ExpectedHash(integrity.GIT_SHA1, sibling.blob_id.lower()), sibling.size
        else:
            continue  # no published hash: ossrun never downloads such a file
        files[sibling.rfilename] = RemoteFile(sibling.rfilename, size, expected)
    return RemoteRepo(repo, revision, info.sha, files)


def repo_storage(repo: str) -> Path:
    """The repo's folder in the hub cache (``models--owner--name``)."""
    return cache_dir() / ("models--" + repo.replace("/", "--"))


def snapshot_path(repo: str, commit: str, path: str) -> Path:
    return repo_storage(repo) / "snapshots" / commit / path


def blob_path(repo: str, expected: ExpectedHash) -> Path:
    return repo_storage(repo) / "blobs" / expected.digest


def partial_path(repo: str, expected: ExpectedHash) -> Path:
    return repo_storage(repo) / "blobs" / (expected.digest + PARTIAL_SUFFIX)


def bytes_missing(remote: RemoteRepo, file: RemoteFile) -> int:
    """What downloading ``file`` still has to fetch (a partial file counts as fetched)."""
    if snapshot_path(remote.repo, remote.commit, file.path).exists() or blob_path(remote.repo, file.expected).exists():
        return 0
    partial = partial_path(remote.repo, file.expected)
    have = partial.stat().st_size if partial.exists() else 0
    return max(file.size - have, 0)


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


def _progress_bar(total: int, initial: int, description: str):
    """huggingface_hub's own progress bar: on stderr, and only drawn when stderr is a terminal."""
    from huggingface_hub.utils import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=description, disable=None)


def verify_file(path: Path, expected: ExpectedHash, label: str | None = None) -> bool:
    """Hash ``path`` once (with a progress bar) unless the record says it already passed."""
    if integrity.is_verified(path, expected):
        return True
    with _progress_bar(path.stat().st_size, 0, f"verify {label or path.name}") as bar:
        return integrity.verify(path, expected, bar.update)


def _verify(path: Path, file: RemoteFile) -> bool:
    return verify_file(path, file.expected, Path(file.path).name)


def _same_origin(url: str, other: str) -> bool:
    a, b = urlsplit(url), urlsplit(other)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def download(remote: RemoteRepo, file: RemoteFile) -> Path:
    """Make ``file`` present and verified in the hub cache; return its path in the snapshot.

    The bytes go to ``<blob>.incomplete`` first; an interrupted download leaves it for the next
    run to resume. Only a file whose hash matches the hub's becomes the blob the cache points to.
    """
    snapshot = snapshot_path(remote.repo, remote.commit, file.path)
    if snapshot.exists():
        if _verify(snapshot, file):
            return snapshot
        notice(f"{file.path} in the cache does not match the hub's {file.expected.algorithm}: deleting it")
        delete_files(remote.repo, [snapshot])

    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    what = f"download {file.path} from {remote.repo}"
    require_online(what)
    blob = blob_path(remote.repo, file.expected)
    with hub_errors(what):
        url = hf_hub_url(remote.repo, file.path, revision=remote.commit, endpoint=endpoint())
        headers = build_hf_headers()
        metadata = get_hf_file_metadata(url, headers=headers, endpoint=endpoint(), timeout=METADATA_TIMEOUT_SECONDS)
        if (metadata.etag or "").lower() != file.expected.digest:
            raise DownloadError(
                f"cannot {what}: the hub's file list and the file itself disagree on its hash; try again later"
            )
        if not _same_origin(url, metadata.location):
            headers.pop("authorization", None)  # never send a hub token to a storage host

        blob.parent.mkdir(parents=True, exist_ok=True)
        lock = cache_dir() / ".locks" / repo_storage(remote.repo).name / f"{file.expected.digest}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(lock):
            if blob.exists() and not _verify(blob, file):
                notice(f"{file.path} in the cache does not match the hub's {file.expected.algorithm}: deleting it")
                integrity.forget([blob])
                blob.unlink()
            if not blob.exists():
                _fetch(metadata.location, headers, remote, file)
        # huggingface_hub links the verified blob into the snapshot, its own way on every platform.
        hf_hub_download(remote.repo, file.path, revision=remote.commit, cache_dir=cache_dir(), endpoint=endpoint())
    if not snapshot.is_symlink():  # a copy of the verified blob (no symlinks here): record it too
        integrity.record_verified(snapshot, file.expected)
    return snapshot


def _fetch(location: str, headers: dict, remote: RemoteRepo, file: RemoteFile) -> None:
    """Download into the partial file (resuming it), check its hash, move it to the blob."""
    from huggingface_hub import errors as hf
    from huggingface_hub.file_download import http_get

    partial = partial_path(remote.repo, file.expected)
    have = partial.stat().st_size if partial.exists() else 0
    if have > file.size:  # not a prefix of this file: start over
        partial.unlink()
        have = 0
    if have:
        notice(f"resuming {file.path}: {format_size(have)} of {format_size(file.size)} already here")
    else:
        notice(f"downloading {file.path} ({format_size(file.size)}) from {remote.repo}")

    def kept() -> str:
        size = partial.stat().st_size if partial.exists() else 0
        return f"{format_size(size)} of {format_size(file.size)} kept; run the same command again to resume"

    try:
        with partial.open("ab") as f:
            http_get(location, f, resume_size=have, headers=headers, expected_size=file.size,
                     displayed_filename=Path(file.path).name)
    except KeyboardInterrupt:
        notice(f"download of {file.path} stopped: {kept()}")
        raise
    except hf.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "an error"
        raise DownloadError(f"download of {file.path} failed: the server answered HTTP {status}; {kept()}") from None
    except (hf.HTTPError, OSError) as exc:  # cut connections (after huggingface_hub's retries), short reads
        raise DownloadError(f"download of {file.path} was interrupted ({_one_line(exc)}); {kept()}") from None

    if not _verify(partial, file):
        partial.unlink()
        raise DownloadError(
            f"{file.path} from {remote.repo} does not match the hub's {file.expected.algorithm} "
            f"{file.expected.digest[:12]}…: the damaged download was deleted; run the same command to fetch it again"
        )
    blob = blob_path(remote.repo, file.expected)
    os.replace(partial, blob)
    integrity.record_verified(blob, file.expected)  # same file, new name: record it under the name it keeps
    notice(f"verified {file.path} ({file.expected.algorithm})")


def write_ref(remote: RemoteRepo) -> None:
    """Point ``refs/<revision>`` at the pulled commit, as huggingface_hub does, so tools see it as current."""
    if remote.revision != remote.commit:
        write_atomically(repo_storage(remote.repo) / "refs" / remote.revision, remote.commit.encode())


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
    return [commit / path for commit in sorted(snapshots.iterdir()) if commit.name != except_commit
            for path in paths if (commit / path).is_symlink() or (commit / path).exists()]


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
    holds_files = any(p.is_file() or p.is_symlink() for p in storage.rglob("*")
                      if "refs" not in p.relative_to(storage).parts)
    if not holds_files:
        shutil.rmtree(storage)
