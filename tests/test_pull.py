"""``ossrun pull`` / ``models`` / ``rm`` against a local hub (tests/hubserver.py) on 127.0.0.1.

Everything that talks HTTP runs in a subprocess with ``HF_ENDPOINT`` pointing at the local
server, as a user's shell would: huggingface_hub reads its settings when first imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.hubserver import HubServer
from helpers.terminal import stderr_on_a_terminal
from ossrun.errors import ModelError
from ossrun.store import integrity
from ossrun.store.local import HUB
from ossrun.store.registry import user_file
from ossrun.store.resolve import resolve_model
from ossrun.units import format_size

MIB = 1 << 20
CLI_TIMEOUT_SECONDS = 120
TINY_REPO, BIG_REPO, SMALL_REPO = "test-org/tiny-GGUF", "test-org/big-GGUF", "test-org/small-GGUF"
SHARDS = ("tiny-00001-of-00002.gguf", "tiny-00002-of-00002.gguf")


def gguf_entry(name: str, repo: str, files: list[str], download_size: str, description: str) -> str:
    """A registry entry (TOML) for a GGUF the local hub serves."""
    return f"""
[models.{name}]
description = "{description}"
parameters = {{ total = "1M", active = "0.5M" }}
context_length = 4096
memory_required = "64 MiB"
reasoning_effort = "low"
sampling = {{ temperature = 1.0, top_p = 1.0 }}
gguf = {{ repo = "{repo}", files = {json.dumps(files)}, download_size = "{download_size}" }}
"""


USER_MODELS = (
    gguf_entry("tiny", TINY_REPO, list(SHARDS), "1.2 MB", "two-shard test model")
    + '[aliases]\nt = "tiny"\n'
    + gguf_entry("big", BIG_REPO, ["big.gguf"], "26 MB", "a file big enough to be interrupted")
    + gguf_entry("small", SMALL_REPO, ["small.gguf"], "3 KB", "a file the hub keeps in git, not LFS")
)


def data(n_bytes: int, seed: int) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (n_bytes // 32 + 1))[:n_bytes]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The local hub with three test repos, the user registry naming them, and HF_* pointing here."""
    with HubServer() as server:
        server.add_repo(
            TINY_REPO,
            {
                SHARDS[0]: os.urandom(1_000_000),
                SHARDS[1]: os.urandom(200_000),
                "README.md": b"# tiny\n",
                "tiny-q4.gguf": os.urandom(1000),
            },
        )
        server.add_repo(BIG_REPO, {"big.gguf": data(25 * MIB + 123, 1)})
        server.add_repo(SMALL_REPO, {"small.gguf": data(3000, 2)}, lfs=set())
        user_file().parent.mkdir(parents=True, exist_ok=True)
        user_file().write_text(USER_MODELS)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        yield server


def cache(repo: str) -> Path:
    return Path(os.environ["HF_HOME"]) / "hub" / ("models--" + repo.replace("/", "--"))


def ossrun(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ossrun", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=CLI_TIMEOUT_SECONDS,
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_full_pull_verifies_lists_reuses_and_removes(hub):
    result = ossrun("pull", "t")
    assert result.returncode == 0, result.stderr
    repo = hub.repos[TINY_REPO]
    shard_paths = [cache(TINY_REPO) / "snapshots" / repo.commit / name for name in SHARDS]
    assert result.stdout == f"{shard_paths[0]}\n"
    for path, name in zip(shard_paths, SHARDS, strict=True):
        assert path.read_bytes() == repo.files[name]
        assert Path(os.path.realpath(path)).name == repo.sha256(name)  # the blob, named by its sha256
        assert integrity.is_verified(path, integrity.ExpectedHash("sha256", repo.sha256(name)))
    assert "verified tiny-00001-of-00002.gguf (sha256)" in result.stderr
    # Only the listed files were fetched, each once; nothing else from the repo.
    fetched = [r.path for r in hub.content_requests("GET")]
    assert sorted(fetched) == sorted(f"/cdn/{TINY_REPO}/{repo.sha256(name)}" for name in SHARDS)
    assert (cache(TINY_REPO) / "refs" / "main").read_text() == repo.commit

    local = resolve_model("tiny")  # in-process, no network: the verified record is enough
    assert (local.path, local.files, local.source) == (shard_paths[0], tuple(shard_paths), HUB)
    assert local.size_bytes == 1_200_000

    listing = ossrun("models")
    assert listing.returncode == 0
    row = next(line for line in listing.stdout.splitlines() if line.startswith("tiny "))
    assert row.split()[-1] == "yes"
    assert f"tiny: {shard_paths[0]}  1.2 MB  verified" in listing.stdout

    hub.requests.clear()
    again = ossrun("pull", "tiny")
    assert again.returncode == 0 and again.stdout == result.stdout
    assert again.stderr == "tiny is up to date\n"
    assert hub.content_requests("GET") == [] and hub.content_requests("HEAD") == []  # checked, not fetched

    removed = ossrun("rm", "tiny")
    assert removed.returncode == 0, removed.stderr
    assert f"removed {shard_paths[0]}" in removed.stdout
    assert not cache(TINY_REPO).exists()
    with pytest.raises(ModelError, match=r"^tiny is not on disk: run `ossrun pull tiny` to download it \(1.2 MB\)"):
        resolve_model("tiny")
    assert one_error_line(ossrun("rm", "tiny")) == "error: tiny is not on disk: nothing to remove"


PROGRESS_CODE = """
import json, sys
from ossrun.store.pull import pull
steps = []
path = pull(sys.argv[1], progress=lambda what, done, total: steps.append((what, done, total))).path
print(json.dumps({"path": str(path), "steps": steps}))
"""


def pull_reporting(name: str) -> tuple[str, list[tuple[str, int, int]], str]:
    """``ossrun.store.pull.pull(name, progress=...)`` in a subprocess: the path, the steps it heard, stderr."""
    result = subprocess.run(
        [sys.executable, "-c", PROGRESS_CODE, name], capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    return out["path"], [tuple(step) for step in out["steps"]], result.stderr


def steps_of(calls: list[tuple[str, int, int]]) -> list[tuple[str, list[int], int]]:
    """The calls grouped by step, in order: (what, the bytes done it heard, the total)."""
    steps: list[tuple[str, list[int], int]] = []
    for what, done, total in calls:
        if not steps or steps[-1][0] != what:
            steps.append((what, [], total))
        assert total == steps[-1][2], (what, total)
        steps[-1][1].append(done)
    return steps


def test_the_library_reports_each_files_download_and_check_and_draws_nothing(hub):
    path, calls, stderr = pull_reporting("tiny")
    assert Path(path).name == SHARDS[0]
    sizes = {SHARDS[0]: 1_000_000, SHARDS[1]: 200_000}
    steps = steps_of(calls)
    assert [(what, total) for what, _, total in steps] == [
        (f"{step} {name}", size) for name, size in sizes.items() for step in ("download", "verify")
    ]
    for _, done, total in steps:
        assert done[0] == 0 and done[-1] == total and done == sorted(done) and len(done) > 1
    # No bar (stderr is not a terminal): the lines that say what happens, nothing else.
    assert stderr == "".join(
        f"downloading {name} ({format_size(size)}) from {TINY_REPO}\nverified {name} (sha256)\n" for name, size in sizes.items()
    )


def test_a_download_resumed_after_a_cut_reports_the_files_bytes_once(hub):
    size = len(hub.bytes_for(BIG_REPO, "big.gguf"))
    hub.faults.cut_after["big.gguf"] = 12 * MIB
    _, calls, _ = pull_reporting("big")
    assert len(hub.content_requests("GET")) == 2  # cut, then resumed by huggingface_hub
    download, verify = steps_of(calls)
    assert download[0] == "download big.gguf" and download[2] == size
    assert download[1] == sorted(download[1]) and download[1][-1] == size  # counted on, never past the size
    assert verify == ("verify big.gguf", verify[1], size) and verify[1][-1] == size


def test_pull_on_a_terminal_draws_the_steps_with_rich(hub):
    code, shown = stderr_on_a_terminal([sys.executable, "-m", "ossrun", "pull", "tiny"], timeout=CLI_TIMEOUT_SECONDS)
    assert code == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))
    for name, size in ((SHARDS[0], "1.0/1.0 MB"), (SHARDS[1], "200.0/200.0 kB")):
        assert re.search(rf"download {name} ━+ {re.escape(size)}", text), text
        assert re.search(rf"verify {name} ━+ {re.escape(size)}", text), text
        assert f"verified {name} (sha256)" in text
    assert "%|" not in text  # no tqdm bar


def test_a_newer_version_on_the_hub_replaces_the_old_one(hub):
    assert ossrun("pull", "tiny").returncode == 0
    old = hub.repos[TINY_REPO]
    new = hub.add_repo(TINY_REPO, {**old.files, SHARDS[0]: os.urandom(1_000_000)})  # a new commit
    hub.requests.clear()
    result = ossrun("pull", "tiny")
    assert result.returncode == 0, result.stderr
    assert "removed the previous version of tiny" in result.stderr
    assert [p.name for p in (cache(TINY_REPO) / "snapshots").iterdir()] == [new.commit]
    assert {p.name for p in (cache(TINY_REPO) / "blobs").iterdir()} == {new.sha256(name) for name in SHARDS}
    # The unchanged shard was reused, not fetched again.
    assert [r.path for r in hub.content_requests("GET")] == [f"/cdn/{TINY_REPO}/{new.sha256(SHARDS[0])}"]
    assert resolve_model("tiny").path.read_bytes() == new.files[SHARDS[0]]


def test_pull_resumes_when_the_server_cuts_the_connection(hub):
    size = len(hub.bytes_for(BIG_REPO, "big.gguf"))
    hub.faults.cut_after["big.gguf"] = 12 * MIB
    result = ossrun("pull", "big")
    assert result.returncode == 0, result.stderr
    gets = hub.content_requests("GET")
    assert len(gets) == 2 and gets[0].range is None
    resumed_at = int(gets[1].range.removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= 12 * MIB  # the second request asks only for what was missing
    assert Path(result.stdout.strip()).read_bytes() == hub.bytes_for(BIG_REPO, "big.gguf")
    assert os.path.getsize(result.stdout.strip()) == size


def test_pull_resumes_after_being_interrupted(hub):
    repo = hub.repos[BIG_REPO]
    partial = cache(BIG_REPO) / "blobs" / (repo.sha256("big.gguf") + ".incomplete")
    hub.faults.stall_after["big.gguf"] = 12 * MIB
    process = subprocess.Popen(
        [sys.executable, "-m", "ossrun", "pull", "big"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # Ctrl-C must reach Python
    )
    try:
        assert hub.stalled.wait(60)
        deadline = time.monotonic() + 30
        while not (partial.exists() and partial.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        hub.release.set()
    assert process.returncode == 130 and "Traceback" not in stderr
    kept = partial.stat().st_size
    assert 0 < kept <= 12 * MIB
    assert "run the same command again to resume" in stderr
    assert next(line for line in ossrun("models").stdout.splitlines() if line.startswith("big ")).endswith("partial")
    with pytest.raises(ModelError) as caught:
        resolve_model("big")
    assert str(caught.value) == (
        f"big is not fully downloaded ({format_size(kept)} of 26.0 MB): run `ossrun pull big` to resume, or pass --pull"
    )

    del hub.faults.stall_after["big.gguf"]
    hub.requests.clear()
    result = ossrun("pull", "big")
    assert result.returncode == 0, result.stderr
    assert "resuming big.gguf" in result.stderr
    assert [r.range for r in hub.content_requests("GET")] == [f"bytes={kept}-"]
    assert Path(result.stdout.strip()).read_bytes() == repo.files["big.gguf"]
    assert not partial.exists()


def test_a_failed_download_keeps_its_partial_file_until_rm(hub):
    hub.faults.cut_after["big.gguf"] = 12 * MIB
    hub.faults.refuse_ranges["big.gguf"] = 503  # the retry that would resume fails
    line = one_error_line(ossrun("pull", "big"))
    partial = cache(BIG_REPO) / "blobs" / (hub.repos[BIG_REPO].sha256("big.gguf") + ".incomplete")
    kept = partial.stat().st_size
    assert 0 < kept <= 12 * MIB
    assert line == (
        f"error: download of big.gguf failed: the server answered HTTP 503; "
        f"{format_size(kept)} of 26.2 MB kept; run the same command again to resume"
    )
    removed = ossrun("rm", "big")
    assert removed.returncode == 0 and removed.stdout == f"removed {partial}\n"
    assert not cache(BIG_REPO).exists()


@pytest.mark.parametrize(
    ("name", "repo", "path", "algorithm"),
    [
        ("tiny", TINY_REPO, SHARDS[1], "sha256"),  # LFS file: the published sha256
        ("small", SMALL_REPO, "small.gguf", "git-sha1"),  # git file: the published blob id
    ],
)
def test_bytes_that_do_not_match_the_published_hash_are_rejected(hub, name, repo, path, algorithm):
    published = hub.bytes_for(repo, path)
    hub.faults.serve_instead[path] = published[:-1] + bytes([published[-1] ^ 1])
    line = one_error_line(ossrun("pull", name))
    assert f"{path} from {repo} does not match the hub's {algorithm}" in line
    assert "the damaged download was deleted" in line
    assert not any(n == path or n.endswith(".incomplete") for n in files_in(cache(repo)))
    with pytest.raises(ModelError, match="is not on disk"):
        resolve_model(name)

    del hub.faults.serve_instead[path]
    assert ossrun("pull", name).returncode == 0  # the next try gets the real bytes


def test_a_file_damaged_on_disk_is_deleted_not_used(hub):
    assert ossrun("pull", "tiny").returncode == 0
    first = resolve_model("tiny").files[1]
    blob = Path(os.path.realpath(first))
    damaged = bytearray(blob.read_bytes())
    damaged[1000] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(damaged))
    with pytest.raises(ModelError, match=r"^tiny-00002-of-00002.gguf of tiny is damaged .* deleted: run `ossrun pull tiny`"):
        resolve_model("tiny")
    assert not blob.exists() and not first.exists()


def test_offline_mode_is_one_line_and_makes_no_request(hub):
    line = one_error_line(ossrun("pull", "tiny", HF_HUB_OFFLINE="1"))
    assert line == "error: cannot download tiny (1.2 MB): offline mode is on (HF_HUB_OFFLINE=1); unset it to download"
    assert hub.requests == []

    assert ossrun("pull", "tiny").returncode == 0
    hub.requests.clear()
    offline = ossrun("pull", "tiny", HF_HUB_OFFLINE="1")
    assert offline.returncode == 0 and offline.stdout.strip().endswith(SHARDS[0])
    assert "offline: tiny is on disk" in offline.stderr
    assert hub.requests == []


def test_no_network_is_one_line(hub):
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    line = one_error_line(ossrun("pull", "tiny", HF_ENDPOINT=closed))
    assert line.startswith(f"error: cannot download tiny (1.2 MB): cannot reach {closed} (")
    assert line.endswith("check the network and try again")


def test_not_enough_disk_space_refuses_before_downloading(hub):
    hub.faults.advertised_size[SHARDS[0]] = 10**15  # 1 PB: no test machine has that free
    line = one_error_line(ossrun("pull", "tiny"))
    assert line.startswith("error: not enough disk space to download tiny (1.2 MB): it needs 1.0 PB in ")
    assert " is free; free some space" in line
    assert hub.content_requests("GET") == [] and hub.content_requests("HEAD") == []


def test_a_repo_missing_from_the_hub_is_one_line(hub):
    del hub.repos[SMALL_REPO]
    assert one_error_line(ossrun("pull", "small")) == (
        f"error: cannot download small (3.0 KB): the repo was not found on {hub.url}; check models.toml"
    )


def test_resolve_with_pull_downloads_first(hub):
    code = "from ossrun.store.resolve import resolve_model; m = resolve_model('t', pull=True); print(m.path, m.source)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS)
    assert result.returncode == 0, result.stderr
    path, source = result.stdout.split()
    assert (Path(path).name, source) == (SHARDS[0], HUB)
    assert len(hub.content_requests("GET")) == 2


# --- pull --from-safetensors: download the checkpoint files the converter needs, convert them ------

CHECKPOINT_REPO = "test-org/tiny-gpt-oss"
CHECKPOINT_ENTRY = f"""
[models.tiny-oss]
description = "a tiny gpt-oss published as safetensors only"
parameters = {{ total = "30M", active = "29M" }}
context_length = 131072
memory_required = "200 MiB"
reasoning_effort = "medium"
sampling = {{ temperature = 1.0, top_p = 1.0 }}
safetensors = {{ repo = "{CHECKPOINT_REPO}", original = "original", download_size = "160 MB" }}
"""


@pytest.fixture(scope="module")
def checkpoint_repo(tmp_path_factory, tiny_weights, o200k_tokenizer_dir) -> Path:
    """Both published layouts in one repo folder (named like the entry), plus files pull must skip."""
    from helpers.checkpoints import write_hf_checkpoint, write_original_checkpoint

    config, weights = tiny_weights
    root = tmp_path_factory.mktemp("published") / "tiny-oss"
    write_hf_checkpoint(root, weights, config, o200k_tokenizer_dir)
    write_original_checkpoint(root, weights, config, None)
    (root / "README.md").write_text("# tiny gpt-oss\n")
    (root / "LICENSE").write_text("Apache-2.0\n")
    (root / "original" / "dtypes.json").write_text("{}\n")
    (root / "metal").mkdir()
    (root / "metal" / "model.bin").write_bytes(data(4096, 3))
    return root


@pytest.fixture(scope="module")
def expected_gguf(tmp_path_factory, checkpoint_repo):
    """What converting each layout of the same folder locally gives."""
    from ossrun.convert import convert

    out = tmp_path_factory.mktemp("expected")
    return {
        "hf": convert(checkpoint_repo, out / "hf.gguf").read_bytes(),
        "original": convert(checkpoint_repo / "original", out / "original.gguf").read_bytes(),
    }


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["hf", "original"])
def test_pull_from_safetensors_converts_what_it_downloaded(hub, checkpoint_repo, expected_gguf, layout):
    files = {p.relative_to(checkpoint_repo).as_posix(): p.read_bytes() for p in checkpoint_repo.rglob("*") if p.is_file()}
    repo = hub.add_repo(CHECKPOINT_REPO, files)
    user_file().write_text(USER_MODELS + CHECKPOINT_ENTRY)

    result = ossrun("pull", "tiny-oss", "--from-safetensors", "--layout", layout)
    assert result.returncode == 0, result.stderr
    out = Path(os.environ["OSSRUN_HOME"]) / "models" / "tiny-oss.gguf"
    assert result.stdout == f"{out}\n"
    assert out.read_bytes() == expected_gguf[layout]  # the same GGUF as converting those files locally

    # Exactly the files of that layout, its config and the tokenizer: no other layout, no docs.
    tokenizer = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"}
    if layout == "hf":
        wanted = tokenizer | {
            "config.json",
            "generation_config.json",
            "model.safetensors.index.json",
            "model-00000-of-00001.safetensors",
            "model-00001-of-00001.safetensors",
        }
    else:
        wanted = tokenizer | {"original/config.json", "original/model.safetensors"}
    assert wanted <= files.keys()
    fetched = {
        r.path.split("/resolve/")[1].split("/", 1)[1] for r in hub.requests if r.method == "HEAD" and "/resolve/" in r.path
    }
    assert fetched == wanted
    assert len(hub.content_requests("GET")) == len(wanted)
    assert all(
        r.path.split("/")[-1] in {repo.sha256(p) for p in wanted}
        for r in hub.content_requests("GET")
        if r.path.startswith("/cdn/")
    )

    local = resolve_model("tiny-oss")
    assert (local.path, local.source) == (out, "converted")
    listing = ossrun("models")
    assert f"tiny-oss: {out}" in listing.stdout and "converted from safetensors" in listing.stdout
    assert not (Path(os.environ["OSSRUN_HOME"]) / "cache" / "convert" / "tiny-oss").exists()

    removed = ossrun("rm", "tiny-oss")
    assert removed.stdout == f"removed {out}\n" and not out.exists()
