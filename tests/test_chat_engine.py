"""The chat REPL on the real llama.cpp engine with the tiny converted model.

In process: tokens evaluated per turn (only the new ones), the disk prefix cache
in a second session, context overflow. Through a pseudo-terminal: ``ossrun chat``
itself, Ctrl-C during a long prefill, Ctrl-C and Ctrl-D at the prompt.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

import ossrun
from ossrun.engine.protocol import common_prefix_length
from ossrun.events import Done
from ossrun.harmony.prompt import PromptSettings, render_prefix
from ossrun.options import ReplyOptions
from ossrun.terminal.display import Screen
from ossrun.terminal.repl import Repl, StreamReader

pytestmark = pytest.mark.slow

DATE = "2026-01-15"
SAMPLING = ReplyOptions(temperature=1.0, top_p=1.0, seed=5, max_tokens=6)


@pytest.fixture(autouse=True)
def _pinned_date(monkeypatch):
    monkeypatch.setenv("OSSRUN_DATE", DATE)


class Recorder:
    """The model, plus what its cache held before each turn and the reply each turn got."""

    def __init__(self, model):
        self.model = model
        self.turns = []  # (cache before, messages, options, reply)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def stream(self, messages, options=None, /, **fields):
        before = list(self.model.engine.scheduler.slots[0].tokens)
        merged = dataclasses.replace(options or ReplyOptions(), **fields)
        for event in self.model.stream(messages, merged):
            if isinstance(event, Done):
                self.turns.append((before, list(messages), merged, event.reply))
            yield event


def chat(model, lines: str) -> str:
    buffer = io.StringIO()
    Repl(model, Screen.create(buffer, buffer), StreamReader(io.StringIO(lines), echo=buffer), sampling=SAMPLING).run()
    return buffer.getvalue()


def test_each_turn_evaluates_only_its_new_tokens_and_a_new_session_reads_the_prefix_from_disk(tiny_gguf, encoding):
    model = Recorder(ossrun.load(tiny_gguf, ctx=2048, threads=2))
    try:
        transcript = chat(model, "Hello there\nWhat is 2+2?\n/effort high\nAnd 3+3?\n")
    finally:
        model.close()
    assert len(model.turns) == 3
    prompts = []
    for before, messages, options, reply in model.turns:
        prompt = model.model.render(messages, reasoning_effort=options.reasoning_effort, system=options.system)
        prompts.append(prompt)
        reused = common_prefix_length(before, prompt)
        assert reply.usage.prompt_tokens == len(prompt)
        assert reply.timings.prefill_tokens == len(prompt) - reused
        assert reply.usage.completion_tokens == 6 and reply.finish_reason == "length"
        assert f"prompt {len(prompt)} tokens ({len(prompt) - reused} new)" in transcript
    # Turn 2 keeps all of turn 1's prompt; turn 3's new effort changes the system message near the start.
    assert common_prefix_length(model.turns[1][0], prompts[1]) >= len(prompts[0])
    assert model.turns[1][3].timings.prefill_tokens < len(prompts[1]) - len(prompts[0]) + 12
    assert model.turns[2][3].timings.prefill_tokens > len(prompts[2]) // 2
    announced = int(re.search(r"reasoning effort: high: the next answer re-processes (\d+) tokens", transcript).group(1))
    assert model.turns[2][3].timings.prefill_tokens == announced + len(prompts[2]) - len(
        model.model.render(model.turns[2][1][:-1], reasoning_effort="high")
    )
    assert transcript.count("\nprompt ") == 3

    # A new session with the same settings restores the system prefix from disk.
    prefix = render_prefix(encoding, PromptSettings(date=DATE))
    again = Recorder(ossrun.load(tiny_gguf, ctx=2048, threads=2))
    try:
        transcript = chat(again, "Hello there\n")
    finally:
        again.close()
    reply = again.turns[0][3]
    assert reply.usage.cached_tokens == len(prefix)
    assert reply.timings.prefill_tokens == reply.usage.prompt_tokens - len(prefix)
    assert f"prompt {reply.usage.prompt_tokens} tokens ({reply.usage.prompt_tokens - len(prefix)} new)" in transcript


def test_a_conversation_longer_than_the_context_drops_its_oldest_turns(tiny_gguf):
    model = Recorder(ossrun.load(tiny_gguf, ctx=512, threads=2))
    repl_input = "".join(f"{'word ' * 110}{n}\n" for n in range(4)) + "/stats\n"
    try:
        buffer = io.StringIO()
        repl = Repl(model, Screen.create(buffer, buffer), StreamReader(io.StringIO(repl_input), echo=buffer), sampling=SAMPLING)
        assert repl.run() == 0
    finally:
        model.close()
    transcript = buffer.getvalue()
    dropped = [
        int(n)
        for n in re.findall(
            r"note: the conversation is longer than the context of 512 tokens: "
            r"left out the (\d+) oldest messages",
            transcript,
        )
    ]
    assert dropped and "error" not in transcript
    assert len(repl.conversation.messages) == 8 - sum(dropped)
    assert repl.conversation.messages[-2]["content"].endswith("3")
    assert all(reply.usage.prompt_tokens + 6 <= 512 for *_, reply in model.turns)


# --- a real terminal --------------------------------------------------------------------------------


class Terminal:
    """``ossrun chat`` on a pseudo-terminal of 100x30, read as plain text (escape codes removed)."""

    def __init__(self, *args, home):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        env = {**os.environ, "OSSRUN_DATE": DATE, "OSSRUN_HOME": str(home), "TERM": "xterm-256color"}
        env.pop("NO_COLOR", None)
        # A session of its own with this terminal as its controlling one, so ^C there is a SIGINT.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ossrun", "chat", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.master = master
        self.text = ""

    def expect(self, pattern: str, timeout: float = 120) -> float:
        """Read until ``pattern`` (a regex) shows up in the output after what was consumed; the seconds it took."""
        start = time.monotonic()
        while True:
            match = re.search(pattern, self.text)
            if match:
                self.text = self.text[match.end() :]
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{pattern!r} not seen in {timeout} s; output so far:\n{self.text}")
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(self.master, 65536).decode("utf-8", "replace")
                except OSError:  # the child closed the terminal
                    data = ""
                self.text += re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r", "", data)

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            os.close(self.master)


def test_ctrl_c_in_a_terminal_stops_a_long_prefill_and_keeps_the_session(tiny_gguf, tmp_path):
    long_history = tmp_path / "long.json"
    long_history.write_text(json.dumps([{"role": "user", "content": "word " * 14000}, {"role": "assistant", "content": "ok"}]))
    terminal = Terminal(str(tiny_gguf), "--ctx", "16384", "--threads", "2", "--max-tokens", "4", home=tmp_path)
    try:
        terminal.expect(r"ossrun chat · tiny-gpt-oss · reasoning medium")
        terminal.expect(r">>> ")
        terminal.send(f"/load {long_history}\r")
        terminal.expect(r"loaded 2 messages .* re-processes \d+ tokens of history")
        terminal.expect(r">>> ")
        terminal.send("hi\r")
        terminal.expect(r"reading \d{5} prompt tokens…")  # the prefill of 14000 tokens has started
        terminal.send("\x03")
        stopped = terminal.expect(r"note: interrupted: this answer is not kept; /retry asks again")
        assert stopped < 1.5
        terminal.expect(r">>> ")
        terminal.send("/stats\r")
        terminal.expect(r"model tiny-gpt-oss · reasoning medium · instructions none · 2 messages · 0 tokens generated")
        terminal.expect(r">>> ")
        # The same question, not interrupted: the rest of the prefill and 4 tokens. Ctrl-C sent the
        # moment the prompt is back leaves; on a busy machine it often came before readline waited
        # for a key and was ignored until Enter (see sigint_reaches_input).
        terminal.send("/retry\r")
        terminal.expect(r"prompt \d+ tokens \(\d+ new\)")
        terminal.expect(r">>> ")
        terminal.send("\x03")  # at the prompt: leave
        assert terminal.wait() == 0
    finally:
        if terminal.process.poll() is None:
            terminal.process.kill()


def test_a_terminal_session_answers_and_ctrl_d_leaves(tiny_gguf, tmp_path):
    terminal = Terminal(
        str(tiny_gguf), "--ctx", "1024", "--threads", "2", "--max-tokens", "4", "--seed", "1", "--hide-reasoning", home=tmp_path
    )
    try:
        terminal.expect(r">>> ")
        terminal.send("Hello\r")
        terminal.expect(
            r"prompt \d+ tokens \(\d+ new\) · prefill [\d.]+ tok/s · decode 4 tokens at [\d.]+ tok/s"
            r" · context \d+/1024"
        )
        terminal.expect(r"note: the answer was cut off at the token limit")
        terminal.expect(r">>> ")
        terminal.send("/nonsense\r")
        terminal.expect(r"error: unknown command /nonsense: type /help for the list")
        terminal.expect(r">>> ")
        terminal.send("\x04")
        assert terminal.wait() == 0
    finally:
        if terminal.process.poll() is None:
            terminal.process.kill()
    history = tmp_path / "chat_history"
    assert "Hello" in history.read_text() and "/nonsense" in history.read_text()
