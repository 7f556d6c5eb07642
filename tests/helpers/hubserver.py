"""A stand-in for the Hugging Face hub on 127.0.0.1, answering what ``huggingface_hub`` asks.

It serves, for the repos a test adds:
- ``GET /api/models/{repo}/revision/{rev}``: the model info, with each file's size, git blob id
  and, for LFS files, sha256 (what ``HfApi.model_info(files_metadata=True)`` reads);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: small files directly (ETag = git blob id), LFS
  files as a 302 to a second server on another port (a "CDN" with ``X-Linked-Etag`` = sha256,
  ``X-Linked-Size``), as the real hub does; both honour ``Range`` so downloads can resume.

Faults a test can ask for, per file path: cut the connection after N bytes (once), stall after N
bytes until released, refuse Range requests, serve other bytes than the published ones, advertise
another size. Every
request is logged so tests can assert what was (and was not) fetched.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".gguf", ".safetensors")
STALL_TIMEOUT_SECONDS = 60
WRITE_CHUNK_BYTES = 1 << 20


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes, sha256: str) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()


@dataclass
class Repo:
    repo_id: str
    files: dict[str, bytes]
    lfs: set[str]  # paths stored with LFS
    commit: str = ""

    def __post_init__(self):
        # Hashed once: the handlers ask for these on every request.
        self._sha256 = {path: hashlib.sha256(data).hexdigest() for path, data in self.files.items()}
        self._blob_id = {path: git_blob_id(data) for path, data in self.files.items()}
        if not self.commit:
            digest = hashlib.sha1(self.repo_id.encode())
            for path in sorted(self.files):
                digest.update(path.encode() + self._sha256[path].encode())
            self.commit = digest.hexdigest()

    def sha256(self, path: str) -> str:
        return self._sha256[path]

    def blob_id(self, path: str) -> str:
        """The git object id: of the file itself, or of its LFS pointer."""
        if path in self.lfs:
            return git_blob_id(lfs_pointer(self.files[path], self._sha256[path]))
        return self._blob_id[path]


@dataclass
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class Faults:
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before closing (once)
    stall_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before waiting
    serve_instead: dict[str, bytes] = field(default_factory=dict)  # path -> bytes served (not published)
    advertised_size: dict[str, int] = field(default_factory=dict)  # path -> size in the model info
    refuse_ranges: dict[str, int] = field(default_factory=dict)  # path -> HTTP status for Range requests


class HubServer:
    """Start with ``with HubServer() as hub:``; ``hub.url`` is the HF_ENDPOINT to use."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.faults = Faults()
        self.requests: list[Request] = []
        self.stalled = threading.Event()  # set once a stalled transfer has sent its bytes
        self.release = threading.Event()  # set to let stalled transfers end
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    # -- set up --------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes], lfs: set[str] | None = None) -> Repo:
        if lfs is None:
            lfs = {path for path in files if path.endswith(LFS_SUFFIXES)}
        repo = Repo(repo_id, dict(files), set(lfs))
        self.repos[repo_id] = repo
        return repo

    def __enter__(self) -> HubServer:
        handler = _make_handler(self)
        for _ in range(2):  # the hub, then the "CDN" on another origin
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    # -- what happened -------------------------------------------------------------------------

    def log(self, method: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append(Request(method, path, range_header))

    def content_requests(self, method: str = "GET") -> list[Request]:
        """Requests for file bytes (not the API, not metadata-only HEADs unless asked)."""
        return [r for r in self.requests if r.method == method and ("/resolve/" in r.path or r.path.startswith("/cdn/"))]

    def bytes_for(self, repo_id: str, path: str) -> bytes:
        return self.repos[repo_id].files[path]


_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _make_handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self.route(head=True)

        def do_GET(self) -> None:
            self.route(head=False)

        # -- routing -----------------------------------------------------------------------

        def route(self, head: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.log(self.command, path, self.headers.get("Range"))
            if self.server is hub._servers[1]:
                return self.cdn(path, head)
            api = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$", path)
            if api:
                return self.model_info(api.group(1), api.group(2) or "main")
            resolve = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if resolve:
                return self.resolve(resolve.group(1), resolve.group(2), resolve.group(3), head)
            self.reply(404, b"not found")

        def find(self, repo_id: str, revision: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self.reply(404, b"Repository not found", {"X-Error-Code": "RepoNotFound"})
                return None
            if revision not in ("main", repo.commit):
                self.reply(404, b"Revision not found", {"X-Error-Code": "RevisionNotFound"})
                return None
            return repo

        def model_info(self, repo_id: str, revision: str) -> None:
            repo = self.find(repo_id, revision)
            if repo is None:
                return
            siblings = []
            for path, data in sorted(repo.files.items()):
                size = hub.faults.advertised_size.get(path, len(data))
                if path in repo.lfs:
                    pointer = lfs_pointer(data, repo.sha256(path))
                    siblings.append(
                        {
                            "rfilename": path,
                            "size": size,
                            "blobId": repo.blob_id(path),
                            "lfs": {"size": size, "sha256": repo.sha256(path), "pointerSize": len(pointer)},
                        }
                    )
                else:
                    siblings.append({"rfilename": path, "size": size, "blobId": repo.blob_id(path)})
            body = json.dumps(
                {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False, "siblings": siblings}
            ).encode()
            self.reply(200, body, {"Content-Type": "application/json"})

        def resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
            repo = self.find(repo_id, revision)
            if repo is None:
                return
            if path not in repo.files:
                self.reply(404, b"Entry not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit})
                return
            data = repo.files[path]
            size = hub.faults.advertised_size.get(path, len(data))
            if path in repo.lfs:
                headers = {
                    "Location": f"{hub.cdn_url}/cdn/{repo_id}/{repo.sha256(path)}",
                    "X-Repo-Commit": repo.commit,
                    "X-Linked-Etag": f'"{repo.sha256(path)}"',
                    "X-Linked-Size": str(size),
                    "ETag": f'"{repo.blob_id(path)}"',
                }
                self.reply(302, b"", headers)
                return
            headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{repo.blob_id(path)}"'}
            self.content(path, hub.faults.serve_instead.get(path, data), head, headers)

        def cdn(self, path: str, head: bool) -> None:
            match = re.match(r"^/cdn/([^/]+/[^/]+)/([0-9a-f]{64})$", path)
            repo = hub.repos.get(match.group(1)) if match else None
            found = [p for p in (repo.files if repo else {}) if repo.sha256(p) == match.group(2)]
            if not found:
                self.reply(404, b"no such object")
                return
            file_path = found[0]
            self.content(file_path, hub.faults.serve_instead.get(file_path, repo.files[file_path]), head, {})

        # -- answers -----------------------------------------------------------------------

        def content(self, path: str, data: bytes, head: bool, headers: dict) -> None:
            start = 0
            status = 200
            match = _RANGE.match(self.headers.get("Range", ""))
            if match and path in hub.faults.refuse_ranges:
                self.reply(hub.faults.refuse_ranges[path], b"unavailable")
                return
            if match:
                start = int(match.group(1))
                if start >= len(data):
                    self.reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
                status = 206
                headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            body = memoryview(data)[start:]  # no copy of a large file per request
            headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            if head:
                self.reply(status, b"", {**headers, "Content-Length": str(len(body))}, send_body=False)
                return
            cut = hub.faults.cut_after.pop(path, None)
            stall = hub.faults.stall_after.get(path)
            limit = cut if cut is not None else stall
            if limit is None or limit >= len(body):
                self.reply(status, body, headers)
                return
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body[:limit])
            self.wfile.flush()
            if cut is None:  # stalled: hold the connection open until released
                hub.stalled.set()
                hub.release.wait(STALL_TIMEOUT_SECONDS)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def reply(self, status: int, body: bytes, headers: dict | None = None, send_body: bool = True) -> None:
            self.send_response(status)
            headers = dict(headers or {})
            headers.setdefault("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if send_body:
                for offset in range(0, len(body), WRITE_CHUNK_BYTES):
                    self.wfile.write(body[offset : offset + WRITE_CHUNK_BYTES])

    return Handler
