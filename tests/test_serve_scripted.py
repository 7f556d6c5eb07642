"""The server over a scripted engine: what the model writes, however broken, never leaks harmony
markup into responses and never becomes a 500."""

from __future__ import annotations

import json
import os

import pytest

from helpers.scripted import ScriptedEngine, plain, reply
from helpers.serving import ServerThread
from ossrun.model import Model

BROKEN = [
    "<|channel|>finalz<|message|>Hello from a broken header<|return|>",  # an unknown channel
    "<|channel|>analysis<|message|>Hmm.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather "
    '<|constrain|>json<|message|><|channel|>final<|message|>{"city": "Oslo"}<|call|>',  # a header inside a call
    "<|channel|>analysis<|message|>Thinking<|start|>assistant<|channel|>final<|message|>Two messages at once<|return|>",
    "<|channel|>commentary to=functions.nope$$ <|constrain|>json<|message|>{}<|call|>",  # a recipient that is no name
]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
def serve(encoding):
    servers = []

    def start(*scripts):
        model = Model(ScriptedEngine(encoding, list(scripts)), encoding, name="scripted")
        server = ServerThread(model)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def client_for(server):
    from openai import OpenAI

    return OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60)


def harmony_free(value) -> bool:
    return "<|" not in json.dumps(value)


@pytest.mark.parametrize("script", BROKEN)
def test_malformed_output_never_leaks_harmony_into_chat_completions(serve, script):
    client = client_for(serve(script, script))
    plain = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "Hi"}], tools=[WEATHER])
    message = plain.choices[0].message
    assert plain.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert harmony_free(message.model_dump(warnings=False))
    streamed = list(
        client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "Hi"}], tools=[WEATHER], stream=True
        )
    )
    assert all(harmony_free(chunk.model_dump(warnings=False)) for chunk in streamed)


@pytest.mark.parametrize("script", BROKEN)
def test_malformed_output_never_leaks_harmony_into_responses(serve, script):
    client = client_for(serve(script, script))
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}
    response = client.responses.create(model="scripted", input="Hi", tools=[tool])
    assert response.status in ("completed", "incomplete") and harmony_free(response.model_dump(warnings=False))
    with client.responses.stream(model="scripted", input="Hi", tools=[tool]) as stream:
        events = list(stream)
    assert events[-1].type == "response.completed" and all(harmony_free(e.model_dump(warnings=False)) for e in events)


def test_the_cleaned_text_keeps_what_the_messages_said(serve):
    client = client_for(serve(BROKEN[0]))
    content = (
        client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "Hi"}]).choices[0].message.content
    )
    assert content == "Hello from a broken header"


def test_a_well_formed_reply_streams_its_channels_apart(serve):
    client = client_for(serve(reply("Let me think.", "The answer.")))
    chunks = list(client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "Hi"}], stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "Let me think."
    assert "".join(d.content or "" for d in deltas) == "The answer."


def test_the_servers_python_tool_runs_and_its_call_and_result_are_shown(encoding):
    """--tool python: the server runs the model's code itself (the flag is the consent) and shows both."""
    from ossrun.tools import PythonSandbox

    call = "<|channel|>analysis to=python code<|message|>print(6 * 7)<|call|>"
    answer = reply("It printed 42.", "The answer is 42.")
    model = Model(ScriptedEngine(encoding, [call, answer, call, answer, call, answer]), encoding, name="scripted")
    with PythonSandbox() as sandbox:
        server = ServerThread(model, python_tool=sandbox)
        try:
            client = client_for(server)
            completion = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "6 * 7?"}])
            message = completion.choices[0].message
            assert message.content == "The answer is 42." and completion.choices[0].finish_reason == "stop"
            assert "[python]\nprint(6 * 7)" in message.reasoning_content and "[output]\n42" in message.reasoning_content
            (run,) = message.tool_runs  # the same run, apart, for clients that show runs as such
            assert run["name"] == "python" and run["arguments"] == "print(6 * 7)" and run["output"].startswith("42\n")
            assert run["error"] is False
            chunks = list(
                client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "6 * 7?"}], stream=True)
            )
            runs = [getattr(c.choices[0].delta, "tool_run", None) for c in chunks if c.choices]
            assert [r for r in runs if r] == [
                {"index": 0, "name": "python", "arguments": "print(6 * 7)"},
                {"index": 0, "output": run["output"], "error": False},
            ]
            response = client.responses.create(model="scripted", input="6 * 7?")
            run = next(item for item in response.output if item.type == "code_interpreter_call")
            assert run.code == "print(6 * 7)" and run.status == "completed" and "42" in run.outputs[0].logs
            assert response.output_text == "The answer is 42."
        finally:
            server.stop()


LIST_FILES = "import json, os\nprint(json.dumps([os.getcwd(), sorted(os.listdir('.'))]))\nopen('mine.txt', 'w').write('x')"


def test_each_request_and_each_named_conversation_has_its_own_python_files(encoding):
    """--tool python: a client never sees another's files; a conversation it names keeps its own."""
    import openai

    from ossrun.tools import PythonSandbox

    call = f"<|channel|>analysis to=python code<|message|>{LIST_FILES}<|call|>"
    scripts = [call, reply("Listed.", "Done.")] * 6
    model = Model(ScriptedEngine(encoding, scripts), encoding, name="scripted")
    with PythonSandbox() as sandbox:
        server = ServerThread(model, python_tool=sandbox)
        try:
            client = client_for(server)

            def listing(conversation=None):
                extra = {"extra_body": {"conversation": conversation}} if conversation is not None else {}
                response = client.responses.create(model="scripted", input="List the files.", **extra)
                run = next(item for item in response.output if item.type == "code_interpreter_call")
                return json.loads(run.outputs[0].logs.splitlines()[0])

            first_dir, first = listing()
            second_dir, second = listing()
            assert first == [] and second == []  # the first request's mine.txt is not the second's
            assert first_dir != second_dir
            # Each request's working directory went with its reply: nothing of it is left on the host.
            assert not os.path.exists(os.path.dirname(first_dir)) and not os.path.exists(os.path.dirname(second_dir))
            kept_dir, kept = listing("project-a")
            again_dir, again = listing({"id": "project-a"})
            other_dir, other = listing("project-b")
            assert kept == [] and again == ["mine.txt"] and kept_dir == again_dir
            assert other == [] and other_dir != kept_dir
            chat = client.chat.completions.create(
                model="scripted", messages=[{"role": "user", "content": "List."}], extra_body={"conversation": "project-a"}
            )
            assert '"mine.txt"' in chat.choices[0].message.reasoning_content
            with pytest.raises(openai.BadRequestError) as refused:
                client.responses.create(model="scripted", input="Hi", extra_body={"conversation": 7})
            assert refused.value.status_code == 400 and refused.value.body["param"] == "conversation"
            assert server.server.served.python_sessions.open_conversations() == 2
        finally:
            server.stop()
    assert not os.path.exists(os.path.dirname(kept_dir))  # the conversations' directories went with the server


def test_conversations_python_sessions_close_when_idle_or_least_recently_used():
    from ossrun.server.python_sessions import PythonSessions
    from ossrun.tools import PythonSandbox

    now = [0.0]
    with PythonSandbox() as prototype:
        sessions = PythonSessions(prototype, max_conversations=2, idle_seconds=60, clock=lambda: now[0])
        a, b = sessions.for_request("a"), sessions.for_request("b")
        assert sessions.for_request("a") is a and a is not b and a is not prototype
        sessions.for_request("c")  # three open: b, the least recently used, goes
        assert sessions.open_conversations() == 2 and sessions.for_request("b") is not b
        now[0] = 61.0
        d = sessions.for_request("d")  # the others were idle for more than a minute
        assert sessions.open_conversations() == 1 and sessions.for_request("a") is not a
        maker = sessions.for_request(None)  # a request of its own: a fresh sandbox per reply
        assert callable(maker) and maker() is not maker() and d is sessions.for_request("d")
        sessions.close()
        assert sessions.open_conversations() == 0


HARMONY_EXPLAINED = "A turn starts with <|start|>user<|message|>, then the text, then <|end|>; <|return|> ends the answer."


def test_a_well_formed_answer_about_harmony_reaches_the_client_exactly(serve):
    """Only malformed output is cleaned: an answer that writes harmony's markup as text keeps it."""
    script = reply(plain("Explain <|channel|> and <|start|>."), plain(HARMONY_EXPLAINED))
    client = client_for(serve(*[script] * 4))
    question = [{"role": "user", "content": "How does harmony mark a turn?"}]
    message = client.chat.completions.create(model="scripted", messages=question).choices[0].message
    assert message.content == HARMONY_EXPLAINED and message.reasoning_content == "Explain <|channel|> and <|start|>."
    chunks = list(client.chat.completions.create(model="scripted", messages=question, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == HARMONY_EXPLAINED
    assert client.responses.create(model="scripted", input="How?").output_text == HARMONY_EXPLAINED
    with client.responses.stream(model="scripted", input="How?") as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    assert deltas == HARMONY_EXPLAINED


def test_the_filter_takes_out_markup_split_anywhere():
    from ossrun.server.output import MarkupFilter, clean

    raw = 'Hi<|end|><|start|>assistant<|channel|>commentary to=functions.x <|constrain|>json<|message|>{"a": 1}<|call|> end'
    assert clean(raw) == 'Hi{"a": 1} end'
    for cut in range(1, len(raw)):  # the stream may split a token's text anywhere
        markup = MarkupFilter()
        assert markup.feed(raw[:cut]) + markup.feed(raw[cut:]) + markup.flush() == 'Hi{"a": 1} end', cut
