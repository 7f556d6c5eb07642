"""The chat session state: asking, committing, retrying, trimming, and its JSON file."""

from __future__ import annotations

import json

import pytest

from ossrun.errors import ConversationError, OssrunError
from ossrun.events import Reply, Timings, Usage
from ossrun.terminal.conversation import Conversation


def make_reply(final: str, reasoning: str = "", dropped: int = 0) -> Reply:
    return Reply(reasoning, final, "stop", Usage(), Timings(), dropped_messages=dropped)


def test_ask_does_not_touch_history_until_commit():
    conversation = Conversation(reasoning_effort="HIGH", system="Be brief.")
    messages = conversation.ask("Hi")
    assert messages == [{"role": "user", "content": "Hi"}]
    assert conversation.messages == []
    assert conversation.options() == {"reasoning_effort": "high", "system": "Be brief."}
    conversation.commit("Hi", make_reply("Hello!", reasoning="Greet back."))
    assert conversation.messages == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning": "Greet back."},
    ]
    assert conversation.ask("Again")[:-1] == conversation.messages


def test_retry_removes_an_answered_turn_but_keeps_older_ones():
    conversation = Conversation()
    conversation.commit("One", make_reply("1"))
    conversation.ask("Two")
    conversation.commit("Two", make_reply("2"))
    assert conversation.retry() == "Two"
    assert conversation.messages == [{"role": "user", "content": "One"}, {"role": "assistant", "content": "1"}]


def test_retry_of_an_unanswered_question_keeps_history():
    conversation = Conversation()
    conversation.ask("One")
    conversation.commit("One", make_reply("1"))
    conversation.ask("Interrupted one")  # never committed
    assert conversation.retry() == "Interrupted one"
    assert len(conversation.messages) == 2


def test_retry_with_nothing_asked():
    with pytest.raises(ConversationError, match="nothing to retry"):
        Conversation().retry()


def test_commit_drops_what_the_model_dropped():
    conversation = Conversation()
    for n in range(3):
        conversation.commit(f"q{n}", make_reply(f"a{n}"))
    conversation.commit("q3", make_reply("a3", dropped=4))
    assert [m["content"] for m in conversation.messages] == ["q2", "a2", "q3", "a3"]


def test_reset_keeps_settings():
    conversation = Conversation(reasoning_effort="low", system="S")
    conversation.commit("q", make_reply("a"))
    conversation.reset()
    assert conversation.messages == [] and conversation.last_question is None
    assert conversation.options() == {"reasoning_effort": "low", "system": "S"}


def test_unknown_effort():
    with pytest.raises(OssrunError, match="unknown reasoning effort 'max': use low, medium or high"):
        Conversation().set_effort("max")


def test_save_load_round_trip(tmp_path):
    conversation = Conversation(reasoning_effort="high", system="Answer in French.")
    conversation.commit("Bonjour ?", make_reply("Bonjour !", reasoning="Greeting."))
    path = tmp_path / "chat.json"
    conversation.save(path)
    data = json.loads(path.read_text())
    assert data["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert data["reasoning_effort"] == "high"
    loaded = Conversation.load(path)
    assert loaded.messages == conversation.messages
    assert loaded.options() == conversation.options()
    assert loaded.last_question == "Bonjour ?"
    assert [p.name for p in tmp_path.iterdir()] == ["chat.json"]  # no temporary file left


def test_load_accepts_a_bare_list_of_messages(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Hi"}]))
    loaded = Conversation.load(path)
    assert loaded.system == "Be terse."
    assert loaded.messages == [{"role": "user", "content": "Hi"}]
    assert loaded.reasoning_effort == "medium"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON (Expecting property name enclosed in double quotes at line 1)"),
        ('{"messages": 3}', 'expected {"messages": [...]} or a list of messages'),
        ('[{"role": "bot", "content": "x"}]', "message 1 has an unknown role 'bot'"),
        ('[{"role": "user", "content": 3}]', "message 1: content must be a string"),
        ('[{"role": "user"}]', "message 1 (user) has no text content"),
        ('["hello"]', "message 1 is not an object"),
        ('{"reasoning_effort": "max", "messages": []}', "unknown reasoning_effort 'max'"),
    ],
)
def test_bad_files_give_one_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConversationError) as caught:
        Conversation.load(path)
    text = str(caught.value)
    assert text.startswith(f"cannot load {path}: ") and message in text
    assert "\n" not in text


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(ConversationError, match="no such file"):
        Conversation.load(tmp_path / "absent.json")
    with pytest.raises(ConversationError, match="it is a folder"):
        Conversation.load(tmp_path)
    binary = tmp_path / "blob.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConversationError, match="not a text file"):
        Conversation.load(binary)


def test_save_into_a_missing_folder(tmp_path):
    with pytest.raises(ConversationError, match="does not exist"):
        Conversation().save(tmp_path / "no" / "such" / "chat.json")


def test_any_file_system_error_is_one_line(tmp_path):
    """A folder where the file should be, a file where a folder should be: a ConversationError, not an OSError."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain").write_text("not a folder")
    conversation = Conversation()
    conversation.commit("q", make_reply("a"))
    with pytest.raises(ConversationError, match=r"^cannot save to .*folder: Is a directory$"):
        conversation.save(tmp_path / "folder")
    with pytest.raises(ConversationError, match=r"^cannot save to .*plain/chat.json: the folder .*plain does not exist$"):
        conversation.save(tmp_path / "plain" / "chat.json")
    with pytest.raises(ConversationError, match=r"^cannot load .*plain/chat.json: Not a directory$"):
        Conversation.load(tmp_path / "plain" / "chat.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "plain"]  # no temporary file left
