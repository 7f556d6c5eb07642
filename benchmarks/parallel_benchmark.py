"""Several requests decoded together: ossrun's scheduler against one stream at a time and against
llama.cpp's own llama-server, on the same GGUF with the same threads and sampling.

For N = 1, 2, 4, 8 concurrent requests (short prompts, the same number of tokens each, temperature
1, top_p 1, no top-k or min-p), it reports the aggregate decode speed (the sum of each request's
tokens/s while it generates) and the mean per-request speed, for:

- ossrun with --parallel 8 (``Model.chat`` from N threads);
- ossrun with --parallel 1 (the N requests then run one after the other);
- llama-server -np 8 --kv-unified --swa-full, continuous batching on (N concurrent /completion
  requests with the same prompt ids, ignore_eos); built by benchmarks/llama_tools.py.

ossrun and llama-server take turns (``--rounds``), one model in memory at a time; the figures are
medians over the rounds, and the ratios are taken per round.

It also measures the time to first token of a new request (a 256-token prompt) while 3 others
decode, against the same request alone and against --parallel 1 (where it waits for the three),
and compares the logits of a sequence decoded beside three others with the same sequence alone
(cosine and top-1 per step, on the same history: the second run's tokens are forced to the
first's), against the same sequence alone twice as the control. One model is loaded at a time.

    python benchmarks/parallel_benchmark.py --model ~/ossrun-bench/gpt-oss-20b-random.gguf --threads 2
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from llama_tools import wait_until_healthy

STREAMS = (1, 2, 4, 8)
MAX_PARALLEL = 8


def questions(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Question {i}: tell me something about the number {i * 37 % 101}."}] for i in range(n)]


def concurrent_runs(counts, request, measure) -> dict:
    """For each N: ``request(i, attempt)`` for i < N from N threads at once, twice; the medians
    of what ``measure(answers, wall_seconds)`` makes of each attempt. ossrun and llama-server
    are measured by this one loop."""
    results = {}
    for n in counts:
        runs = []
        for attempt in range(2):
            with ThreadPoolExecutor(n) as pool:
                started = time.perf_counter()
                answers = list(pool.map(lambda i, attempt=attempt: request(i, attempt), range(n)))
                wall = time.perf_counter() - started
            runs.append(measure(answers, wall))
        results[n] = {k: round(statistics.median(run[k] for run in runs), 2) for k in runs[0]}
        print(f"  {n} streams: {results[n]}", flush=True)
    return results


def ossrun_streams(model, counts, tokens: int, serial: bool = False) -> dict:
    """With ``serial`` (one sequence) the requests run one after the other, and the aggregate is
    the tokens over the wall time; otherwise it is the sum of the concurrent requests' speeds."""
    asked = questions(max(counts))

    def measure(replies, wall: float) -> dict:
        rates = [r.timings.decode_tps for r in replies]
        if serial:
            decoding = sum(r.timings.decode_seconds for r in replies)
            aggregate = sum(r.timings.decode_tokens for r in replies) / decoding
        else:
            aggregate = sum(rates)
        return {
            "aggregate": aggregate,
            "per_request": statistics.mean(rates),
            "wall_tokens_per_second": sum(r.usage.completion_tokens for r in replies) / wall,
        }

    return concurrent_runs(counts, lambda i, attempt: model.chat(asked[i], max_tokens=tokens, seed=attempt), measure)


def ttft(model, tokens: int) -> dict:
    """Time to first token of a 256-token prompt, alone and while 3 other requests decode."""
    from ossrun.events import Prefill

    def prompt(word: str) -> list[dict]:  # the same length, nothing in common after the instructions
        return [{"role": "user", "content": f"{word}: " + " ".join(f"{word}{i}" for i in range(200))}]

    def first_token(messages) -> float:
        started = time.perf_counter()
        for event in model.stream(messages, max_tokens=2, seed=1):
            if not isinstance(event, Prefill):
                break
        return time.perf_counter() - started

    alone = first_token(prompt("alpha"))
    with ThreadPoolExecutor(3) as pool:
        busy = [pool.submit(model.chat, m, max_tokens=tokens * 4, seed=7) for m in questions(3)]
        time.sleep(3)  # the three are decoding by now
        beside = first_token(prompt("beta"))
        for future in busy:
            future.result()
    return {"alone_s": round(alone, 2), "beside_3_decoding_s": round(beside, 2)}


def logits_agreement(model, tokens: int, prompts: int = 3) -> dict:
    """A greedy sequence's logits alone, then the same path again (its tokens forced, so every
    step has the same history) with three others decoding beside it: cosine and top-1 per step.

    The control is the same forced path alone again, on other KV cells: random weights route
    tokens to experts on near-ties, so a rounding difference (the order of a sum) can switch an
    expert at some steps, with or without other sequences in the batch."""
    from ossrun.engine.protocol import GenerationRequest, Sampling

    def run(ids: tuple[int, ...], forced: tuple[int, ...] = ()) -> tuple[list[int], np.ndarray]:
        generation = model.engine.generate(
            GenerationRequest(ids, Sampling(temperature=0), max_tokens=tokens, record_logits=True, forced=forced)
        )
        sampled = list(generation)
        return sampled, np.array(generation.stats.logits, dtype=np.float64)

    def compare(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1), a.argmax(axis=1) == b.argmax(axis=1)

    found: dict[str, list] = {"beside_others": [], "alone_again": []}
    spreads, gaps = [], []
    for question in questions(prompts):
        ids = tuple(model.render(question))
        path, alone = run(ids)
        _, again = run(ids, tuple(path))
        others = [
            model.engine.generate(GenerationRequest(tuple(model.render(m)), Sampling(seed=3), max_tokens=tokens * 4))
            for m in questions(4)[1:]
        ]
        time.sleep(1)  # the three are decoding by now
        _, beside = run(ids, tuple(path))
        for other in others:
            other.close()
        found["beside_others"].append(compare(alone, beside))
        found["alone_again"].append(compare(alone, again))
        spreads.extend(alone.max(axis=1) - alone.min(axis=1))
        top = np.sort(alone, axis=1)[:, -2:]
        gaps.extend(top[:, 1] - top[:, 0])
    report: dict = {
        "steps": len(spreads),
        "median_logit_spread": round(float(np.median(spreads)), 4),
        "median_top1_gap": round(float(np.median(gaps)), 5),
    }
    for name, pairs in found.items():
        cosine = np.concatenate([c for c, _ in pairs])
        agree = np.concatenate([t for _, t in pairs])
        report[name] = {
            "median_cosine": round(float(np.median(cosine)), 6),
            "mean_cosine": round(float(cosine.mean()), 4),
            "min_cosine": round(float(cosine.min()), 4),
            "steps_above_0.999": round(float((cosine > 0.999).mean()), 3),
            "top1_agreement": round(float(agree.mean()), 3),
        }
    return report


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def llama_server_streams(binary: Path, gguf: Path, prompts: list[list[int]], counts, tokens: int, threads: int) -> dict:
    port = free_port()
    server = subprocess.Popen(
        [
            str(binary),
            "-m",
            str(gguf),
            "-t",
            str(threads),
            "-tb",
            str(threads),
            "-np",
            str(MAX_PARALLEL),
            "-c",
            str(1024 * MAX_PARALLEL),
            "--kv-unified",
            "--swa-full",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-webui",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_until_healthy(server, port, timeout=600):
            raise RuntimeError(f"llama-server did not answer /health (exit code {server.poll()})")

        def complete(ids, seed):
            body = {
                "prompt": ids,
                "n_predict": tokens,
                "temperature": 1.0,
                "top_k": 0,
                "top_p": 1.0,
                "min_p": 0.0,
                "ignore_eos": True,
                "seed": seed,
                "cache_prompt": False,
            }
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/completion", json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=3600) as response:
                return json.loads(response.read())["timings"]

        def measure(timings, wall: float) -> dict:
            rates = [t["predicted_per_second"] for t in timings]
            return {
                "aggregate": sum(rates),
                "per_request": statistics.mean(rates),
                "wall_tokens_per_second": len(timings) * tokens / wall,
            }

        return concurrent_runs(counts, lambda i, attempt: complete(prompts[i], attempt), measure)
    finally:
        server.terminate()
        server.wait(60)


def ossrun_phase(args, report: dict, first: bool) -> list[list[int]]:
    import ossrun

    print("ossrun --parallel 8", flush=True)
    with ossrun.load(args.model, ctx=1024 * MAX_PARALLEL, parallel=MAX_PARALLEL, threads=args.threads) as model:
        prompts = [model.render(m) for m in questions(MAX_PARALLEL)]
        model.chat(questions(1)[0], max_tokens=2)  # warm-up
        if first and "logits" not in args.skip:
            report["logits_beside_others"] = logits_agreement(model, args.tokens)
            print(f"  logits: {report['logits_beside_others']}", flush=True)
        if "ossrun" not in args.skip:
            report.setdefault("rounds", {}).setdefault("ossrun_parallel_8", []).append(
                ossrun_streams(model, args.streams, args.tokens)
            )
        if first and "ttft" not in args.skip:
            report["time_to_first_token"] = ttft(model, args.tokens)
            print(f"  ttft: {report['time_to_first_token']}", flush=True)
    return prompts


def medians(rounds: list[dict]) -> dict:
    return {n: {k: round(statistics.median(r[n][k] for r in rounds), 2) for k in rounds[0][n]} for n in rounds[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path.home() / "ossrun-bench" / "gpt-oss-20b-random.gguf")
    parser.add_argument("--tokens", type=int, default=48, help="tokens each request generates")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="ossrun and llama-server take turns this many times")
    parser.add_argument("--streams", type=int, nargs="+", default=list(STREAMS))
    parser.add_argument("--llama-server", type=Path, help="default: build it (benchmarks/llama_tools.py)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ossrun", "serial", "llama-server", "ttft", "logits"])
    args = parser.parse_args()
    import ossrun

    report: dict = {"model": str(args.model), "threads": args.threads, "tokens": args.tokens, "rounds": {}}
    binary = args.llama_server
    if binary is None and "llama-server" not in args.skip:
        from llama_tools import llama_server

        binary = llama_server()
    for number in range(args.rounds):  # one model in memory at a time; turns even out the machine's load
        prompts = ossrun_phase(args, report, first=number == 0)
        if "llama-server" not in args.skip:
            print(f"llama-server ({binary})", flush=True)
            report["rounds"].setdefault("llama_server", []).append(
                llama_server_streams(binary, args.model, prompts, args.streams, args.tokens, args.threads)
            )
    if "serial" not in args.skip:
        print("ossrun --parallel 1", flush=True)
        with ossrun.load(args.model, ctx=1024 * MAX_PARALLEL, parallel=1, threads=args.threads) as model:
            model.chat(questions(1)[0], max_tokens=2)
            report["ossrun_parallel_1"] = ossrun_streams(model, args.streams, args.tokens, serial=True)
            if "ttft" not in args.skip:  # one sequence: the new request waits for the three before it
                report["ttft_parallel_1"] = ttft(model, args.tokens)
    rounds = report.pop("rounds")
    for name, results in rounds.items():
        report[name] = medians(results)
    if "ossrun_parallel_8" in rounds and "llama_server" in rounds:
        pairs = list(zip(rounds["ossrun_parallel_8"], rounds["llama_server"], strict=True))
        report["ossrun_over_llama_server"] = {
            n: {
                "median": round(statistics.median(ours[n]["aggregate"] / theirs[n]["aggregate"] for ours, theirs in pairs), 3),
                "rounds": [round(ours[n]["aggregate"] / theirs[n]["aggregate"], 3) for ours, theirs in pairs],
            }
            for n in args.streams
        }
    if "ossrun_parallel_8" in report and "ossrun_parallel_1" in report:
        report["ossrun_over_parallel_1"] = {
            n: round(report["ossrun_parallel_8"][n]["aggregate"] / report["ossrun_parallel_1"][n]["aggregate"], 3)
            for n in args.streams
        }
    if "ossrun_parallel_8" in report and 1 in report["ossrun_parallel_8"] and 4 in report["ossrun_parallel_8"]:
        report["gain_at_4_streams"] = round(
            report["ossrun_parallel_8"][4]["aggregate"] / report["ossrun_parallel_8"][1]["aggregate"], 3
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
