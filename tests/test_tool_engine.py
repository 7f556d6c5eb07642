"""Tools on the real llama.cpp engine with the tiny converted model.

The tiny model's weights are random, so what it emits is noise; a wrapper mixes
harmony fragments (headers, recipients, JSON, stop tokens) into its samples so
that calls, broken calls and malformed turns all occur. Every token still goes
through llama.cpp (prefill with prefix reuse, decode), and every run must end
with one Done and a history that renders again.
"""

from __future__ import annotations

import random
import threading
from typing import Optional, Sequence

import pytest

from ossrun.engine.protocol import Sampling
from ossrun.events import Done, ToolCall, ToolResult
from ossrun.tools import PythonSandbox

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
# Whole messages (a call, a broken call, a call to an unknown or caller-run tool, python code,
# reasoning, an answer) and loose pieces of harmony, mixed into the model's samples.
MESSAGES = [
    '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>',
    '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": Paris<|call|>',
    '<|channel|>commentary to=functions.nope <|constrain|>json<|message|>{}<|call|>',
    '<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>{"word": "x"}<|call|>',
    "<|channel|>analysis to=python code<|message|>print(40 + 2)<|call|>",
    "<|channel|>analysis<|message|>Thinking.<|end|><|start|>assistant",
    "<|channel|>final<|message|>Done.<|return|>",
]
PIECES = [
    "<|channel|>", "analysis", "commentary", "<|message|>", "<|end|>", "<|start|>assistant", " to=functions.get_weather",
    " to=python", " <|constrain|>json", '{"city": ', "<|call|>", "<|return|>",
]
SCHEMA = {"type": "function", "function": {"name": "lookup", "description": "Look up a word.",
                                           "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}}}


def get_weather(city: str, unit: str = "celsius") -> dict:
    """Get the current weather in a city."""
    return {"city": city, "temperature": 21, "unit": unit}


class MixingEngine:
    """The real engine, except that some samples are replaced by harmony fragments (or a scripted turn)."""

    def __init__(self, engine, encoding, *, seed: int = 0, mix: float = 0.0, scripted: Sequence[str] = ()):
        self.engine, self.encoding = engine, encoding
        self.rng = random.Random(seed)
        self.mix = mix
        self.scripted = [encoding.encode(text, allowed_special="all") for text in scripted]
        self.turns = 0
        self.queue: list[int] = []
        self.at_turn_start = False
        self.prefills = []

    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

    @property
    def evaluated(self):
        return self.engine.evaluated

    def prefill(self, tokens, cancel: Optional[threading.Event] = None):
        stats = self.engine.prefill(tokens, cancel)
        self.prefills.append(stats)
        self.queue = list(self.scripted[self.turns]) if self.turns < len(self.scripted) else []
        self.turns += 1
        self.at_turn_start = True
        return stats

    def sample(self, sampling: Sampling) -> int:
        # Most turns start with a whole message, where harmony expects one; then anything goes.
        if self.at_turn_start and not self.queue and self.rng.random() < min(1.0, 2 * self.mix):
            self.queue = self.encoding.encode(self.rng.choice(MESSAGES), allowed_special="all")
        elif not self.queue and self.rng.random() < self.mix:
            self.queue = self.encoding.encode(self.rng.choice(MESSAGES + PIECES), allowed_special="all")
        self.at_turn_start = False
        if self.queue:
            return self.queue.pop(0)
        return self.engine.sample(sampling)

    def append(self, token: int, cancel: Optional[threading.Event] = None) -> None:
        self.engine.append(token, cancel)

    def close(self) -> None:
        pass


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
            events = list(model.stream(QUESTION, tools=[get_weather, SCHEMA], python_tool=sandbox, confirm=lambda c: True,
                                       temperature=1.0 + (seed % 3) * 0.3, seed=seed, max_tokens=32, max_tool_rounds=2))
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
            model.render(QUESTION + answer.messages() + [{"role": "user", "content": "Thanks"}],
                         tools=[get_weather, SCHEMA], python_tool=sandbox)
    # The mix made the loop run calls, fail some, meet malformed output, and hand a call to the caller.
    assert seen["results"] >= 3 and seen["errors"] >= 1 and seen["malformed"] >= 3 and seen["pending"] >= 1, seen


def test_a_call_on_the_real_engine_reuses_the_cache_and_generation_goes_on(tiny_model):
    call = ('<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary '
            'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>')
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
    first_prompt_length = first.reused + first.evaluated
    assert second.reused > first_prompt_length
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
    base = [sys.executable, "-m", "ossrun", "run", "-m", str(tiny_gguf), "--ctx", "1024", "--threads", "2",
            "--functions", str(functions), "--tool", "python"]
    refused = subprocess.run(base + ["Hi"], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
    assert refused.returncode == 1 and refused.stderr.startswith("error: --tool python asks before each run")
    done = subprocess.run(base + ["--yes", "--json", "--seed", "3", "--max-tokens", "8", "--show-reasoning", "Hi"],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
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
