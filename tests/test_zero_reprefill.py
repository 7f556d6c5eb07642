"""The small sliding-window cache with checkpoints, end to end on the demo model: agent loops that
re-send their whole history evaluate only what the cache did not hold, through the HTTP API (the
openai SDK) and the Python API, several conversations at once; greedy answers equal swa_full's.

Every turn is checked against what the sequences held when it was submitted: no token is
evaluated short of the longest prefix any sequence held (the sliding window having moved on or
not), and never more than what the turn added to its previous prompt.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import ossrun
from ossrun.engine.protocol import common_prefix_length

pytestmark = pytest.mark.slow

DATE = "2025-08-05"
# Long instructions: the sliding window and the small cache's cells move far past each turn's start.
INSTRUCTIONS = "You are a careful assistant. Use the tools when they help, and answer briefly. " * 60
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CONVERSATIONS = [
    ["What's the weather in Oslo?", "And the weather in Lisbon?", "What is 23 + 45?"],
    ["What's the weather in Paris?", "What is the capital of Japan?", "What's the weather in Rome?"],
    ["What is 38 plus 47?", "What's the weather in Tokyo?", "And in Nairobi?"],
]


@pytest.fixture(autouse=True)
def _pinned_date(monkeypatch):
    monkeypatch.setenv("OSSRUN_DATE", DATE)


class Turns:
    """Wraps a model's engine: each request's prompt, what every sequence held when it came, its stats."""

    def __init__(self, engine):
        self.engine = engine
        self.turns: list[tuple[list[int], list[list[int]], object]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, request):
        held = self.engine.scheduler.held_tokens()
        generation = self.engine.generate(request)
        with self._lock:
            self.turns.append((list(request.prompt), held, generation))
        return generation

    def check(self, conversation_of) -> list[tuple[int, int]]:
        """(evaluated, new) of every turn after a conversation's first: only the tokens past what the
        turn has in common with the conversation's previous prompt are evaluated, never its history."""
        counts, previous = [], {}
        for prompt, held, generation in self.turns:
            stats = generation.stats
            assert stats.cached + stats.evaluated == len(prompt)
            # Nothing any sequence held and could serve is evaluated again (the longest prefix held, or its checkpoint).
            assert (
                stats.evaluated <= len(prompt) - min(max(common_prefix_length(t, prompt) for t in held), len(prompt) - 1)
                or stats.restored
            ), (stats.evaluated, stats.restored)
            conversation = conversation_of(prompt)
            if conversation in previous:
                new = len(prompt) - min(common_prefix_length(previous[conversation], prompt), len(prompt) - 1)
                assert stats.evaluated <= new, (stats.evaluated, new)
                counts.append((stats.evaluated, new))
            previous[conversation] = prompt
        return counts


def conversation_of(model):
    """Which of CONVERSATIONS a prompt belongs to: the one whose first question it holds."""

    def find(prompt):
        text = model.decode(prompt)
        (index,) = [i for i, questions in enumerate(CONVERSATIONS) if questions[0] in text]
        return index

    return find


@pytest.fixture(scope="module")
def model(demo_build):
    with ossrun.load(demo_build, ctx=16384, parallel=3, threads=2) as loaded:
        yield loaded


def test_an_agent_loop_through_serve_evaluates_only_new_tokens_on_several_sequences(model):
    from openai import OpenAI

    from helpers.serving import ServerThread

    model.engine = recorder = Turns(model.engine)
    server = ServerThread(model, name="demo")
    client = OpenAI(base_url=server.base_url, api_key="anything", max_retries=0, timeout=300)
    try:

        def converse(questions):
            messages = [{"role": "system", "content": INSTRUCTIONS}]
            prompts = []
            for question in questions:
                messages.append({"role": "user", "content": question})
                while True:  # the agent loop: the whole history each time, tool results between turns
                    reply = client.chat.completions.create(model="demo", messages=messages, tools=[WEATHER], temperature=0)
                    usage = reply.usage
                    prompts.append((usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens))
                    message = reply.choices[0].message
                    if not message.tool_calls:
                        messages.append({"role": "assistant", "content": message.content})
                        break
                    messages.append(
                        {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in message.tool_calls]}
                    )
                    for call in message.tool_calls:
                        city = json.loads(call.function.arguments)["city"]
                        messages.append(
                            {
                                "role": "tool",
                                "tool_call_id": call.id,
                                "content": json.dumps({"city": city, "temperature_c": 21, "condition": "windy"}),
                            }
                        )
            return prompts

        with ThreadPoolExecutor(3) as pool:
            usages = list(pool.map(converse, CONVERSATIONS))
    finally:
        server.stop()
        model.engine = recorder.engine
    counts = recorder.check(conversation_of(model))
    assert len(counts) == sum(len(u) - 1 for u in usages) >= 9  # every question, and a request after each tool call
    assert sum(e for e, _ in counts) <= sum(n for _, n in counts)
    # The HTTP usage says the same: tokens evaluated are the prompt's minus the cached ones.
    evaluated = sorted(prompt - cached for conversation in usages for prompt, cached in conversation)
    assert evaluated == sorted(generation.stats.evaluated for _, _, generation in recorder.turns)


def test_chats_with_tools_through_the_python_api_evaluate_only_new_tokens_and_answer_as_with_swa_full(model, demo_build):
    calls = []

    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(city)
        return json.dumps({"city": city, "temperature_c": 17, "condition": "cloudy"})

    def converse(loaded, questions):
        messages, replies = [], []
        for question in questions:
            messages.append({"role": "user", "content": question})
            reply = loaded.chat(messages, system=INSTRUCTIONS, tools=[get_weather], temperature=0, max_tokens=300)
            replies.append((reply.reasoning, reply.final, [(r.call.name, r.call.arguments) for r in reply.tool_calls]))
            messages.append(reply.message())
        return replies

    model.engine = recorder = Turns(model.engine)
    try:
        with ThreadPoolExecutor(3) as pool:
            small = list(pool.map(lambda q: converse(model, q), CONVERSATIONS))
    finally:
        model.engine = recorder.engine
    counts = recorder.check(conversation_of(model))
    assert len(counts) >= 6 and calls
    assert model.engine.scheduler.checkpoint_bytes() > 0
    with ossrun.load(demo_build, ctx=16384, threads=2, swa_full=True) as full:
        expected = [converse(full, q) for q in CONVERSATIONS]
    assert small == expected
    assert any(tool_calls for conversation in small for _, _, tool_calls in conversation)


# Open WebUI's task prompts (its defaults, shortened; the chat is quoted where they say
# {{MESSAGES:END:N}}): after each answer it asks for follow-ups, a title and tags, one after the other.
FOLLOW_UPS = (
    "### Task:\nSuggest 3-5 relevant follow-up questions or prompts that the user might naturally ask next "
    "in this conversation as a **user**, based on the chat history, to help continue or deepen the "
    'discussion.\n### Output:\nJSON format: { "follow_ups": ["Question 1?", "Question 2?"] }\n'
    "### Chat History:\n<chat_history>\n{chat}\n</chat_history>"
)
TITLE = (
    "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n### Output:\n"
    'JSON format: { "title": "your concise title here" }\n### Chat History:\n<chat_history>\n{chat}\n</chat_history>'
)
TAGS = (
    "### Task:\nGenerate 1-3 broad tags categorizing the main themes of the chat history, along with 1-3 more "
    'specific subtopic tags.\n\n### Output:\nJSON format: { "tags": ["tag1", "tag2", "tag3"] }\n\n'
    "### Chat History:\n<chat_history>\n{chat}\n</chat_history>"
)
REPORT = " ".join(
    f"In week {week} the team shipped {week % 7 + 2} fixes, reviewed {week * 3 % 11 + 4} changes and "
    f"met the {['north', 'south', 'east', 'west'][week % 4]} office twice."
    for week in range(1, 92)
)


def test_open_webuis_side_requests_leave_the_chat_its_cache(tmp_path_factory, demo_build):
    """Open WebUI's pattern through ``ossrun serve`` (its default --parallel): a long first message
    answered, then the follow-up, title and tag requests, each quoting the chat in a task prompt of
    its own (only harmony's system message is shared with the chat), then the next turn. The side
    requests take other sequences, so the next turn evaluates only what it added."""
    from openai import OpenAI

    from helpers.serving import ServerProcess
    from test_serve import demo_home, post

    server = ServerProcess("--demo", home=demo_home(tmp_path_factory, demo_build))
    client = OpenAI(base_url=server.base_url, api_key="anything", max_retries=0, timeout=300)
    try:
        first = [{"role": "user", "content": f"{REPORT}\n\nWhat is 38 + 47?"}]
        reply = client.chat.completions.create(model="demo", messages=first, max_tokens=300, temperature=0)
        answer = reply.choices[0].message.content
        assert reply.choices[0].finish_reason == "stop" and answer
        chat = f"USER: {first[0]['content']}\nASSISTANT: {answer}"
        side = [
            client.chat.completions.create(
                model="demo", max_tokens=24, messages=[{"role": "user", "content": task.replace("{chat}", chat)}]
            ).usage
            for task in (FOLLOW_UPS, TITLE, TAGS)
        ]
        assert all(usage.prompt_tokens > reply.usage.prompt_tokens for usage in side)  # each quotes the whole chat
        second = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "And 23 + 45?"}]
        usage = client.chat.completions.create(model="demo", messages=second, max_tokens=300, temperature=0).usage
        before = post(server, "/tokenize", {"messages": first})[2]["tokens"]
        after = post(server, "/tokenize", {"messages": second})[2]["tokens"]
    finally:
        assert server.stop() == 0
    assert len(before) == reply.usage.prompt_tokens > 2000 and len(after) == usage.prompt_tokens
    assert after[: len(before)] == before  # harmony dropped only the answer's reasoning, after the first prompt
    new = len(after) - len(before)  # the answer without its reasoning, the question, the headers
    evaluated = usage.prompt_tokens - usage.prompt_tokens_details.cached_tokens
    assert new - 3 <= evaluated <= new < 60, (evaluated, new)  # the reply's first tokens (<|channel|>) were held too
    log = [line for line in server.lines if line.startswith("POST /v1/chat/completions 200")]
    cached = len(after) - evaluated
    assert len(log) == 5 and f"{usage.prompt_tokens}+{usage.completion_tokens} tokens ({cached} cached)" in log[-1]
