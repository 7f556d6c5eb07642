"""Evaluate the demo model on held-out conversations: well-formed harmony, correct answers,
analysis length per reasoning effort, greedy and at temperature 1.0.

    python -m demo.evaluate                 # the shipped demo, through llama.cpp (ossrun.load("demo"))
    python -m demo.evaluate --gguf FILE     # another GGUF
    python -m demo.evaluate --torch         # the last trained float32 model, in torch (needs torch)

Every conversation goes through ossrun's own path: prompts rendered by ossrun, the model's tokens
parsed by ossrun's recovering harmony parser, and for the weather a real ``get_weather`` Python
function called through the tools API.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import dataset, tasks

DEFAULT_PER_TASK_AND_EFFORT = 8
DEFAULT_SEED = 7
DEFAULT_MAX_TOKENS = 256
TEMPERATURES = (0.0, 1.0)


@dataclass
class Outcome:
    """What the model did with one conversation (every assistant turn of it)."""

    reasoning: str = ""  # the first turn's analysis
    final: str = ""
    tool_arguments: str | None = None  # the first get_weather call's arguments
    well_formed: bool = True
    notes: list[str] = field(default_factory=list)


def weather_function(example: tasks.Example) -> Callable[[str], str]:
    """A real Python get_weather whose answer is the example's (so the answer can be checked)."""
    expected = example.expected

    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        return json.dumps({"city": city, "temperature_c": expected["temperature"], "condition": expected["condition"]})

    return get_weather


def token_count(encoding: Any, text: str) -> int:
    """Tokens of ``text`` as plain text (raw output of a malformed turn may spell special tokens)."""
    return len(encoding.encode(text, disallowed_special=()))


@dataclass
class Figures:
    conversations: int
    well_formed: float
    correct: float
    correct_by_task: dict[str, float]
    analysis_tokens: dict[str, float]  # mean tokens of the first turn's analysis, per effort

    def lines(self, title: str) -> list[str]:
        tasks_text = ", ".join(f"{t} {v:.0%}" for t, v in self.correct_by_task.items())
        lengths = " / ".join(f"{self.analysis_tokens[e]:.1f}" for e in tasks.EFFORTS)
        return [
            f"{title}: {self.conversations} conversations",
            f"  well-formed harmony {self.well_formed:.1%}, correct {self.correct:.1%} ({tasks_text})",
            f"  mean analysis tokens low / medium / high: {lengths}",
        ]


def score(examples: Sequence[tasks.Example], outcomes: Sequence[Outcome], count_tokens: Callable[[str], int]) -> Figures:
    correct = [
        tasks.answer_correct(e, o.final, o.tool_arguments) and o.well_formed for e, o in zip(examples, outcomes, strict=True)
    ]
    by_task = {}
    for task in dict.fromkeys(e.task for e in examples):
        marks = [c for e, c in zip(examples, correct, strict=True) if e.task == task]
        by_task[task] = sum(marks) / len(marks)
    lengths = {
        effort: statistics.mean(count_tokens(o.reasoning) for e, o in zip(examples, outcomes, strict=True) if e.effort == effort)
        for effort in tasks.EFFORTS
    }
    return Figures(
        conversations=len(examples),
        well_formed=sum(o.well_formed for o in outcomes) / len(outcomes),
        correct=sum(correct) / len(correct),
        correct_by_task=by_task,
        analysis_tokens=lengths,
    )


# ---------------------------------------------------------------------------
# Through the ossrun API (llama.cpp)


def run_api(model: Any, example: tasks.Example, *, temperature: float, seed: int) -> Outcome:
    """One conversation through ``Model.chat``; the weather's get_weather is a real function."""
    messages = list(example.history) + [{"role": "user", "content": example.user}]
    tools = [weather_function(example)] if example.functions else None
    reply = model.chat(
        messages,
        reasoning_effort=example.effort,
        system=example.instructions,
        temperature=temperature,
        seed=seed,
        max_tokens=DEFAULT_MAX_TOKENS,
        tools=tools,
    )
    outcome = Outcome(reasoning=reply.reasoning, final=reply.final)
    calls = [r.call for r in reply.tool_calls]
    if calls:
        outcome.tool_arguments = calls[0].arguments
    outcome.well_formed = not reply.malformed and reply.finish_reason == "stop"
    if not outcome.well_formed:
        outcome.notes.append(f"finish {reply.finish_reason}, malformed {reply.malformed}")
    return outcome


# ---------------------------------------------------------------------------
# Through the float32 torch model (development only)


class TorchRunner:
    """Greedy or sampled decoding of the last trained model, parsed by ossrun's TurnParser."""

    def __init__(self, path: str):
        import torch

        from .model import Config, GptOss

        saved = torch.load(path, weights_only=False)
        self.torch = torch
        self.model = GptOss(Config(**saved["config"]))
        self.model.load_state_dict(saved["state"])
        self.model.eval()
        self.vocab = saved["vocab"]
        self.encoding = dataset.load_encoding()

    def generate(self, prompt: list[int], temperature: float, generator) -> list[int]:
        from ossrun.harmony.encoding import stop_tokens

        torch = self.torch
        stops = stop_tokens(self.encoding)
        reduced = list(dataset.to_reduced(self.vocab, prompt))
        out: list[int] = []
        with torch.no_grad():
            for _ in range(DEFAULT_MAX_TOKENS):
                logits = self.model(torch.tensor([reduced]))[0, -1]
                if temperature == 0:
                    index = int(logits.argmax())
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    index = int(torch.multinomial(probs, 1, generator=generator))
                token = int(self.vocab[index - 1])
                out.append(token)
                reduced.append(index)
                if token in stops:
                    break
        return out

    def run(self, example: tasks.Example, *, temperature: float, seed: int) -> Outcome:
        from ossrun.harmony.encoding import stop_tokens
        from ossrun.harmony.parser import TurnParser
        from ossrun.harmony.prompt import render_prompt

        generator = self.torch.Generator().manual_seed(seed)
        history = list(example.history) + [{"role": "user", "content": example.user}]
        settings = dataset.settings_for(example)
        outcome = Outcome()
        for turn_number in range(3):
            parser = TurnParser(self.encoding)
            for token in self.generate(render_prompt(self.encoding, history, settings), temperature, generator):
                parser.feed(token)
            turn = parser.finish()
            if turn_number == 0:
                outcome.reasoning = turn.reasoning
            if turn.malformed or not turn.tokens or turn.tokens[-1] not in stop_tokens(self.encoding):
                outcome.well_formed = False
                outcome.notes.append(turn.malformed or "no stop token")
            if not turn.tool_calls:
                outcome.final = turn.final
                return outcome
            call = turn.tool_calls[0]
            if outcome.tool_arguments is None:
                outcome.tool_arguments = call.arguments
            try:
                result = weather_function(example)(**json.loads(call.arguments))
            except (TypeError, ValueError, KeyError) as exc:
                result = f"error: {exc}"
            history += [
                {
                    "role": "assistant",
                    "content": "",
                    "reasoning": turn.reasoning,
                    "tool_calls": [{"name": call.name, "arguments": call.arguments}],
                },
                {"role": "tool", "name": call.name, "content": result},
            ]
        outcome.well_formed = False
        outcome.notes.append("too many tool calls")
        return outcome


def evaluate(
    run: Callable[..., Outcome],
    examples: Sequence[tasks.Example],
    temperature: float,
    count_tokens: Callable[[str], int],
    verbose: bool = False,
) -> Figures:
    outcomes = []
    for index, example in enumerate(examples):
        outcome = run(example, temperature=temperature, seed=1000 + index)
        outcomes.append(outcome)
        ok = tasks.answer_correct(example, outcome.final, outcome.tool_arguments)
        if verbose and (not ok or not outcome.well_formed):
            print(
                f"  [{example.task}/{example.effort}] {example.user!r} -> {outcome.final!r} "
                f"(call {outcome.tool_arguments}) {outcome.notes} analysis: {outcome.reasoning!r}",
                file=sys.stderr,
            )
    return score(examples, outcomes, count_tokens)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", help="a GGUF file instead of the shipped demo")
    parser.add_argument("--torch", nargs="?", const="demo/.cache/last-model.pt", help="evaluate a torch state file")
    parser.add_argument("--per-task", type=int, default=DEFAULT_PER_TASK_AND_EFFORT, help="conversations per task and effort")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    parser.add_argument("--unseen", action="store_true", help="also the phrasings never trained on")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every wrong conversation")
    args = parser.parse_args(argv)
    os.environ.setdefault("OSSRUN_DATE", "2025-08-05")

    encoding = dataset.load_encoding()
    count_tokens = functools.partial(token_count, encoding)
    if args.torch:
        run = TorchRunner(args.torch).run
    else:
        import ossrun

        run = functools.partial(run_api, ossrun.load(args.gguf or "demo"))

    suites = [("held-out prompts", dataset.evaluation_examples(args.per_task, args.seed))]
    if args.unseen:
        unseen_tasks = ("addition", "capital", "weather")
        suites.append(
            ("unseen phrasings", dataset.evaluation_examples(args.per_task, args.seed, unseen=True, task_names=unseen_tasks))
        )
    for name, examples in suites:
        for temperature in args.temperatures:
            started = time.monotonic()
            figures = evaluate(run, examples, temperature, count_tokens, args.verbose)
            mode = "greedy" if temperature == 0 else f"temperature {temperature:g}"
            for line in figures.lines(f"{name}, {mode} ({time.monotonic() - started:.0f} s)"):
                print(line)


if __name__ == "__main__":
    main()
