"""Synthetic conversations rendered to token ids exactly as ossrun renders them.

Prompts come from ``ossrun.harmony.render_prompt`` (system message with effort and date,
developer instructions and functions, history); each completion is harmony's own rendering of the
assistant's messages (analysis, then a final answer ending in ``<|return|>`` or a tool call ending
in ``<|call|>``). A tool call's result is appended the way ossrun appends it to the history, and the
next prompt must start with everything before it: the check in :func:`render` proves that the
model is trained on exactly the tokens ossrun will feed it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import openai_harmony as oh

from ossrun.harmony import encoding as harmony_encoding
from ossrun.harmony.prompt import PromptSettings, history_messages, render_prompt
from ossrun.harmony.vocab import NAMED_SPECIAL_TOKENS
from ossrun.store import demo

from . import tasks

# How often each task is drawn for training: addition is the hardest skill.
TASK_WEIGHTS = {"addition": 0.45, "capital": 0.13, "weather": 0.24, "greeting": 0.09, "refusal": 0.09}
_NO_AUTO_DROP = oh.RenderConversationConfig(auto_drop_analysis=False)


@dataclass
class Rendered:
    """One training sequence: token ids, which of them are the assistant's, and the user's span."""

    ids: list[int]
    completion: list[bool]  # True where the token was written by the assistant (loss is taken there)
    user_span: tuple[int, int]  # [start, end) of the last user message's content tokens


def load_encoding() -> oh.HarmonyEncoding:
    """The harmony encoding, read from the o200k vocabulary ossrun ships."""
    return harmony_encoding.load_encoding(demo.vocab_file().parent)


def tool_description(function: tasks.Function) -> oh.ToolDescription:
    return oh.ToolDescription.new(function.name, function.description, parameters=function.parameters)


def settings_for(example: tasks.Example) -> PromptSettings:
    return PromptSettings(
        reasoning_effort=example.effort,
        instructions=example.instructions,
        date=example.date,
        functions=tuple(tool_description(f) for f in example.functions),
    )


def step_messages(step: Any) -> list[oh.Message]:
    """The assistant's messages for one step, as harmony builds them."""
    analysis = oh.Message.from_role_and_content(oh.Role.ASSISTANT, step.analysis).with_channel("analysis")
    if isinstance(step, tasks.ToolStep):
        call = (
            oh.Message.from_role_and_content(oh.Role.ASSISTANT, step.arguments)
            .with_channel("commentary")
            .with_recipient(f"functions.{step.name}")
            .with_content_type("<|constrain|>json")
        )
        return [analysis, call]
    return [analysis, oh.Message.from_role_and_content(oh.Role.ASSISTANT, step.final).with_channel("final")]


def step_history(step: Any) -> list[dict[str, Any]]:
    """What ossrun appends to the history after a tool step: the call (with its reasoning) and the result."""
    return [
        {
            "role": "assistant",
            "content": "",
            "reasoning": step.analysis,
            "tool_calls": [{"name": step.name, "arguments": step.arguments}],
        },
        {"role": "tool", "name": step.name, "content": step.result},
    ]


def render(encoding: oh.HarmonyEncoding, example: tasks.Example) -> Rendered:
    """The whole conversation as one sequence; raises if ossrun's rendering and harmony's disagree."""
    settings = settings_for(example)
    history = list(example.history) + [{"role": "user", "content": example.user}]
    ids: list[int] = []
    completion: list[bool] = []
    user_span = (0, 0)
    for number, step in enumerate(example.steps):
        prompt = render_prompt(encoding, history, settings)
        if prompt[: len(ids)] != ids:
            raise AssertionError(f"{example.task}: ossrun's history rendering differs from harmony's completion")
        if number == 0:
            user_span = _user_span(encoding, prompt, example.user)
        completion += [False] * (len(prompt) - len(ids))
        messages = settings.header_messages() + history_messages(history) + step_messages(step)
        full = encoding.render_conversation_for_training(oh.Conversation.from_messages(messages), _NO_AUTO_DROP)
        if full[: len(prompt)] != prompt:
            raise AssertionError(f"{example.task}: harmony's rendering does not extend ossrun's prompt")
        completion += [True] * (len(full) - len(prompt))
        ids = full
        if isinstance(step, tasks.ToolStep):
            history += step_history(step)
    return Rendered(ids, completion, user_span)


def _user_span(encoding: oh.HarmonyEncoding, prompt: list[int], user: str) -> tuple[int, int]:
    content = encoding.encode(user, allowed_special=set())
    end = len(prompt) - 3  # ... content <|end|> <|start|> assistant
    start = end - len(content)
    if prompt[start:end] != content:
        raise AssertionError("the user's message is not where it should be in the prompt")
    return start, end


def check_completions(encoding: oh.HarmonyEncoding, example: tasks.Example, rendered: Rendered) -> None:
    """Each completion parses with harmony's strict parser back into the messages it came from."""
    spans, start = [], None
    for index, flag in enumerate(rendered.completion + [False]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            spans.append((start, index))
            start = None
    for (start, end), step in zip(spans, example.steps, strict=True):
        parsed = encoding.parse_messages_from_completion_tokens(rendered.ids[start:end], oh.Role.ASSISTANT, strict=True)
        if [m.to_dict() for m in parsed] != [m.to_dict() for m in step_messages(step)]:
            raise AssertionError(f"{example.task}: a completion does not parse back into its messages")


def training_examples(count: int, seed: int) -> list[tasks.Example]:
    rng = random.Random(seed)
    names, weights = zip(*TASK_WEIGHTS.items(), strict=True)
    return [tasks.make_example(rng, rng.choices(names, weights)[0]) for _ in range(count)]


def evaluation_examples(
    per_task_and_effort: int, seed: int, *, unseen: bool = False, task_names: Sequence[str] = tasks.TASKS
) -> list[tasks.Example]:
    """Held-out conversations, an equal number per task and effort (``unseen``: new phrasings)."""
    rng = random.Random(seed)
    out = []
    for task in task_names:
        for effort in tasks.EFFORTS:
            for _ in range(per_task_and_effort):
                out.append(tasks.make_example(rng, task, held_out=not unseen, unseen=unseen, effort=effort, history_turns=0))
    return out


@dataclass
class Corpus:
    """Rendered training sequences over a reduced vocabulary.

    ``vocab`` lists the o200k ids the data uses (plus harmony's special tokens); index 0 of the
    reduced vocabulary is UNK, which stands for every other id, in training and after export.
    """

    vocab: np.ndarray  # int64 [V]: reduced index i+1 <-> o200k id vocab[i]
    sequences: list[np.ndarray]  # reduced ids
    completion: list[np.ndarray]  # bool masks
    user_spans: list[tuple[int, int]]
    tasks: list[str]

    @property
    def reduced_size(self) -> int:
        return len(self.vocab) + 1


UNK = 0


def special_ids() -> list[int]:
    """Harmony's named special tokens: always in the vocabulary, whether the data uses them or not."""
    return sorted(NAMED_SPECIAL_TOKENS)


def build_corpus(encoding: oh.HarmonyEncoding, examples: Sequence[tasks.Example], *, check_every: int = 50) -> Corpus:
    rendered = []
    for index, example in enumerate(examples):
        r = render(encoding, example)
        if index % check_every == 0:
            check_completions(encoding, example, r)
        rendered.append(r)
    used = set(special_ids())
    for r in rendered:
        used.update(r.ids)
    vocab = np.array(sorted(used), dtype=np.int64)
    return Corpus(
        vocab=vocab,
        sequences=[to_reduced(vocab, r.ids) for r in rendered],
        completion=[np.array(r.completion, dtype=bool) for r in rendered],
        user_spans=[r.user_span for r in rendered],
        tasks=[e.task for e in examples],
    )


def to_reduced(vocab: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """o200k ids as reduced indices (UNK for ids outside the vocabulary)."""
    ids = np.asarray(ids, dtype=np.int64)
    at = np.searchsorted(vocab, ids)
    at_clipped = np.minimum(at, len(vocab) - 1)
    known = vocab[at_clipped] == ids
    return np.where(known, at_clipped + 1, UNK)


def from_reduced(vocab: np.ndarray, reduced: Sequence[int]) -> list[int]:
    return [int(vocab[i - 1]) for i in reduced]


def mask_unknown_words(rng: np.random.Generator, sequence: np.ndarray, span: tuple[int, int]) -> np.ndarray:
    """A refusal prompt with words the model never saw: some or all of the user's tokens become UNK.

    After export every id outside the vocabulary embeds as UNK, so this teaches the model
    what to do with arbitrary text: decline politely.
    """
    start, end = span
    out = sequence.copy()
    if rng.random() < 0.5:
        out[start:end] = np.where(rng.random(end - start) < 0.4, UNK, out[start:end])
    else:
        out[start:end] = UNK
    return out


def shuffled_batches(lengths: Sequence[int], tokens_per_batch: int, rng: np.random.Generator) -> list[list[int]]:
    """Index batches of similar lengths (little padding), each about ``tokens_per_batch`` padded tokens."""
    order = np.argsort(np.asarray(lengths) + rng.random(len(lengths)) * 8)
    batches, current, longest = [], [], 0
    for index in order:
        longest_if_added = max(longest, lengths[index])
        if current and longest_if_added * (len(current) + 1) > tokens_per_batch:
            batches.append(current)
            current, longest_if_added = [], lengths[index]
        current.append(int(index))
        longest = longest_if_added
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def encode_user_prompt(
    encoding: oh.HarmonyEncoding, example: tasks.Example, history: list[dict[str, Any]] | None = None
) -> list[int]:
    """The prompt ossrun would send for ``example`` (its first step), for evaluation."""
    messages = list(example.history) + [{"role": "user", "content": example.user}] + list(history or [])
    return render_prompt(encoding, messages, settings_for(example))
