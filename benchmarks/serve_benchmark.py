"""``ossrun serve`` against the Python API on the same loaded model, and what a restart costs.

1. Decode speed of a streamed Chat Completions request over HTTP (the client's clock, from sending
   it to ``[DONE]``, the tokens from the usage chunk) against ``Model.stream`` called directly
   (from the call to ``Done``), alternating with the same seeds on the same model, the prompt
   cached. Target: HTTP/API >= 0.97.
2. Time to first token over HTTP (a one-token request, start to end): a first turn (a system prompt of
   several hundred tokens, then a question), a follow-up turn of the same conversation, and the first turn again in a new server
   process, which reads the instructions' state from the disk prefix cache.
3. Requests per second of the demo model under the load test (benchmarks/serve_load.py).

    python benchmarks/serve_benchmark.py --model ~/ossrun-bench/gpt-oss-20b-random.gguf --runs 5 --tokens 32
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

INSTRUCTIONS = ("You are a careful assistant working for a team of engineers. " * 40).strip()
QUESTION = "What is the capital of France?"
FOLLOW_UP = "And the capital of Italy?"


class InProcessServer:
    def __init__(self, model):
        import uvicorn

        from ossrun.server.app import Server
        from ossrun.server.served import ServedModel

        self.server = Server(model, ServedModel(name="bench"), log=open(os.devnull, "w"))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.uvicorn = uvicorn.Server(uvicorn.Config(self.server.app(), log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.uvicorn.started:
            time.sleep(0.01)

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(30)
        self.server.runner.close()


def http_stream(port: int, body: dict) -> dict:
    """A streamed chat request: its seconds from sending to ``[DONE]``, its tokens (the usage chunk)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    started = time.perf_counter()
    connection.request(
        "POST",
        "/v1/chat/completions",
        json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}).encode(),
        {"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    usage = None
    for raw in response:
        line = raw.decode().strip()
        if line == "data: [DONE]":
            break
        if line.startswith("data: {"):
            usage = json.loads(line[6:]).get("usage") or usage
    seconds = time.perf_counter() - started
    connection.close()
    return {"seconds": seconds, "tokens": usage["completion_tokens"], "usage": usage}


def api_stream(model, messages, **options) -> dict:
    """The same through ``Model.stream``: seconds to its ``Done``, and the reply's tokens."""
    from ossrun.events import Done

    started = time.perf_counter()
    for event in model.stream(messages, **options):
        if isinstance(event, Done):
            reply = event.reply
    return {"seconds": time.perf_counter() - started, "tokens": reply.usage.completion_tokens}


def decode_ratio(model, server: InProcessServer, runs: int, tokens: int) -> dict:
    """Tokens per second of whole requests whose prompt the cache holds (the first run puts it
    there), alternating the API and HTTP with the same seed, so both sample the same tokens.
    Random weights rarely write text a client would see token by token, so the clock runs from
    the request to its end."""
    messages = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    model.chat(messages, max_tokens=2)
    api, over_http = [], []
    for run in range(runs):
        options = {"max_tokens": tokens, "temperature": 1.0, "seed": run}
        one = api_stream(model, messages, **options)
        api.append(one["tokens"] / one["seconds"])
        other = http_stream(server.port, {"model": "bench", "messages": messages, **options})
        over_http.append(other["tokens"] / other["seconds"])
    ratios = [h / a for h, a in zip(over_http, api, strict=True)]
    return {
        "api_tokens_per_s": round(statistics.median(api), 3),
        "http_tokens_per_s": round(statistics.median(over_http), 3),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
    }


def first_tokens(port: int, tokens: int) -> tuple[dict, dict]:
    first_turn = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}]
    first = http_stream(port, {"model": "bench", "messages": first_turn, "max_tokens": 1, "seed": 1})
    answer = "The capital of France is Paris."
    follow_up = first_turn + [{"role": "assistant", "content": answer}, {"role": "user", "content": FOLLOW_UP}]
    second = http_stream(port, {"model": "bench", "messages": follow_up, "max_tokens": 1, "seed": 1})
    return first, second


def new_server_first_token(model_path: Path, home: str, tokens: int, threads: int) -> dict:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ossrun",
            "serve",
            str(model_path),
            "--port",
            "0",
            "--threads",
            str(threads),
            "--ctx",
            "8192",
            "--parallel",
            "4",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OSSRUN_HOME": home},
    )
    try:
        for line in process.stderr:
            if "listening on http://" in line:
                port = int(line.split("listening on http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
                break
        else:
            raise RuntimeError("the server did not start")
        threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
        first_turn = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}]
        body = {"model": model_path.stem, "messages": first_turn, "max_tokens": 1, "seed": 1}
        return http_stream(port, body)
    finally:
        process.terminate()
        process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path.home() / "ossrun-bench" / "gpt-oss-20b-random.gguf")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--load-requests", type=int, default=200)
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args()
    import ossrun

    home = tempfile.mkdtemp(prefix="ossrun-serve-bench-")
    os.environ["OSSRUN_HOME"] = home
    report: dict = {"model": str(args.model), "threads": args.threads}
    with ossrun.load(args.model, ctx=8192, parallel=4, threads=args.threads) as model:
        server = InProcessServer(model)
        try:
            model.chat([{"role": "user", "content": "warm up"}], max_tokens=2)
            report["decode_http_vs_api"] = decode_ratio(model, server, args.runs, args.tokens)
            print(report["decode_http_vs_api"], flush=True)
            first, second = first_tokens(server.port, args.tokens)
            report["ttft_first_turn_s"] = round(first["seconds"], 2)
            report["first_turn_prompt"] = first["usage"]
            report["ttft_follow_up_s"] = round(second["seconds"], 2)
            report["follow_up_prompt"] = second["usage"]
            print({k: report[k] for k in ("ttft_first_turn_s", "ttft_follow_up_s")}, flush=True)
        finally:
            server.stop()
    again = new_server_first_token(args.model, home, args.tokens, args.threads)
    report["ttft_new_server_s"] = round(again["seconds"], 2)
    report["new_server_prompt"] = again["usage"]
    if not args.skip_load:
        sys.path.insert(0, str(Path(__file__).parent))
        import serve_load

        process, port = serve_load.start_demo_server(4, 32, args.threads)
        try:
            report["demo_load_test"] = serve_load.run(
                "127.0.0.1", port, process.pid, requests=args.load_requests, clients=16, model="demo", seed=0
            )
        finally:
            process.terminate()
            process.wait(30)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
