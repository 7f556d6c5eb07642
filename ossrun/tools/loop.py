"""The tool loop: generate, run the calls the model makes, send back the results, generate again.

One answer may take several assistant turns: each turn that ends with
``<|call|>`` has its calls run and the call and its results appended to the
history (with the turn's reasoning, which harmony keeps within a chain of tool
calls), until a final answer or ``max_rounds`` rounds of calls.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ossrun.defaults import DEFAULT_MAX_TOOL_ROUNDS
from ossrun.events import CommentaryDelta, Done, Event, Notice, Reply, Timings, ToolCall, ToolResult, Usage
from ossrun.tools.toolbox import Confirm, Toolbox

Turn = Callable[[list[dict[str, Any]]], Iterator[Event]]  # one assistant turn over a history, ending with Done


def run_tool_loop(
    turn: Turn,
    messages: Sequence[Mapping[str, Any]],
    toolbox: Toolbox,
    *,
    max_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
    confirm: Confirm | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[Event]:
    """Stream the events of every turn, plus a ToolResult per call; end with one Done for the whole answer.

    The final Reply sums usage and timings over the turns, lists the calls run
    (``tool_calls``) and carries the history entries they added (``chain``). It
    stops early, with finish_reason "tool_calls" and the calls in ``pending_calls``,
    when a call names a function declared without a Python callable (the caller
    runs it) or when ``max_rounds`` rounds of calls have run.
    """
    history = [dict(m) for m in messages]
    dropped = 0  # oldest messages a turn left out to fit the context: later turns need not drop them again
    chain: list[dict[str, Any]] = []
    results: list[ToolResult] = []
    replies: list[Reply] = []
    while True:
        calls: list[ToolCall] = []
        preamble: list[str] = []
        reply: Reply | None = None
        for event in turn(history):
            if isinstance(event, Done):
                reply = event.reply
                break
            if isinstance(event, ToolCall):
                calls.append(event)
            elif isinstance(event, CommentaryDelta):
                preamble.append(event.text)
            yield event
        if reply is None:
            raise RuntimeError("a generation ended without a Done event")
        newly_dropped = reply.dropped_messages
        del history[:newly_dropped]
        dropped += newly_dropped
        reply = dataclasses.replace(reply, dropped_messages=dropped)
        replies.append(reply)
        if reply.finish_reason != "tool_calls" or not calls or reply.malformed:
            yield Done(_answer(replies, results, chain))
            return
        commentary = "".join(preamble)
        if not all(toolbox.runs(call) for call in calls):
            yield Done(_answer(replies, results, chain, pending=calls, commentary=commentary))
            return
        if len(replies) > max_rounds:
            yield Notice(f"stopped after {max_rounds} rounds of tool calls: allow more with max_tool_rounds (--max-tool-rounds)")
            yield Done(_answer(replies, results, chain, pending=calls, commentary=commentary))
            return
        # The turn's history entry is the one a reply handing these calls to the caller would add.
        calling = dataclasses.replace(reply, pending_calls=tuple(calls), commentary=commentary)
        added: list[dict[str, Any]] = [calling.message()]
        for call in calls:
            result = toolbox.run(call, confirm, cancel)
            results.append(result)
            added.append(result.message())
            yield result
        chain += added
        history += added
        if cancel is not None and cancel.is_set():
            yield Done(dataclasses.replace(_answer(replies, results, chain), finish_reason="interrupted"))
            return


def _answer(
    replies: Sequence[Reply],
    results: Sequence[ToolResult],
    chain: Sequence[dict[str, Any]],
    pending: Sequence[ToolCall] = (),
    commentary: str = "",
) -> Reply:
    """The last turn's reply, with usage and timings summed over all turns and the tool chain attached."""
    last = replies[-1]
    usage = Usage(
        prompt_tokens=sum(r.usage.prompt_tokens for r in replies),
        cached_tokens=sum(r.usage.cached_tokens for r in replies),
        completion_tokens=sum(r.usage.completion_tokens for r in replies),
    )
    timings = Timings(
        prefill_seconds=sum(r.timings.prefill_seconds for r in replies),
        decode_seconds=sum(r.timings.decode_seconds for r in replies),
        prefill_tokens=sum(r.timings.prefill_tokens for r in replies),
        decode_tokens=sum(r.timings.decode_tokens for r in replies),
    )
    return dataclasses.replace(
        last,
        finish_reason="tool_calls" if pending else last.finish_reason,
        usage=usage,
        timings=timings,
        tool_calls=tuple(results),
        pending_calls=tuple(pending),
        commentary=commentary,
        chain=tuple(chain),
    )
