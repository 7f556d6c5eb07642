"""REPL transcripts through the real Model over a scripted engine replaying harmony token streams.

Each test feeds input lines, captures stdout and stderr interleaved (the prompt and
the typed line are echoed as a terminal would show them) and compares the whole
transcript; speeds (tok/s) are the only numbers masked.
"""

from __future__ import annotations

import io
import json
import re

import pytest

from helpers.scripted import Script, ScriptedEngine, reply
from ossrun.engine.protocol import Sampling
from ossrun.model import Model
from ossrun.options import ReplyOptions
from ossrun.terminal.conversation import Conversation
from ossrun.terminal.display import Screen
from ossrun.terminal.repl import Repl, StreamReader

DATE = "2026-01-15"


@pytest.fixture(autouse=True)
def _pinned_date(monkeypatch):
    monkeypatch.setenv("OSSRUN_DATE", DATE)


class Session:
    def __init__(self, encoding, scripts, *, n_ctx=4096, prefill_seconds_per_token=0.0, **repl_options):
        self.engine = ScriptedEngine(encoding, scripts, n_ctx=n_ctx, prefill_seconds_per_token=prefill_seconds_per_token)
        self.model = Model(self.engine, encoding, name="scripted")
        self.buffer = io.StringIO()
        self.repl_options = repl_options

    def run(self, lines: str) -> tuple[int, str]:
        """Run the REPL on ``lines``; (exit code, transcript with speeds masked)."""
        start = self.buffer.tell()
        repl = Repl(
            self.model,
            Screen.create(self.buffer, self.buffer),
            StreamReader(io.StringIO(lines), echo=self.buffer),
            **self.repl_options,
        )
        self.repl = repl
        code = repl.run()
        return code, mask(self.buffer.getvalue()[start:])


def mask(text: str) -> str:
    return re.sub(r"\d+\.\d tok/s", "N tok/s", text)


BANNER = "ossrun chat · scripted · reasoning medium · /help for commands, Ctrl-D to leave\n"
HELLO = reply("The user greets.", "Hello! How can I help?")
FOUR = reply("Simple arithmetic.", "**4**")


def test_a_normal_conversation(encoding):
    session = Session(encoding, [HELLO, FOUR])
    code, transcript = session.run("Hi\nWhat is 2+2?\n")
    assert code == 0
    assert transcript == BANNER + (
        ">>> Hi\n"
        "thinking\nThe user greets.\n\n"
        "Hello! How can I help?\n"
        "prompt 68 tokens (68 new) · prefill N tok/s · decode 22 tokens at N tok/s · context 89/4096 (2%)\n"
        ">>> What is 2+2?\n"
        "thinking\nSimple arithmetic.\n\n"
        "**4**\n"
        "prompt 92 tokens (23 new) · prefill N tok/s · decode 16 tokens at N tok/s · context 107/4096 (3%)\n"
        ">>> \n"
    )
    first, second = session.engine.prompts
    # The second turn re-uses the first prompt and evaluates only what follows it.
    assert second[: len(first)] == first
    assert session.engine.prefills[1].reused >= len(first)
    assert session.engine.prefills[1].evaluated == len(second) - session.engine.prefills[1].reused
    assert session.repl.conversation.messages == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?", "reasoning": "The user greets."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "**4**", "reasoning": "Simple arithmetic."},
    ]


def test_hidden_reasoning_and_sampling_options(encoding):
    session = Session(encoding, [HELLO], reasoning="hide", sampling=ReplyOptions(temperature=0.5, top_p=0.9, seed=3))
    code, transcript = session.run("Hi\n")
    assert transcript == BANNER + (
        ">>> Hi\nthought for 5 tokens\nHello! How can I help?\n"
        "prompt 68 tokens (68 new) · prefill N tok/s · decode 22 tokens at N tok/s · context 89/4096 (2%)\n>>> \n"
    )
    assert session.engine.samplings == [Sampling(temperature=0.5, top_p=0.9, seed=3)]


def test_malformed_output_is_shown_raw_and_the_session_goes_on(encoding):
    bogus = "<|channel|>analysis<|message|>ok<|end|><|start|>assistant<|channel|>bogus<|message|>raw stuff<|return|>"
    session = Session(encoding, [bogus, FOUR])
    code, transcript = session.run("x\nWhat is 2+2?\n")
    assert transcript == BANNER + (
        ">>> x\n"
        "thinking\nok\n"
        "note: the model's output is not valid harmony (unknown channel 'bogus'): showing it raw\n\n"
        "<|start|>assistant<|channel|>bogus<|message|>raw stuff\n"
        "prompt 68 tokens (68 new) · prefill N tok/s · decode 14 tokens at N tok/s · context 81/4096 (2%)\n"
        ">>> What is 2+2?\n"
        "thinking\nSimple arithmetic.\n\n**4**\n"
        "prompt 105 tokens (36 new) · prefill N tok/s · decode 16 tokens at N tok/s · context 120/4096 (3%)\n"
        ">>> \n"
    )
    assert len(session.repl.conversation.messages) == 4


def test_interrupted_answer_stays_on_screen_not_in_history_and_retry_asks_again(encoding):
    cut = Script(reply("Long thinking here", "A long answer that will be cut"), sigint_at_token=14)
    session = Session(encoding, [HELLO, cut, reply("Again.", "Complete answer.")])
    code, transcript = session.run("Hi\nTell me more\n/retry\n")
    assert code == 0
    assert transcript == BANNER + (
        ">>> Hi\n"
        "thinking\nThe user greets.\n\nHello! How can I help?\n"
        "prompt 68 tokens (68 new) · prefill N tok/s · decode 22 tokens at N tok/s · context 89/4096 (2%)\n"
        ">>> Tell me more\n"
        "thinking\nLong thinking here\n\nA long\n"
        "prompt 88 tokens (19 new) · prefill N tok/s · decode 14 tokens at N tok/s · context 101/4096 (2%)\n"
        "note: interrupted: this answer is not kept; /retry asks again\n"
        ">>> /retry\n"
        "retrying: Tell me more\n"
        "thinking\nAgain.\n\nComplete answer.\n"
        "prompt 88 tokens (0 new) · prefill cached · decode 15 tokens at N tok/s · context 102/4096 (2%)\n"
        ">>> \n"
    )
    assert session.engine.interruptions == ["decode"]  # Ctrl-C set the cancel event; no KeyboardInterrupt
    prompts = session.engine.prompts
    assert prompts[2] == prompts[1]  # /retry asked the same question over the same history
    assert [m["content"] for m in session.repl.conversation.messages] == [
        "Hi",
        "Hello! How can I help?",
        "Tell me more",
        "Complete answer.",
    ]


def test_ctrl_c_during_a_slow_prefill_stops_it(encoding):
    long_question = "Please summarise this. " * 200
    slow = Script(reply("x", "never shown"), sigint_in_prefill=True)
    session = Session(encoding, [slow, FOUR], prefill_seconds_per_token=0.002)
    code, transcript = session.run(f"{long_question}\nWhat is 2+2?\n")
    assert session.engine.interruptions == ["prefill"]
    # Ctrl-C came halfway through the prompt; the prefill stopped at the next token.
    assert session.engine.prefills[0].evaluated == len(session.engine.prompts[0]) // 2
    assert "note: interrupted: this answer is not kept; /retry asks again\n>>> What is 2+2?\n" in transcript
    assert "never shown" not in transcript and "**4**" in transcript
    assert [m["content"] for m in session.repl.conversation.messages] == ["What is 2+2?", "**4**"]


def test_effort_and_system_changes_say_what_they_cost(encoding):
    session = Session(encoding, [HELLO, FOUR, HELLO])
    code, transcript = session.run("Hi\n/effort high\nWhat is 2+2?\n/system Answer in French.\nHi\n/effort\n")
    announced = [int(n) for n in re.findall(r"re-processes (\d+) tokens of history", transcript)]
    assert "reasoning effort: high: the next answer re-processes" in transcript
    assert "instructions set: the next answer re-processes" in transcript
    assert transcript.endswith(">>> /effort\nreasoning effort: high\n>>> \n")
    engine = session.engine
    assert "Reasoning: high" in encoding.decode_utf8(engine.prompts[1])
    assert "Answer in French." in encoding.decode_utf8(engine.prompts[2])
    # What was announced is what the next turn re-processed, besides the new question itself.
    for announced_tokens, turn in zip(announced, (1, 2), strict=True):
        history = engine.prompts[turn]
        question_tokens = len(history) - len(
            session.model.render(session.repl.conversation.messages[: 2 * turn], **_options_at(engine, encoding, turn))
        )
        assert engine.prefills[turn].evaluated == announced_tokens + question_tokens


def _options_at(engine, encoding, turn):
    text = encoding.decode_utf8(engine.prompts[turn])
    effort = re.search(r"Reasoning: (\w+)", text).group(1)
    return {"reasoning_effort": effort, "system": "Answer in French." if "Answer in French." in text else None}


def test_unknown_effort_and_unknown_command_keep_the_repl_alive(encoding):
    session = Session(encoding, [HELLO])
    code, transcript = session.run("/effort max\n/frobnicate now\n/save\nHi\n")
    assert code == 0
    assert transcript.startswith(
        BANNER
        + (
            ">>> /effort max\nerror: unknown reasoning effort 'max': use low, medium or high\n"
            ">>> /frobnicate now\nerror: unknown command /frobnicate: type /help for the list\n"
            ">>> /save\nerror: /save needs a file name: /save FILE\n"
            ">>> Hi\nthinking\n"
        )
    )
    assert session.repl.conversation.reasoning_effort == "medium"


def test_save_reset_load_round_trip(encoding, tmp_path):
    path = tmp_path / "chat.json"
    session = Session(encoding, [HELLO, FOUR, FOUR])
    code, transcript = session.run(
        f"/system Be brief.\n/effort low\nHi\n/save {path}\n/reset\nWhat is 2+2?\n/load {path}\nWhat is 2+2?\n"
    )
    assert f">>> /save {path}\nsaved 2 messages to {path}\n>>> /reset\nnew conversation\n" in transcript
    assert re.search(
        rf">>> /load {re.escape(str(path))}\nloaded 2 messages from {re.escape(str(path))} "
        r"\(reasoning effort low\): the next answer re-processes \d+ tokens of history\n",
        transcript,
    )
    saved = json.loads(path.read_text())
    assert saved["reasoning_effort"] == "low"
    assert saved["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?", "reasoning": "The user greets."},
    ]
    prompts = session.engine.prompts
    # After /reset the question stands alone; after /load it follows the saved turn again.
    assert "Hi" not in encoding.decode_utf8(prompts[1]).split("<|start|>user")[-2]
    assert encoding.decode_utf8(prompts[2]).count("<|start|>user<|message|>Hi<|end|>") == 1
    assert Conversation.load(path).options() == {"reasoning_effort": "low", "system": "Be brief."}


def test_bad_load_file_keeps_the_conversation(encoding, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"messages": [{"role": "wizard", "content": "x"}]}')
    session = Session(encoding, [HELLO])
    code, transcript = session.run(f"Hi\n/load {bad}\n/load {tmp_path / 'missing.json'}\n/stats\n")
    assert transcript.endswith(
        f">>> /load {bad}\nerror: cannot load {bad}: message 1 has an unknown role 'wizard': "
        "use system, user, assistant or tool\n"
        f">>> /load {tmp_path / 'missing.json'}\nerror: cannot load {tmp_path / 'missing.json'}: no such file\n"
        ">>> /stats\nmodel scripted · reasoning medium · instructions none · 2 messages · 22 tokens generated\n"
        "last answer: prompt 68 tokens (68 new) · prefill N tok/s · decode 22 tokens at N tok/s · context 89/4096 (2%)\n"
        ">>> \n"
    )


def test_help_lists_every_command(encoding):
    session = Session(encoding, [])
    code, transcript = session.run("/help\n/quit\nnever read\n")
    assert code == 0
    assert transcript == BANNER + (
        ">>> /help\n"
        "  /effort low|medium|high  how hard the model thinks (no argument: show it)\n"
        "  /system TEXT             set the instructions (no argument: remove them)\n"
        "  /reset                   start a new conversation\n"
        "  /retry                   ask the last question again\n"
        "  /save FILE               save the conversation as JSON\n"
        "  /load FILE               load a conversation saved with /save\n"
        "  /stats                   speed and context use\n"
        "  /tools                   the tools the model may call\n"
        "  /help                    this list\n"
        "  /quit                    leave (also Ctrl-D)\n"
        'Start and end multi-line input with """ on a line.\n'
        "Ctrl-C stops an answer (not kept; /retry asks again); at the prompt it leaves, as does Ctrl-D.\n"
        ">>> /quit\n"
    )


def test_retry_with_nothing_to_retry(encoding):
    code, transcript = Session(encoding, []).run("/retry\n")
    assert transcript == BANNER + ">>> /retry\nerror: nothing to retry yet: ask a question first\n>>> \n"


def test_multi_line_input(encoding):
    session = Session(encoding, [HELLO, FOUR])
    code, transcript = session.run('"""\nline one\n\n  line three\n"""\n"""one line"""\n')
    assert transcript.startswith(BANNER + '>>> """\n... line one\n... \n...   line three\n... """\nthinking\n')
    questions = [m["content"] for m in session.repl.conversation.messages if m["role"] == "user"]
    assert questions == ["line one\n\n  line three", "one line"]


def test_ctrl_c_at_the_prompt_leaves_cleanly(encoding):
    class CtrlC:
        def read(self, prompt):
            raise KeyboardInterrupt

        def close(self):
            pass

    buffer = io.StringIO()
    repl = Repl(Model(ScriptedEngine(encoding, []), encoding, name="scripted"), Screen.create(buffer, buffer), CtrlC())
    assert repl.run() == 0
    assert buffer.getvalue() == BANNER + "\n"


def test_context_overflow_drops_the_oldest_turns_with_a_notice(encoding):
    long = "word " * 120
    session = Session(encoding, [reply("a", "first")] + [reply("b", "next")] * 3, n_ctx=512)
    code, transcript = session.run(f"{long}1\n{long}2\n{long}3\n")
    notices = re.findall(
        r"note: the conversation is longer than the context of 512 tokens: "
        r"left out the (\d+) oldest messages",
        transcript,
    )
    assert notices, transcript
    messages = session.repl.conversation.messages
    assert messages[-1] == {"role": "assistant", "content": "next", "reasoning": "b"}
    assert [m["content"][-1] for m in messages if m["role"] == "user"][-1] == "3"
    assert len(messages) == 6 - sum(int(n) for n in notices)
    # The history the REPL keeps is the one the model saw: no dropped turn comes back.
    assert all(len(p) <= 512 for p in session.engine.prompts)
    assert "1<|end|>" not in encoding.decode_utf8(session.engine.prompts[-1])


def test_a_prompt_too_big_for_the_context_is_one_line(encoding):
    session = Session(encoding, [HELLO], n_ctx=256)
    code, transcript = session.run(("word " * 400) + "\nHi\n")
    lines = transcript.splitlines()
    error = next(line for line in lines if line.startswith("error:"))
    assert re.fullmatch(
        r"error: the prompt is \d+ tokens, more than the context of 256 tokens allows "
        r"with 64 kept for the reply: shorten it or use a larger --ctx \(at least \d+\)",
        error,
    )
    assert "Hello! How can I help?" in transcript  # the session went on


def test_a_file_that_cannot_be_saved_or_loaded_keeps_the_session(encoding, tmp_path):
    folder, plain = tmp_path / "folder", tmp_path / "plain"
    folder.mkdir()
    plain.write_text("not a folder")
    session = Session(encoding, [HELLO, FOUR])
    code, transcript = session.run(f"Hi\n/save {folder}\n/load {plain}/chat.json\nWhat is 2+2?\n")
    assert code == 0
    assert (
        f">>> /save {folder}\nerror: cannot save to {folder}: Is a directory\n"
        f">>> /load {plain}/chat.json\nerror: cannot load {plain}/chat.json: Not a directory\n"
        ">>> What is 2+2?\n"
    ) in transcript
    assert [m["content"] for m in session.repl.conversation.messages] == ["Hi", "Hello! How can I help?", "What is 2+2?", "**4**"]


def test_retry_of_an_empty_question_loaded_from_a_file(encoding, tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps([{"role": "user", "content": ""}, {"role": "assistant", "content": "Say something?"}]))
    session = Session(encoding, [HELLO])
    code, transcript = session.run(f"/load {path}\n/retry\n")
    assert code == 0
    assert "\n>>> /retry\nretrying: \nthinking\nThe user greets.\n\nHello! How can I help?\n" in transcript
    assert session.repl.conversation.messages[0] == {"role": "user", "content": ""}
    assert session.repl.conversation.messages[1]["content"] == "Hello! How can I help?"
