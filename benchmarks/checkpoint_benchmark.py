"""The small sliding-window cache with checkpoints, against swa_full and llama-server; q8_0 against f16.

1. ``restore``: logits after restoring a checkpoint against evaluating the whole prompt. A prompt
   parts from the cached one far behind the sliding window; the reply's first 8 steps (the same
   forced tokens) are scored against a fresh evaluation of the whole prompt: cosine, top-1.
2. ``kv``: q8_0 against f16 over a long prompt: one model, two contexts that differ only in the
   KV cache type, the logits of every position of a 2048-token prompt (the project README, as a
   harmony user message): KL divergence (f16 as the reference) and top-1 agreement.
3. ``speed``: prefill of ``--speed-tokens`` tokens and decode of 32, the small cache against
   ``swa_full`` (one load each, medians of ``--runs``).
4. ``agent``: an agent loop of 10 turns that re-sends its whole history (about 6k tokens, growing
   by about 300 a turn: the assistant's reasoning and tool call, the tool's result): tokens
   evaluated and time to first token per turn, ossrun (Python API) against llama-server with its
   default context checkpoints, on the same token ids. The history is written out, not the
   model's own replies, so the figures are the same for a model with random weights.

    python benchmarks/checkpoint_benchmark.py --model ~/ossrun-bench/gpt-oss-20b-random.gguf
    python benchmarks/checkpoint_benchmark.py --model demo --skip agent
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import wait_until_healthy

ROOT = Path(__file__).resolve().parents[1]
MARK = (11, 12)


def random_tokens(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(1000, 199000, n).tolist()


def model_path(name: str) -> Path:
    from ossrun.store.resolve import resolve

    return resolve(name).path


# -- 1. restore -------------------------------------------------------------------------------------------------


def restore(path: Path, threads: int) -> dict:
    from ossrun.engine.gguf_header import check_gpt_oss
    from ossrun.engine.llama import LlamaEngine
    from ossrun.engine.protocol import GenerationRequest, Sampling

    header = check_gpt_oss(path)
    engine = LlamaEngine(header, n_ctx=4096, threads=threads)
    greedy = Sampling(temperature=0)

    def run(prompt, **options):
        generation = engine.generate(GenerationRequest(tuple(prompt), greedy, checkpoint_after=(MARK,), **options))
        tokens = list(generation)
        return tokens, generation.stats

    try:
        a = random_tokens(498, 1) + list(MARK) + random_tokens(900, 2)  # past the 768 cells of the small cache
        b = a[:500] + random_tokens(100, 3)
        run(a, max_tokens=1)
        path_tokens, restored = run(b, max_tokens=8, record_logits=True)
        run(random_tokens(20, 4), max_tokens=1)  # the sequence forgets b: the next run evaluates it whole
        _, whole = run(b, max_tokens=8, record_logits=True, forced=tuple(path_tokens))
    finally:
        engine.close()
    x, y = np.array(restored.logits), np.array(whole.logits)
    cosine = (x * y).sum(axis=1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    return {
        "restored_from": restored.restored,
        "cached": restored.cached,
        "evaluated": restored.evaluated,
        "whole_evaluated": whole.evaluated,
        "steps": len(x),
        "cosine_min": float(cosine.min()),
        "cosine_median": float(np.median(cosine)),
        "cosines": [round(float(c), 6) for c in cosine],
        "top1_agreement": float((x.argmax(axis=1) == y.argmax(axis=1)).mean()),
        "max_abs_diff": float(np.abs(x - y).max()),
    }


# -- 2. q8_0 against f16 --------------------------------------------------------------------------------------------


def long_prompt(n: int) -> list[int]:
    from ossrun.harmony.encoding import load_encoding
    from ossrun.harmony.prompt import PromptSettings, render_prompt
    from ossrun.harmony.tiktoken_file import ensure_o200k  # noqa: F401 - the packaged vocabulary is enough

    encoding = load_encoding(ROOT / "ossrun" / "data")
    text = (ROOT / "README.md").read_text()
    ids = render_prompt(
        encoding, [{"role": "user", "content": "Summarize this document.\n\n" + text}], PromptSettings(date="2025-08-05")
    )
    return ids[:n]


def kv_types(path: Path, threads: int, n_tokens: int) -> dict:
    """Every position's logits with an f16 and a q8_0 cache: two contexts on one loaded model."""
    import llama_cpp

    from ossrun.engine import llama  # noqa: F401 - llama.cpp's log kept off the terminal, its backend started
    from ossrun.engine.ggml import place_weights

    params = llama_cpp.llama_model_default_params()
    params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    place_weights(params)
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    prompt = long_prompt(n_tokens)
    batch_size = 256

    def context(type_code: int):
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = 4096, batch_size, batch_size
        cp.n_threads = cp.n_threads_batch = threads
        cp.type_k = cp.type_v = type_code
        cp.n_outputs_max = batch_size
        cp.n_outputs_max_per_seq = batch_size
        return llama_cpp.llama_init_from_model(model, cp)

    contexts = {"f16": context(llama_cpp.GGML_TYPE_F16), "q8_0": context(llama_cpp.GGML_TYPE_Q8_0)}
    batch = llama_cpp.llama_batch_init(batch_size, 0, 1)
    kl, agree = [], []
    try:
        for start in range(0, len(prompt), batch_size):
            chunk = prompt[start : start + batch_size]
            logits = {}
            for name, ctx in contexts.items():
                for i, token in enumerate(chunk):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, start + i, 1, True
                    batch.seq_id[i][0] = 0
                batch.n_tokens = len(chunk)
                assert llama_cpp.llama_decode(ctx, batch) == 0, name
                pointer = llama_cpp.llama_get_logits(ctx)
                logits[name] = np.ctypeslib.as_array(
                    ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(len(chunk), vocab)
                ).astype(np.float64)
            p = _log_softmax(logits["f16"])
            q = _log_softmax(logits["q8_0"])
            kl.extend((np.exp(p) * (p - q)).sum(axis=1).tolist())
            agree.extend((logits["f16"].argmax(axis=1) == logits["q8_0"].argmax(axis=1)).tolist())
    finally:
        llama_cpp.llama_batch_free(batch)
        for ctx in contexts.values():
            llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    kl_array = np.array(kl)
    return {
        "positions": len(kl),
        "kl_median": float(np.median(kl_array)),
        "kl_mean": float(kl_array.mean()),
        "kl_p99": float(np.percentile(kl_array, 99)),
        "top1_agreement": float(np.mean(agree)),
    }


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


# -- 3. speed: small cache against swa_full ------------------------------------------------------------------------


def speed(path: Path, threads: int, runs: int, prompt_tokens: int = 1024) -> dict:
    import ossrun
    from ossrun.engine.protocol import GenerationRequest, Sampling

    figures = {}
    for mode in ("small", "full"):
        prefill, decode = [], []
        with ossrun.load(path, ctx=8192, threads=threads, swa_full=mode == "full") as model:
            for run in range(runs):
                prompt = tuple(random_tokens(prompt_tokens, 10 + run))
                generation = model.engine.generate(GenerationRequest(prompt, Sampling(seed=run), max_tokens=32))
                list(generation)
                stats = generation.stats
                prefill.append(stats.evaluated / stats.prefill_seconds)
                decode.append((stats.generated - 1) / stats.decode_seconds)
        figures[mode] = {
            "prefill_tps": statistics.median(prefill),
            "decode_tps": statistics.median(decode),
            "prefill_runs": prefill,
            "decode_runs": decode,
        }
    figures["prefill_ratio"] = figures["small"]["prefill_tps"] / figures["full"]["prefill_tps"]
    figures["decode_ratio"] = figures["small"]["decode_tps"] / figures["full"]["decode_tps"]
    return figures


# -- 4. an agent loop against llama-server ---------------------------------------------------------------------------


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file of the repository.",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "run_tests",
            "description": "Run the test suite, or one test file.",
            "parameters": {"type": "object", "properties": {"target": {"type": "string"}}},
        },
    },
]


def agent_history(text_tokens: int = 5600) -> tuple[str, list[list[dict]]]:
    """The instructions (about 5.6k tokens) and, per turn, the messages after them: two chains of tool
    calls; between them a final answer and a new question, where harmony drops the first chain's reasoning."""
    readme = (ROOT / "README.md").read_text()
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    instructions = (
        "You are a coding agent working in the ossrun repository. Read files and run tests with the tools; "
        "explain what you find.\n\n" + (architecture + readme)[: text_tokens * 4]
    )
    files = sorted(p for p in (ROOT / "ossrun").rglob("*.py"))
    messages: list[dict] = [{"role": "user", "content": "Find where the KV cache is planned and check that the tests pass."}]
    turns = [list(messages)]
    for number in range(1, 10):
        if number == 5:  # the first task is answered; a new one starts (its chain's reasoning is dropped)
            messages.append({"role": "assistant", "content": "The KV cache is planned in ossrun/engine/memory.py."})
            messages.append({"role": "user", "content": "Now read the scheduler and tell me how checkpoints are placed."})
            turns.append(list(messages))
            continue
        target = files[number % len(files)]
        call = {
            "id": f"call_{number}",
            "type": "function",
            "function": {"name": "read_file", "arguments": json.dumps({"path": str(target.relative_to(ROOT))})},
        }
        reasoning = (
            f"Step {number}: I should look at {target.name} next, to see how it fits with what I read so far "
            f"and whether it touches the cache or the scheduler. "
        ) * 3
        messages.append({"role": "assistant", "content": None, "reasoning": reasoning, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": call["id"], "name": "read_file", "content": target.read_text()[:900]})
        turns.append(list(messages))
    return instructions, turns


def agent_ossrun(path: Path, threads: int, tokens: int) -> tuple[list[dict], list[list[int]]]:
    import ossrun
    from ossrun.engine.protocol import common_prefix_length

    instructions, turns = agent_history()
    rows, prompts = [], []
    with ossrun.load(path, ctx=16384, threads=threads) as model:
        for messages in turns:
            prompt = model.render(messages, system=instructions, tools=TOOLS)
            new = len(prompt) - max((common_prefix_length(p, prompt) for p in prompts), default=0)
            started = time.perf_counter()
            reply = model.chat(messages, system=instructions, tools=TOOLS, max_tokens=tokens, temperature=0)
            rows.append(
                {
                    "prompt": len(prompt),
                    "new": new,
                    "evaluated": reply.timings.prefill_tokens,
                    "ttft_seconds": round(reply.timings.prefill_seconds, 2),
                    "wall_seconds": round(time.perf_counter() - started, 2),
                }
            )
            prompts.append(prompt)
            print("ossrun", json.dumps(rows[-1]), flush=True)
    return rows, prompts


def agent_llama_server(binary: Path, path: Path, prompts: list[list[int]], threads: int, tokens: int) -> list[dict]:
    from parallel_benchmark import free_port

    port = free_port()
    server = subprocess.Popen(
        [
            str(binary),
            "-m",
            str(path),
            "-t",
            str(threads),
            "-tb",
            str(threads),
            "-np",
            "1",
            "-c",
            "16384",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-webui",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows = []
    try:
        if not wait_until_healthy(server, port):
            raise RuntimeError("llama-server did not start")
        from ossrun.engine.protocol import common_prefix_length

        for number, prompt in enumerate(prompts):
            body = {"prompt": prompt, "n_predict": tokens, "temperature": 0, "cache_prompt": True}
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/completion", json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=3600) as response:
                answer = json.loads(response.read())
            timings = answer["timings"]
            new = len(prompt) - max((common_prefix_length(p, prompt) for p in prompts[:number]), default=0)
            rows.append(
                {
                    "prompt": len(prompt),
                    "new": new,
                    "evaluated": timings["prompt_n"],
                    "ttft_seconds": round(timings["prompt_ms"] / 1000, 2),
                    "wall_seconds": round(time.perf_counter() - started, 2),
                }
            )
            print("llama-server", json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(60)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="a GGUF path, a registry name or demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kv-tokens", type=int, default=2048)
    parser.add_argument("--speed-tokens", type=int, default=1024, help="prompt tokens of each speed run")
    parser.add_argument("--agent-tokens", type=int, default=4, help="tokens generated per turn of the agent loop")
    parser.add_argument("--llama-server", type=Path, help="default: build it (benchmarks/llama_tools.py)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["restore", "kv", "speed", "agent", "llama-server"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    path = model_path(args.model)
    report: dict = {"model": str(path)}
    if "restore" not in args.skip:
        report["restore"] = restore(path, args.threads)
        print("restore", json.dumps(report["restore"]), flush=True)
    if "kv" not in args.skip:
        report["kv"] = kv_types(path, args.threads, args.kv_tokens)
        print("kv", json.dumps(report["kv"]), flush=True)
    if "speed" not in args.skip:
        report["speed"] = speed(path, args.threads, args.runs, args.speed_tokens)
        print("speed", json.dumps(report["speed"]), flush=True)
    if "agent" not in args.skip:
        rows, prompts = agent_ossrun(path, args.threads, args.agent_tokens)
        report["agent"] = {"ossrun": rows}
        if "llama-server" not in args.skip:
            binary = args.llama_server
            if binary is None:
                from llama_tools import llama_server

                binary = llama_server()
            report["agent"]["llama_server"] = agent_llama_server(binary, path, prompts, args.threads, args.agent_tokens)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
