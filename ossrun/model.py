"""The Python API: ``ossrun.load()`` a gpt-oss model, then ``chat`` with it or ``stream`` its reply.

A :class:`Model` renders OpenAI-style messages to harmony token ids, lets the
engine evaluate only what its KV cache does not hold yet, samples the reply
token by token through harmony's streaming parser and yields typed events
(:mod:`ossrun.events`) that every front end consumes.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ossrun.defaults import DEFAULT_REASONING_EFFORT, DEFAULT_REPLY_RESERVE, DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from ossrun.engine.protocol import Engine, GenerationRequest, GenerationStats, Occupancy, Sampling
from ossrun.errors import ContextError, OssrunError
from ossrun.events import Done, Event, FinalDelta, FinishReason, Notice, Prefill, Reply, Timings, ToolCall, Usage
from ossrun.formats import output_rules
from ossrun.harmony.encoding import checkpoint_marks, decode_ids, stop_tokens
from ossrun.harmony.messages import ReasoningEffort, check_reasoning_effort, instructions_from
from ossrun.harmony.parser import Turn, TurnParser
from ossrun.harmony.prompt import PromptSettings, render_prefix, render_prompt
from ossrun.options import ReplyOptions
from ossrun.tools import Toolbox, run_tool_loop

Messages = Sequence[Mapping[str, Any]]


class DefaultSampling(Protocol):
    """A model's recommended sampling (models.toml's ``sampling``)."""

    @property
    def temperature(self) -> float: ...

    @property
    def top_p(self) -> float: ...


@dataclass(frozen=True)
class _Request:
    """One call's prompt settings and sampling."""

    settings: PromptSettings
    history: tuple[Mapping[str, Any], ...]  # the messages minus system/developer entries
    sampling: Sampling  # the first assistant turn's
    later_sampling: Sampling  # the turns after tool results (tool_choice holds the first turn only)
    stop: tuple[str, ...]  # texts that end the answer where they appear (not included)
    truncate: bool  # leave out the oldest turns of a conversation too long for the context
    max_tokens: int | None
    cancel: threading.Event | None
    toolbox: Toolbox
    owns_toolbox: bool  # made for this call from tools=/python_tool=: closed when the reply ends
    max_tool_rounds: int
    confirm: Callable[[ToolCall], bool] | None

    def close(self) -> None:
        if self.owns_toolbox:
            self.toolbox.close()


@dataclass(frozen=True)
class _Prompt:
    ids: list[int]
    dropped: int  # oldest history entries left out to fit the context
    prefix_length: int  # the system/developer messages, shared by every prompt of these settings


@dataclass
class _TurnResult:
    turn: Turn
    finish_reason: FinishReason
    stats: GenerationStats
    stop_text: str | None = None


class Model:
    """A loaded gpt-oss model. Works with any :class:`ossrun.engine.protocol.Engine`."""

    def __init__(
        self,
        engine: Engine,
        encoding: Any,
        *,
        name: str = "gpt-oss",
        path: Path | None = None,
        placement: str | None = None,
        auto_ctx: bool = False,
        reasoning_effort: str | None = None,
        sampling: DefaultSampling | None = None,
    ):
        self.engine = engine
        self.encoding = encoding
        self.name = name
        self.path = path
        self.placement = placement  # which machine holds which layers, for a model loaded over workers
        self.auto_ctx = auto_ctx  # n_ctx was chosen to fit the memory (ctx="auto")
        # A reply's defaults: the registry's for this model (models.toml), else OpenAI's recommendation.
        self.reasoning_effort: ReasoningEffort = check_reasoning_effort(reasoning_effort or DEFAULT_REASONING_EFFORT)
        self.temperature = sampling.temperature if sampling else DEFAULT_TEMPERATURE
        self.top_p = sampling.top_p if sampling else DEFAULT_TOP_P
        self._stops = stop_tokens(encoding)
        self._checkpoint_after = checkpoint_marks(encoding)

    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

    # -- public API ------------------------------------------------------------

    def stream(self, messages: Messages, options: ReplyOptions | None = None, /, **fields: Any) -> Iterator[Event]:
        """The reply to ``messages`` as events, ending with exactly one :class:`Done`.

        The options are an ``ossrun.ReplyOptions``, or its fields as keyword arguments (which then
        override the ``ReplyOptions`` given): ``reasoning_effort`` (low/medium/high; default: the
        model's, ``Model.reasoning_effort``), ``system`` (developer
        instructions; wins over a system entry), ``temperature`` (0: greedy), ``top_p``,
        ``seed``, ``max_tokens``, ``cancel`` (a threading.Event that stops the reply,
        even mid-prefill), and tools:

        - ``tools``: Python functions (schema from their type hints and docstrings) and
          JSON schemas (OpenAI's ``{"type": "function", "function": {...}}`` or flat), or
          an ``ossrun.tools.Toolbox``. Calls to functions run here and their results go
          back to the model; a schema alone ends the reply with finish_reason "tool_calls"
          and ``reply.pending_calls`` for the caller to run (see ``Reply.message``).
        - ``python_tool``: True (a sandbox for this reply), a function that makes one (likewise
          closed when the reply ends: ``PythonSandbox.new_session`` makes sandboxes like one of
          yours) or an ``ossrun.tools.PythonSandbox`` (its working directory lasts until you close it).
        - ``mcp``: MCP servers whose tools the model may call: an ``ossrun.tools.McpServers`` (they
          run until you close them), or a configuration file (or dict, or a list) to start them from
          for this reply.
        - ``max_tool_rounds`` (default 8) and ``confirm(call) -> bool``, asked before each python run
          and MCP call (a server with ``"trust": true`` is not asked about).
        - ``tool_choice``: ``"auto"`` (default), ``"none"``, ``"required"`` or one function
          (``{"type": "function", "function": {"name": ...}}``), for the first turn.

        ``response_format`` (OpenAI's ``json_object`` or ``json_schema``) holds the final answer to
        JSON; ``stop`` (a text or a list of them) ends the answer where one appears. A conversation
        too long for the context loses its oldest turns (a Notice says so) unless ``truncate=False``.
        """
        request = self._request(messages, ReplyOptions.of(options, fields))
        rounds = itertools.count()
        try:
            yield from run_tool_loop(
                lambda history: self._turn(history, request, next(rounds)),
                request.history,
                request.toolbox,
                max_rounds=request.max_tool_rounds,
                confirm=request.confirm,
                cancel=request.cancel,
            )
        finally:
            request.close()

    def chat(self, messages: Messages, options: ReplyOptions | None = None, /, **fields: Any) -> Reply:
        """The whole reply to ``messages`` (same options as :meth:`stream`)."""
        for event in self.stream(messages, ReplyOptions.of(options, fields)):
            if isinstance(event, Done):
                return event.reply
        raise AssertionError("stream() ended without Done")  # pragma: no cover - stream always ends with Done

    def render(self, messages: Messages, options: ReplyOptions | None = None, /, **fields: Any) -> list[int]:
        """The prompt ids a call with these arguments would feed the model (oldest turns dropped if needed)."""
        request = self._request(messages, ReplyOptions.of(options, fields))
        try:
            return self._fit(request.history, request).ids
        finally:
            request.close()

    def pending_tokens(self, messages: Messages, options: ReplyOptions | None = None, /, **fields: Any) -> int:
        """How many prompt tokens a call would evaluate now (the rest is in the KV cache or on disk)."""
        request = self._request(messages, ReplyOptions.of(options, fields))
        try:
            return self._pending(self._fit(request.history, request))
        finally:
            request.close()

    def _pending(self, prompt: _Prompt) -> int:
        reused = self.engine.cached_prefix(prompt.ids, prompt.prefix_length)
        return len(prompt.ids) - min(reused, len(prompt.ids) - 1)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids, harmony's special tokens written as their names (``<|start|>``).

        An id outside the vocabulary is an OssrunError naming it."""
        return decode_ids(self.encoding, list(ids))

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``; harmony's special tokens written in it (``<|start|>``) are read
        as themselves, so ``encode(decode(ids)) == ids`` for a rendered prompt."""
        return self.encoding.encode(text, allowed_special="all")

    def occupancy(self) -> Occupancy:
        """What the engine holds now: busy sequences, waiting requests, KV cells used (see ``n_ctx``)."""
        return self.engine.occupancy()

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- prompt ----------------------------------------------------------------

    def _request(self, messages: Messages, options: ReplyOptions) -> _Request:
        tools = options.tools
        toolbox = Toolbox.build(tools, options.python_tool, options.mcp)
        try:
            return self._settle(messages, options, toolbox, owns_toolbox=toolbox is not tools)
        except BaseException:
            if toolbox is not tools:  # a sandbox or MCP servers made for this call
                toolbox.close()
            raise

    def _settle(self, messages: Messages, options: ReplyOptions, toolbox: Toolbox, *, owns_toolbox: bool) -> _Request:
        rules = output_rules(self.encoding, toolbox, options.response_format, options.tool_choice)
        settings = PromptSettings(
            reasoning_effort=options.reasoning_effort or self.reasoning_effort,
            instructions=options.system if options.system is not None else instructions_from(messages),
            response_format=rules.declared,
        )
        if not rules.no_tools:
            settings = toolbox.prompt_settings(settings)
        sampling = Sampling(
            temperature=float(options.temperature if options.temperature is not None else self.temperature),
            top_p=float(options.top_p if options.top_p is not None else self.top_p),
            seed=options.seed,
        )
        stop = (options.stop,) if isinstance(options.stop, str) else tuple(options.stop or ())
        _check_sampling(sampling, options.max_tokens, stop)
        history = tuple(m for m in messages if m.get("role") not in ("system", "developer"))
        return _Request(
            settings,
            history,
            dataclasses.replace(sampling, constraint=rules.first_turn),
            dataclasses.replace(sampling, constraint=rules.later_turns),
            stop,
            bool(options.truncate),
            options.max_tokens,
            options.cancel,
            toolbox,
            owns_toolbox,
            int(options.max_tool_rounds),
            options.confirm,
        )

    def _reply_reserve(self, max_tokens: int | None) -> int:
        return min(max_tokens or DEFAULT_REPLY_RESERVE, self.n_ctx // 4)

    def _fit(self, history: Messages, request: _Request) -> _Prompt:
        """Render the prompt, leaving out the oldest whole turns until it fits with room for a reply
        (unless ``truncate`` is off: then a prompt too long is a ContextError)."""
        settings = request.settings
        budget = self.n_ctx - self._reply_reserve(request.max_tokens)
        turn_starts = [i for i, m in enumerate(history) if m.get("role") == "user" and i > 0]
        prefix = render_prefix(self.encoding, settings)
        dropped = 0
        while True:
            ids = render_prompt(self.encoding, history[dropped:], settings)
            if len(ids) <= budget:
                shared = len(prefix) if ids[: len(prefix)] == prefix else 0
                return _Prompt(ids, dropped, shared)
            later = [start for start in turn_starts if start > dropped]
            if not later or not request.truncate:
                needed = -(-(len(ids) + (request.max_tokens or DEFAULT_REPLY_RESERVE)) // 1024) * 1024
                raise ContextError(
                    f"the prompt is {len(ids)} tokens, more than the context of {self.n_ctx} tokens "
                    f"allows with {self.n_ctx - budget} kept for the reply: shorten it or use a larger --ctx "
                    f"(at least {needed})"
                )
            dropped = later[0]

    # -- generation --------------------------------------------------------------

    def _turn(self, history: Messages, request: _Request, round_number: int = 0) -> Iterator[Event]:
        """One assistant turn over ``history`` (system entries already set aside), ending with Done.

        A tool-calling loop runs this once per round, with each round's calls and
        results appended to the history.
        """
        prompt = self._fit(history, request)
        notices = []
        if prompt.dropped:
            notices.append(
                f"the conversation is longer than the context of {self.n_ctx} tokens: "
                f"left out the {prompt.dropped} oldest messages"
            )
            yield Notice(notices[-1])
        sampling = request.sampling if round_number == 0 else request.later_sampling
        result = yield from self._generate(prompt, request, sampling)
        yield Done(self._reply(prompt, result, notices))

    def _generate(self, prompt: _Prompt, request: _Request, sampling: Sampling) -> Generator[Event, None, _TurnResult]:
        """Have the engine read the prompt and sample until a stop token, the token limit, a full
        context, a stop text or cancel; the tokens go through harmony's parser.

        Yields the parser's events and returns a :class:`_TurnResult`.
        """
        parser = TurnParser(self.encoding, namespaces=request.toolbox.namespace_names())
        stop = _StopTexts(request.stop)
        generation = self.engine.generate(
            GenerationRequest(
                prompt=tuple(prompt.ids),
                sampling=sampling,
                stop_tokens=self._stops,
                max_tokens=request.max_tokens,
                prefix_length=prompt.prefix_length,
                cancel=request.cancel,
                checkpoint_after=self._checkpoint_after,
            )
        )
        try:
            pending = generation.pending()
            yield Prefill(pending, lambda: min(generation.stats.evaluated, pending))
            events: list[Event] = []
            for token in generation:
                events = [stop.filter(e) if isinstance(e, FinalDelta) else e for e in parser.feed(token)]
                yield from (e for e in events if not isinstance(e, FinalDelta) or e.text)
                if stop.found:
                    break
        finally:
            generation.close()
        stats = generation.stats
        finish: FinishReason = "stop" if stop.found else stats.finish_reason
        if finish == "stop" and any(isinstance(e, ToolCall) for e in events):
            finish = "tool_calls"  # <|call|> ended a message to a tool; a call ended by <|end|> earlier is not one
        if finish not in ("stop", "tool_calls"):
            before = len(parser.turn.final)
            parser.finish()  # flush raw text held back while waiting for a complete character
            if len(parser.turn.final) > before:
                rest = stop.filter(FinalDelta(parser.turn.final[before:], raw=True))
                if rest.text:
                    yield rest
        held = stop.flush()
        if held and not stop.found:
            yield FinalDelta(held, raw=parser.malformed)
        if request.stop:
            parser.turn.final = stop.text
        return _TurnResult(parser.turn, finish, stats, stop.matched)

    def _reply(self, prompt: _Prompt, result: _TurnResult, notices: list[str]) -> Reply:
        turn, stats = result.turn, result.stats
        return Reply(
            reasoning=turn.reasoning,
            final=turn.final,
            finish_reason=result.finish_reason,
            usage=Usage(
                prompt_tokens=len(prompt.ids),
                cached_tokens=stats.cached,
                completion_tokens=stats.generated,
            ),
            timings=Timings(
                prefill_seconds=stats.prefill_seconds,
                decode_seconds=stats.decode_seconds,
                prefill_tokens=stats.evaluated,
                decode_tokens=stats.generated,
            ),
            malformed=turn.malformed is not None,
            context_used=stats.context_used,
            context_size=self.n_ctx,
            dropped_messages=prompt.dropped,
            notices=tuple(notices),
            stop_text=result.stop_text,
        )


class _StopTexts:
    """Ends the answer at the first of ``stops``: answer text passes through, except what might
    be the start of a stop text (held back until it is known not to be one)."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.text = ""  # the answer so far, as shown
        self._held = ""
        self.found = False
        self.matched: str | None = None  # the stop text found

    def filter(self, delta: FinalDelta) -> FinalDelta:
        if not self.stops or self.found:
            if not self.found:
                self.text += delta.text
            return delta if not self.found else FinalDelta("", delta.raw)
        pending = self._held + delta.text
        hits = sorted((i, n) for n, i in enumerate(pending.find(s) for s in self.stops) if i >= 0)
        if hits:
            self.found = True
            self.matched = self.stops[hits[0][1]]
            shown, self._held = pending[: hits[0][0]], ""
        else:
            keep = max((n for s in self.stops for n in range(1, len(s)) if pending.endswith(s[:n])), default=0)
            shown, self._held = pending[: len(pending) - keep], pending[len(pending) - keep :]
        self.text += shown
        return FinalDelta(shown, delta.raw)

    def flush(self) -> str:
        held, self._held = self._held, ""
        self.text += held
        return held


def _check_sampling(sampling: Sampling, max_tokens: int | None, stop: Sequence[str] = ()) -> None:
    if sampling.temperature < 0:
        raise OssrunError(f"temperature {sampling.temperature} is negative: use 0 (greedy) or more (1.0 recommended)")
    if not 0 < sampling.top_p <= 1:
        raise OssrunError(f"top_p {sampling.top_p} is out of range: use a value above 0 and at most 1 (1.0 recommended)")
    if max_tokens is not None and max_tokens < 1:
        raise OssrunError(f"max_tokens {max_tokens} is less than 1: give a positive number or leave it unset")
    if not all(isinstance(text, str) for text in stop):
        raise OssrunError("stop must be a text or a list of texts")
