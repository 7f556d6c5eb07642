"""Tools on the real llama.cpp engine with the tiny converted model.

The tiny model's weights are random, so what it emits is noise; a wrapper mixes
harmony fragments (headers, recipients, JSON, stop tokens) into its samples so
that calls, broken calls and malformed turns all occur. Every token still goes
through llama.cpp (prefill with prefix reuse, decode), and every run must end
with one Done and a history that renders again.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from ossrun.engine.protocol import GenerationRequest, GenerationStats, Sampling
from ossrun.events import Done, ToolCall, ToolResult
from ossrun.tools import PythonSandbox

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
# Whole messages (a call, a broken call, a call to an unknown or caller-run tool, python code,
# reasoning, an answer) and loose pieces of harmony, mixed into the model's samples.
MESSAGES = [
    '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>',
    '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": Paris<|call|>',
    "<|channel|>commentary to=functions.nope <|constrain|>json<|message|>{}<|call|>",
    '<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>{"word": "x"}<|call|>',
    "<|channel|>analysis to=python code<|message|>print(40 + 2)<|call|>",
    "<|channel|>analysis<|message|>Thinking.<|end|><|start|>assistant",
    "<|channel|>final<|message|>Done.<|return|>",
]
PIECES = [
    "<|channel|>",
    "analysis",
    "commentary",
    "<|message|>",
    "<|end|>",
    "<|start|>assistant",
    " to=functions.get_weather",
    " to=python",
    " <|constrain|>json",
    '{"city": ',
    "<|call|>",
    "<|return|>",
]
SCHEMA = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look up a word.",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
    },
}


def get_weather(city: str, unit: str = "celsius") -> dict:
    """Get the current weather in a city."""
    return {"city": city, "temperature": 21, "unit": unit}


class MixingEngine:
    """The real engine, except that some samples are replaced by harmony fragments (or a scripted turn).

    Each token is one real generation of a single token over everything so far, so the
    fragments are evaluated by llama.cpp like sampled tokens, with prefix reuse.
    """

    parallel = 1

    def __init__(self, engine, encoding, *, seed: int = 0, mix: float = 0.0, scripted: Sequence[str] = ()):
        self.engine, self.encoding = engine, encoding
        self.rng = random.Random(seed)
        self.mix = mix
        self.scripted = [encoding.encode(text, allowed_special="all") for text in scripted]
        self.turns = 0
        self.prefills = []  # each turn's prompt: the real engine's stats

    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

    def cached_prefix(self, prompt, prefix_length: int = 0) -> int:
        return self.engine.cached_prefix(prompt, prefix_length)

    def generate(self, request: GenerationRequest) -> MixedGeneration:
        return MixedGeneration(self, request)

    def close(self) -> None:
        pass


class MixedGeneration:
    def __init__(self, mixer: MixingEngine, request: GenerationRequest):
        self.mixer, self.request = mixer, request
        self.stats = GenerationStats()

    def pending(self) -> int:
        return len(self.request.prompt) - min(self.mixer.cached_prefix(self.request.prompt), len(self.request.prompt) - 1)

    def close(self) -> None:
        pass

    def _one(self, ids: list[int], step: int) -> tuple[int, GenerationStats]:
        sampling = self.request.sampling
        seed = None if sampling.seed is None else sampling.seed + step
        generation = self.mixer.engine.generate(
            GenerationRequest(
                tuple(ids), Sampling(sampling.temperature, sampling.top_p, seed), max_tokens=1, cancel=self.request.cancel
            )
        )
        tokens = list(generation)
        return (tokens[0] if tokens else None), generation.stats

    def __iter__(self):
        mixer, request, stats = self.mixer, self.request, self.stats
        ids = list(request.prompt)
        queue = list(mixer.scripted[mixer.turns]) if mixer.turns < len(mixer.scripted) else []
        mixer.turns += 1
        candidate, first = self._one(ids, 0)  # the prompt is read as a real turn would read it
        mixer.prefills.append(first)
        stats.cached, stats.evaluated = first.cached, first.evaluated
        stats.finish_reason = "length"
        at_turn_start = True
        while candidate is not None:
            # Most turns start with a whole message, where harmony expects one; then anything goes.
            if at_turn_start and not queue and mixer.rng.random() < min(1.0, 2 * mixer.mix):
                queue = mixer.encoding.encode(mixer.rng.choice(MESSAGES), allowed_special="all")
            elif not queue and mixer.rng.random() < mixer.mix:
                queue = mixer.encoding.encode(mixer.rng.choice(MESSAGES + PIECES), allowed_special="all")
            at_turn_start = False
            token = queue.pop(0) if queue else candidate
            stats.generated += 1
            yield token
            if token in request.stop_tokens:
                stats.finish_reason = "stop"
                break
            if request.max_tokens is not None and stats.generated >= request.max_tokens:
                break
            ids.append(token)
            candidate, _ = self._one(ids, stats.generated)
        self._one(ids, 0)  # the cache holds the turn but its last token, as after a real one
        stats.context_used = len(ids)


@pytest.fixture(scope="module")
def tiny_model(tiny_gguf):
    import ossrun

    model = ossrun.load(str(tiny_gguf), ctx=2048, threads=2)
    yield model
    model.close()


def mixed_model(tiny_model, **kwargs):
    from ossrun.model import Model

    engine = MixingEngine(tiny_model.engine, tiny_model.encoding, **kwargs)
    return engine, Model(engine, tiny_model.encoding, name="tiny")


def test_whatever_the_model_emits_the_tool_loop_ends_cleanly(tiny_model):
    seen = {"results": 0, "errors": 0, "malformed": 0, "pending": 0}
    with PythonSandbox() as sandbox:
        for seed in range(24):
            engine, model = mixed_model(tiny_model, seed=seed, mix=0.35)
            events = list(
                model.stream(
                    QUESTION,
                    tools=[get_weather, SCHEMA],
                    python_tool=sandbox,
                    confirm=lambda c: True,
                    temperature=1.0 + (seed % 3) * 0.3,
                    seed=seed,
                    max_tokens=32,
                    max_tool_rounds=2,
                )
            )
            assert isinstance(events[-1], Done) and sum(isinstance(e, Done) for e in events) == 1, seed
            answer = events[-1].reply
            assert answer.finish_reason in ("stop", "length", "tool_calls"), seed
            results = [e for e in events if isinstance(e, ToolResult)]
            calls = [e for e in events if isinstance(e, ToolCall)]
            assert len(results) <= len(calls) and list(answer.tool_calls) == results
            assert sum(1 for m in answer.chain if m.get("tool_calls")) <= 2  # max_tool_rounds
            seen["results"] += len(results)
            seen["errors"] += sum(r.error for r in results)
            seen["malformed"] += answer.malformed
            seen["pending"] += bool(answer.pending_calls)
            # What the loop produced is a valid history: the next turn renders.
            model.render(
                QUESTION + answer.messages() + [{"role": "user", "content": "Thanks"}],
                tools=[get_weather, SCHEMA],
                python_tool=sandbox,
            )
    # The mix made the loop run calls, fail some, meet malformed output, and hand a call to the caller.
    assert seen["results"] >= 3 and seen["errors"] >= 1 and seen["malformed"] >= 3 and seen["pending"] >= 1, seen


def test_a_call_on_the_real_engine_reuses_the_cache_and_generation_goes_on(tiny_model):
    call = (
        "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
        'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
    )
    engine, model = mixed_model(tiny_model, scripted=[call])
    events = list(model.stream(QUESTION, tools=[get_weather], seed=1, max_tokens=48))
    (result,) = [e for e in events if isinstance(e, ToolResult)]
    assert result.output == '{"city": "Paris", "temperature": 21, "unit": "celsius"}' and not result.error
    answer = events[-1].reply
    assert answer.finish_reason in ("stop", "length", "tool_calls")
    assert engine.turns >= 2
    # The second prompt kept the first prompt and the analysis in the cache; only the
    # re-rendered call header onwards was evaluated.
    first, second = engine.prefills[0], engine.prefills[1]
    first_prompt_length = first.cached + first.evaluated
    assert second.cached > first_prompt_length
    assert second.evaluated < 60
    assert answer.usage.completion_tokens >= len(tiny_model.encoding.encode(call, allowed_special="all"))


def test_the_cli_with_tools_on_the_real_engine(tiny_gguf, tmp_path, encoding):
    import json
    import os
    import subprocess
    import sys

    functions = tmp_path / "my_tools.py"
    functions.write_text('def get_weather(city: str) -> dict:\n    """Get the weather."""\n    return {"t": 21}\n')
    env = {**os.environ, "OSSRUN_HOME": str(tmp_path / "home"), "OSSRUN_DATE": "2026-01-15"}
    base = [
        sys.executable,
        "-m",
        "ossrun",
        "run",
        "-m",
        str(tiny_gguf),
        "--ctx",
        "1024",
        "--threads",
        "2",
        "--functions",
        str(functions),
        "--tool",
        "python",
    ]
    refused = subprocess.run(base + ["Hi"], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
    assert refused.returncode == 1 and refused.stderr.startswith("error: --tool python asks before each run")
    done = subprocess.run(
        base + ["--yes", "--json", "--seed", "3", "--max-tokens", "8", "--show-reasoning", "Hi"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    data = json.loads(done.stdout)
    assert data["finish_reason"] in ("stop", "length", "tool_calls") and isinstance(data["tool_calls"], list)
    # The prompt declared the python tool and get_weather.
    from ossrun.harmony.prompt import PromptSettings, render_prompt
    from ossrun.tools import Toolbox

    with Toolbox.from_options([functions], ["python"]) as toolbox:
        settings = toolbox.prompt_settings(PromptSettings(date="2026-01-15"))
        expected = render_prompt(encoding, [{"role": "user", "content": "Hi"}], settings)
    assert data["usage"]["prompt_tokens"] == len(expected)
