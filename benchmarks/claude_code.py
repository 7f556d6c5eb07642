"""What Claude Code's first turn costs through ``ossrun serve``: its prompt tokens and the time to the answer.

    python benchmarks/claude_code.py --claude ~/cc/node_modules/.bin/claude             # the demo model
    python benchmarks/claude_code.py --claude ... --model ~/gpt-oss-20b.gguf --runs 1 --max-output-tokens 64
    python benchmarks/claude_code.py --claude ... -- --tools "" --effort low        # arguments for claude

Each run starts a server of its own with an empty ossrun home (nothing cached, on disk or in
memory), runs ``claude -p QUESTION`` against it twice (two sessions: the second finds the first's
instructions and tools in the cache), and reads the server's log line of each request: prompt
tokens, how many of them the cache held, and the time. Claude Code runs offline with a home of
its own (no telemetry, no updates, no other traffic) and generous stream timeouts: a CPU reads
its prompt for minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

QUESTION = "What is 38 + 47?"
LOG_LINE = re.compile(r"^POST /v1/messages (\d+) (\d+)\+(\d+) tokens \((\d+) cached\)(?: effort=\w+)? ([\d.]+)s$")
CLAUDE_ENV = {  # Claude Code's own switches: offline, and patient with a slow prompt
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_STREAM_IDLE_TIMEOUT_MS": "7200000",
    "API_TIMEOUT_MS": "7200000",
    "ANTHROPIC_AUTH_TOKEN": "unused",
}


def start_server(model: str, home: Path, ctx: int, threads: int | None) -> tuple[subprocess.Popen, str, list[str]]:
    """The server, its URL, and its stderr lines (a thread keeps reading them)."""
    args = ["--demo"] if model == "demo" else [model]
    args += ["--port", "0", "--parallel", "1", "--ctx", str(ctx)] + (["--threads", str(threads)] if threads else [])
    server = subprocess.Popen(
        [sys.executable, "-m", "ossrun", "serve", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OSSRUN_HOME": str(home)},
    )
    lines: list[str] = []
    listening = threading.Event()

    def read() -> None:
        assert server.stderr is not None
        for line in server.stderr:
            lines.append(line.rstrip())
            if "listening on" in line:
                listening.set()
        listening.set()

    threading.Thread(target=read, daemon=True).start()
    listening.wait(3600)
    found = next((re.search(r"listening on (http://\S+)/v1", line) for line in lines if "listening on" in line), None)
    if found is None:
        raise SystemExit("the server did not start:\n" + "\n".join(lines))
    return server, found.group(1), lines


def served_name(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as response:
        return json.load(response)["data"][0]["id"]


def run_claude(claude: str, url: str, name: str, home: Path, extra: list[str], max_output: int | None) -> tuple[float, str]:
    env = {**os.environ, **CLAUDE_ENV, "HOME": str(home), "ANTHROPIC_BASE_URL": url}
    if max_output:
        env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(max_output)
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = subprocess.run(
        [claude, "-p", QUESTION, "--model", name, *extra], cwd=work, env=env, capture_output=True, text=True, timeout=4 * 3600
    )
    seconds = time.perf_counter() - started
    answer = result.stdout.strip() or result.stderr.strip()  # hitting --max-output-tokens is an error to Claude Code
    return seconds, (answer if result.returncode == 0 else f"(exit {result.returncode}) {answer}")


def one_run(args: argparse.Namespace) -> list[dict[str, Any]]:
    home = Path(tempfile.mkdtemp(prefix="ossrun-claude-code-"))
    server, url, lines = start_server(args.model, home / "ossrun", args.ctx, args.threads)
    turns = []
    try:
        name = served_name(url)
        for session in ("first", "second"):
            before = len(lines)
            seconds, answer = run_claude(args.claude, url, name, home / "claude", args.claude_args, args.max_output_tokens)
            time.sleep(1)  # the last request's line is written as its stream closes
            requests = [found for found in map(LOG_LINE.match, lines[before:]) if found]
            turn: dict[str, Any] = {
                "session": session,
                "claude_seconds": round(seconds, 2),
                "answer": answer[:120],
                "requests": len(requests),
            }
            if requests:  # the session's first request: the prompt Claude Code starts with
                status, prompt, completion, cached, server_seconds = requests[0].groups()
                turn.update(
                    status=int(status),
                    prompt_tokens=int(prompt),
                    cached_tokens=int(cached),
                    completion_tokens=int(completion),
                    server_seconds=float(server_seconds),
                )
            turns.append(turn)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(home, ignore_errors=True)
    return turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claude", default=shutil.which("claude"), help="Claude Code's executable")
    parser.add_argument("--model", default="demo", help="demo, or a GGUF path")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ctx", type=int, default=32768)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--max-output-tokens", type=int, help="Claude Code's max_tokens (a random model never stops)")
    parser.add_argument("claude_args", nargs="*", help="after --: more arguments for claude")
    args = parser.parse_args()
    if not args.claude:
        raise SystemExit("give --claude PATH (npm install @anthropic-ai/claude-code)")
    runs = [one_run(args) for _ in range(args.runs)]
    print(json.dumps(runs, indent=1))
    for index, session in enumerate(("first", "second")):
        turns = [run[index] for run in runs if "prompt_tokens" in run[index]]
        if turns:
            print(
                f"{session} session: prompt {turns[0]['prompt_tokens']} tokens, "
                f"{statistics.median(t['prompt_tokens'] - t['cached_tokens'] for t in turns):.0f} evaluated, "
                f"server {statistics.median(t['server_seconds'] for t in turns):.1f} s, "
                f"claude -p {statistics.median(t['claude_seconds'] for t in turns):.1f} s (medians of {len(turns)})"
            )


if __name__ == "__main__":
    main()
