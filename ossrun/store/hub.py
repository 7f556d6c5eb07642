"""Files from the Hugging Face hub: listed, downloaded into its standard cache, resumed, verified.

The one module that reaches the network (``hub_cache.py`` knows the cache on disk).

Everything goes through ``huggingface_hub``. ossrun adds what a multi-gigabyte download needs:
a free-space check before starting, a partial file that survives an interrupted run and is
resumed by the next one, and a hash check of every file against the hub's published sha256 (or
git SHA-1) before it lands in the cache; a file that fails is deleted, never used.

The environment (``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``) is read at
call time, not when ``huggingface_hub`` is first imported.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ossrun.errors import DownloadError
from ossrun.store import integrity
from ossrun.store.hub_cache import (
    FileProgress,
    blob_path,
    cache_dir,
    delete_files,
    notice,
    partial_path,
    repo_storage,
    snapshot_path,
    verify_file,
)
from ossrun.store.integrity import ExpectedHash
from ossrun.units import format_size

if TYPE_CHECKING:
    from huggingface_hub.utils import tqdm

DEFAULT_ENDPOINT = "https://huggingface.co"
METADATA_TIMEOUT_SECONDS = 10
_TRUE = {"1", "on", "yes", "true"}


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def require_online(what: str) -> None:
    if is_offline():
        raise DownloadError(f"cannot {what}: offline mode is on (HF_HUB_OFFLINE=1); unset it to download")


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


def bytes_missing(remote: RemoteRepo, file: RemoteFile) -> int:
    """What downloading ``file`` still has to fetch (a partial file counts as fetched)."""
    if snapshot_path(remote.repo, remote.commit, file.path).exists() or blob_path(remote.repo, file.expected).exists():
        return 0
    partial = partial_path(remote.repo, file.expected)
    have = partial.stat().st_size if partial.exists() else 0
    return max(file.size - have, 0)


def _verify(path: Path, file: RemoteFile, progress: FileProgress | None) -> bool:
    return verify_file(path, file.expected, Path(file.path).name, progress)


def _same_origin(url: str, other: str) -> bool:
    a, b = urlsplit(url), urlsplit(other)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def download(remote: RemoteRepo, file: RemoteFile, progress: FileProgress | None = None) -> Path:
    """Make ``file`` present and verified in the hub cache; return its path in the snapshot.

    The bytes go to ``<blob>.incomplete`` first; an interrupted download leaves it for the next
    run to resume. Only a file whose hash matches the hub's becomes the blob the cache points to.
    ``progress`` hears how far the download and the hash check are; nothing is drawn here.
    """
    snapshot = snapshot_path(remote.repo, remote.commit, file.path)
    if snapshot.exists():
        if _verify(snapshot, file, progress):
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
            raise DownloadError(f"cannot {what}: the hub's file list and the file itself disagree on its hash; try again later")
        if not _same_origin(url, metadata.location):
            headers.pop("authorization", None)  # never send a hub token to a storage host

        blob.parent.mkdir(parents=True, exist_ok=True)
        lock = cache_dir() / ".locks" / repo_storage(remote.repo).name / f"{file.expected.digest}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(lock):
            if blob.exists() and not _verify(blob, file, progress):
                notice(f"{file.path} in the cache does not match the hub's {file.expected.algorithm}: deleting it")
                integrity.forget([blob])
                blob.unlink()
            if not blob.exists():
                _fetch(metadata.location, headers, remote, file, progress)
        # huggingface_hub links the verified blob into the snapshot, its own way on every platform.
        hf_hub_download(remote.repo, file.path, revision=remote.commit, cache_dir=cache_dir(), endpoint=endpoint())
    if not snapshot.is_symlink():  # a copy of the verified blob (no symlinks here): record it too
        integrity.record_verified(snapshot, file.expected)
    return snapshot


def _reporting_bar(what: str, size: int, progress: FileProgress | None) -> type[tqdm]:
    """A bar class for huggingface_hub's ``http_get`` that draws nothing and tells ``progress`` the
    bytes of the file received (a resumed download starts at what it had; huggingface_hub counts
    back when a server ignores the range and sends it all)."""
    from huggingface_hub.utils import tqdm

    class Reporting(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})
            self.done = int(kwargs.get("initial") or 0)
            if progress is not None:
                progress(what, self.done, size)

        def update(self, n: float | None = 1) -> bool | None:
            self.done += int(n or 0)
            if progress is not None:
                progress(what, self.done, size)
            return super().update(n)

    return Reporting


def _fetch(location: str, headers: dict, remote: RemoteRepo, file: RemoteFile, progress: FileProgress | None) -> None:
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
            http_get(
                location,
                f,
                resume_size=have,
                headers=headers,
                expected_size=file.size,
                tqdm_class=_reporting_bar(f"download {Path(file.path).name}", file.size, progress),
            )
    except KeyboardInterrupt:
        notice(f"download of {file.path} stopped: {kept()}")
        raise
    except hf.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "an error"
        raise DownloadError(f"download of {file.path} failed: the server answered HTTP {status}; {kept()}") from None
    except (hf.HTTPError, OSError) as exc:  # cut connections (after huggingface_hub's retries), short reads
        raise DownloadError(f"download of {file.path} was interrupted ({_one_line(exc)}); {kept()}") from None

    if not _verify(partial, file, progress):
        partial.unlink()
        raise DownloadError(
            f"{file.path} from {remote.repo} does not match the hub's {file.expected.algorithm} "
            f"{file.expected.digest[:12]}…: the damaged download was deleted; run the same command to fetch it again"
        )
    blob = blob_path(remote.repo, file.expected)
    os.replace(partial, blob)
    integrity.record_verified(blob, file.expected)  # same file, new name: record it under the name it keeps
    notice(f"verified {file.path} ({file.expected.algorithm})")
