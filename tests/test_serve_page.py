"""The chat page at ``ossrun serve``'s address, used as a person would: a real headless Chromium
(Debian's, driven by Playwright) against ``ossrun serve --demo`` started here.

Every step leaves a screenshot; the folder is printed at the end of the module's tests
("chat page screenshots: ...") and kept under pytest's temporary directory.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from pathlib import Path

import pytest
from playwright import sync_api

from helpers.browser import DESKTOP, PHONE, SCREENSHOT_FOLDERS, Screenshots, browser
from helpers.serving import ServerProcess, ServerThread
from test_serve import demo_home, post

pytestmark = pytest.mark.slow

PAGE_FILES = ["chat.css", "chat.js", "conversations.js", "index.html", "markdown.js", "stream.js", "views.js"]
ANSWERED = "#send:not([hidden])"  # the Send button is back: the reply ended
CHAT_LOG = re.compile(
    r"^POST /v1/chat/completions 200 (?:(\d+)\+(\d+) tokens \((\d+) cached\)|"
    r"cancelled in prefill (\d+)/(\d+)|cancelled) effort=(\w+) [\d.]+s$"
)
# A prompt of about 18k tokens that no earlier request has read: its prefill takes seconds on the demo model.
STORY = "This story is new. " + "A heron waited by the reeds until the water went still. " * 1500


@pytest.fixture(scope="module")
def home(tmp_path_factory, demo_build):
    return demo_home(tmp_path_factory, demo_build)


@pytest.fixture(scope="module")
def server(home):
    process = ServerProcess("--demo", "--parallel", "2", home=home)
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def shots(tmp_path_factory, request):
    folder = tmp_path_factory.mktemp("chat-page-screenshots")
    request.config.stash.setdefault(SCREENSHOT_FOLDERS, []).append(folder)  # named at the end of the run
    return Screenshots(folder)


def get(server, path, key=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
    response = connection.getresponse()
    body = response.read().decode()
    connection.close()
    return response.status, dict(response.getheaders()), body


def metric(server, name, key=None) -> float:
    status, _, text = get(server, "/metrics", key)
    assert status == 200
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.split(" ")[0] == name]
    return values[0] if values else 0.0


def chat_log(server) -> list[re.Match]:
    lines = [line for line in server.lines if line.startswith("POST /v1/chat/completions")]
    matches = [CHAT_LOG.match(line) for line in lines]
    assert all(matches), lines
    return matches


def wait_until(check, seconds: float = 30.0, every: float = 0.05):
    """Poll ``check`` until it returns something true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(every)


def open_page(context, server):
    page = context.pages[0] if context.pages else context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Chromium logs every answer of status 400 or more as an error: those the test asks for are not the page's.
    page.on(
        "console",
        lambda message: (
            errors.append(message.text)
            if message.type == "error" and not message.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.goto(server.url + "/")
    page.wait_for_selector("#model-name:text-is('demo')")
    return page, errors


def send(page, text: str) -> None:
    page.fill("#input", text)
    page.keyboard.press("Enter")


def conversation(page) -> list[tuple[str, str]]:
    """(role, text) of each message shown."""
    return page.eval_on_selector_all(
        "#messages .message",
        "rows => rows.map(r => [r.classList.contains('user') ? 'user' : 'assistant',"
        " (r.querySelector('.bubble, .answer') || r).innerText.trim()])",
    )


def test_a_person_chats_with_the_demo_model(server, playwright, shots, tmp_path):
    with browser(playwright, tmp_path / "profile") as context:
        page, errors = open_page(context, server)
        status, _, body = get(server, "/v1/models/demo")
        context_length = json.loads(body)["context_length"]
        assert page.inner_text("#context") == f"0 / {context_length:,} tokens"
        assert page.get_attribute("#effort", "aria-label") == "Reasoning effort" and page.input_value("#effort") == "medium"
        shots.take(page, "empty")

        # Enter sends; the reasoning is folded under "Thought for N s"; the answer is 85.
        send(page, "What is 38 + 47?")
        page.wait_for_selector(ANSWERED)
        answer = page.locator(".message.assistant .answer").last
        assert "85" in answer.inner_text()
        fold = page.locator(".message.assistant details.thought").last
        assert re.fullmatch(r"Thought for \d+(\.\d)? s", fold.locator("summary").inner_text())
        assert not fold.evaluate("d => d.open") and not fold.locator(".reasoning").is_visible()
        shots.take(page, "answered")
        fold.locator("summary").click()
        assert "85" in fold.locator(".reasoning").inner_text()
        (first,) = chat_log(server)
        assert first.group(6) == "medium"  # the page sent the effort it shows
        used = int(first.group(1)) + int(first.group(2))
        assert page.inner_text("#context") == f"{used:,} / {context_length:,} tokens"  # from the stream's usage
        shots.every_look(page, "reasoning-open")

        # The effort reaches the server; the live fold says "Thinking…" while the model thinks.
        page.select_option("#effort", "high")
        send(page, "What is 56 + 27?")
        page.wait_for_selector(".message.assistant details.thought.thinking summary:text-matches('^Thinking… \\\\d+ s$')")
        page.wait_for_selector(ANSWERED)
        assert "83" in page.locator(".message.assistant .answer").last.inner_text()
        assert chat_log(server)[-1].group(6) == "high"

        # Shift+Enter is a new line, not a send.
        page.fill("#input", "one")
        page.keyboard.press("Shift+Enter")
        page.keyboard.type("two")
        assert page.input_value("#input") == "one\ntwo" and len(chat_log(server)) == 2
        page.fill("#input", "")

        # Regenerate asks again for the last answer; edit-and-resend replaces a question and what followed.
        page.click("button[aria-label='Regenerate this answer']")
        page.wait_for_selector(ANSWERED)
        wait_until(lambda: len(chat_log(server)) == 3)
        assert [role for role, _ in conversation(page)] == ["user", "assistant", "user", "assistant"]
        page.locator("button[aria-label='Edit this message and send it again']").first.click()
        page.fill(".edit textarea", "What is the capital of Japan?")
        page.keyboard.press("Enter")
        page.wait_for_selector(ANSWERED)
        shown = conversation(page)
        assert [role for role, _ in shown] == ["user", "assistant"] and shown[0][1] == "What is the capital of Japan?"
        assert "Tokyo" in shown[1][1]
        shots.take(page, "edited")

        # The conversation is kept in the browser: a reload finds it.
        page.reload()
        page.wait_for_selector("#model-name:text-is('demo')")
        assert conversation(page) == shown and page.input_value("#effort") == "high"
        assert page.locator("#conversations li.current").inner_text().startswith("What is the capital of Japan?")

        # Export writes the JSON /save writes; the REPL's loader reads it; import brings it back.
        with page.expect_download() as download:
            page.click("#export")
        exported = tmp_path / "exported.json"
        download.value.save_as(exported)
        saved = json.loads(exported.read_text())
        assert saved["version"] == 1 and saved["reasoning_effort"] == "high"
        assert [m["role"] for m in saved["messages"]] == ["user", "assistant"]
        assert saved["messages"][0] == {"role": "user", "content": "What is the capital of Japan?"}
        assert "Tokyo" in saved["messages"][1]["content"] and saved["messages"][1]["reasoning"]
        from ossrun.terminal.conversation import Conversation

        loaded = Conversation.from_json(saved)
        assert loaded.messages == saved["messages"] and loaded.reasoning_effort == "high"

        page.click("#new-chat")
        page.wait_for_selector("#messages .empty")
        page.set_input_files("#import-file", str(exported))
        page.wait_for_selector("#status:text-matches('^Imported')")
        assert conversation(page) == shown
        assert page.locator("#conversations li").count() == 2
        shots.take(page, "imported")

        # At a phone's width the conversations are behind a button.
        page.set_viewport_size(PHONE)
        assert not page.locator("#sidebar").is_visible() or not page.locator("#conversations").is_visible()
        page.click("#toggle-sidebar")
        assert page.get_attribute("#toggle-sidebar", "aria-expanded") == "true" and page.locator("#conversations").is_visible()
        shots.take(page, "phone-conversations")
        page.locator("#conversations li .open").last.click()
        assert page.get_attribute("#toggle-sidebar", "aria-expanded") == "false"
        page.set_viewport_size(DESKTOP)

        # A bad file is one line saying what is wrong.
        broken = tmp_path / "broken.json"
        broken.write_text(json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}))
        page.set_input_files("#import-file", str(broken))
        page.wait_for_selector("#status:text-matches('^Cannot import')")
        assert page.inner_text("#status") == (
            'Cannot import broken.json: message 1 has an unknown role "wizard": use system, user, assistant or tool'
        )
        assert errors == []


def test_stop_cancels_a_reply_mid_prefill_on_the_server(server, playwright, shots, tmp_path):
    with browser(playwright, tmp_path / "profile") as context:
        page, errors = open_page(context, server)
        before = len(chat_log(server))
        send(page, STORY)
        # The prompt's progress, from the server's `: prefill READ/TOTAL` comments, while it is read.
        progress = page.wait_for_selector(".progress:text-matches('^Reading the prompt: [1-9][\\\\d,]* of [\\\\d,]+ tokens$')")
        read, total = (int(n.replace(",", "")) for n in re.findall(r"[\d,]+", progress.inner_text()))
        assert 0 < read < total
        shots.take(page, "reading-the-prompt")
        assert metric(server, "ossrun_sequences_busy") == 1
        page.keyboard.press("Escape")  # Escape stops, as the Stop button does
        page.wait_for_selector(ANSWERED)
        assert page.locator(".message.assistant .note").last.inner_text() == "Stopped before the model answered."
        shots.take(page, "stopped")

        # The server logged the request as cancelled while it read the prompt, and let go of the sequence.
        line = wait_until(lambda: len(chat_log(server)) > before and chat_log(server)[-1])
        cancelled_at, prompt = int(line.group(4)), int(line.group(5))
        assert prompt == total and read <= cancelled_at < total
        wait_until(lambda: metric(server, "ossrun_sequences_busy") == 0, seconds=10)
        assert metric(server, 'ossrun_requests_cancelled_total{endpoint="/v1/chat/completions"}') == 1

        # The story stays in its conversation (to regenerate or edit); a new chat is answered at once.
        assert conversation(page)[0] == ["user", STORY.strip()]
        page.click("#new-chat")
        send(page, "What is 38 + 47?")
        page.wait_for_selector(ANSWERED)
        assert "85" in page.locator(".message.assistant .answer").last.inner_text()

        # An error is shown as the server wrote it: here, a prompt longer than the context.
        context_length = json.loads(get(server, "/v1/models/demo")[2])["context_length"]
        sentence = "A heron waited by the reeds until the water went still. "
        per_sentence = post(server, "/tokenize", {"text": sentence * 100})[2]["count"] / 100
        text = (sentence * int(context_length / per_sentence + 100)).strip()  # the page sends what it shows, trimmed
        too_long = [{"role": "user", "content": text}]
        status, _, expected = post(server, "/v1/chat/completions", {"model": "demo", "messages": too_long})
        assert status == 400 and expected["error"]["code"] == "context_length_exceeded"
        page.click("#new-chat")
        send(page, text)
        page.wait_for_selector(ANSWERED)
        assert page.locator(".message.assistant .error").inner_text() == expected["error"]["message"]
        shots.take(page, "error")
        assert errors == []


@pytest.fixture(scope="module")
def keyed_server(home):
    process = ServerProcess("--demo", "--parallel", "1", "--api-key", "sesame", home=home)
    yield process
    process.stop()


def test_with_an_api_key_the_page_asks_for_it_once(keyed_server, playwright, shots, tmp_path):
    server = keyed_server
    assert get(server, "/")[0] == 200 and get(server, "/static/chat.js")[0] == 200  # the page itself is public
    assert get(server, "/metrics")[0] == 401 and get(server, "/metrics", "sesame")[0] == 200
    with browser(playwright, tmp_path / "profile") as context:
        page = context.pages[0]
        page.goto(server.url + "/")
        dialog = page.wait_for_selector("#key-dialog[open]")
        assert page.inner_text("#key-error") == "missing or wrong API key: send Authorization: Bearer KEY (or x-api-key: KEY)"
        shots.take(page, "asks-for-the-key")
        page.fill("#key-input", "wrong")
        page.keyboard.press("Enter")
        page.wait_for_selector(
            "#key-dialog[open] #key-error:text-is('missing or wrong API key: send Authorization: Bearer KEY (or x-api-key: KEY)')"
        )
        page.fill("#key-input", "sesame")
        page.keyboard.press("Enter")
        page.wait_for_selector("#model-name:text-is('demo')")
        assert not dialog.evaluate("d => d.open")
        send(page, "What is 38 + 47?")
        page.wait_for_selector(ANSWERED)
        assert "85" in page.locator(".message.assistant .answer").last.inner_text()

        page.reload()  # kept in the browser: not asked again
        page.wait_for_selector("#model-name:text-is('demo')")
        assert not page.locator("#key-dialog").evaluate("d => d.open")
        assert page.evaluate("localStorage.getItem('ossrun.apiKey')") == "sesame"
        shots.take(page, "key-kept")


PYTHON_CALL = (
    "<|channel|>analysis<|message|>I will let python count.<|end|>"
    "<|start|>assistant<|channel|>analysis to=python code<|message|>print(sum(range(10)))<|call|>"
)
RICH_ANSWER = (
    "<|channel|>analysis<|message|>It printed 45.<|end|><|start|>assistant<|channel|>final<|message|>"
    "## The sum\n\nPython says **45**, with `sum(range(10))`:\n\n"
    "```python\nprint(sum(range(10)))  # <b>45</b>\n```\n\n"
    "| n | square |\n|---:|:---|\n| 2 | 4 |\n| 3 | 9 |\n\n"
    "1. first\n2. second\n   - nested *item*\n\n"
    "> quoted ~~text~~\n\n"
    'Unsafe: <img src=x onerror="window.pwned=1"> <script>window.pwned=2</script> '
    "[bad](javascript:window.pwned=3) [good](https://example.org/docs) <b>bold?</b>"
    "<|return|>"
)

WEATHER_CALL = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}<|call|>'


def test_python_runs_and_markdown_are_shown_safely(encoding, playwright, shots, tmp_path):
    """--tool python over a scripted model: the run is shown in the reasoning; the answer's markdown is
    rendered (code, table, lists) and nothing the model wrote becomes HTML."""
    from helpers.scripted import ScriptedEngine, reply
    from ossrun.model import Model
    from ossrun.tools import PythonSandbox

    scripts = [PYTHON_CALL, RICH_ANSWER, WEATHER_CALL, reply("No such tool here.", "I cannot check the weather here.")]
    model = Model(ScriptedEngine(encoding, scripts), encoding, name="demo")
    with PythonSandbox() as sandbox:
        server = ServerThread(model, name="demo", python_tool=sandbox)
        try:
            with browser(playwright, tmp_path / "profile") as context:
                page, errors = open_page(context, server)
                send(page, "What is the sum of 0..9?")
                page.wait_for_selector(ANSWERED)
                fold = page.locator("details.thought")
                assert re.fullmatch(r"Thought for \d+(\.\d)? s · ran python", fold.locator("summary").inner_text())
                fold.locator("summary").click()
                run = fold.locator(".tool")
                assert run.locator(".tool-head").inner_text() == "python"
                assert run.locator("pre").first.inner_text() == "print(sum(range(10)))"
                assert run.locator("pre.output").inner_text().splitlines()[0] == "45"
                assert "[python]" not in fold.locator(".reasoning").inner_text()  # shown once, as a run
                assert server.server.served.python_sessions.open_conversations() == 1  # the page names its conversation

                answer = page.locator(".answer")
                assert answer.locator("h4").inner_text() == "The sum" and answer.locator("strong").inner_text() == "45"
                assert answer.locator("pre code.language-python").inner_text() == "print(sum(range(10)))  # <b>45</b>"
                assert answer.locator("th").all_inner_texts() == ["n", "square"]
                assert answer.locator("td").all_inner_texts() == ["2", "4", "3", "9"]
                assert answer.locator("ol > li").count() == 2 and answer.locator("ol ul li em").inner_text() == "item"
                assert answer.locator("blockquote del").inner_text() == "text"
                links = answer.locator("a").evaluate_all("links => links.map(a => [a.textContent, a.href, a.rel, a.target])")
                good = ["good", "https://example.org/docs", "noopener noreferrer nofollow", "_blank"]
                assert links == [good], answer.inner_html()
                assert answer.locator("img, script, b, iframe").count() == 0
                text = answer.inner_text()
                assert '<img src=x onerror="window.pwned=1">' in text and "<script>window.pwned=2</script>" in text
                assert "[bad](javascript:window.pwned=3)" in text and "<b>bold?</b>" in text
                assert page.evaluate("window.pwned") is None
                handlers = "[...document.querySelectorAll('*')].some(e => [...e.attributes].some(a => a.name.startsWith('on')))"
                assert not page.evaluate(handlers)  # no element carries an event handler attribute
                shots.every_look(page, "python-run-and-markdown")

                # A call to a function no one declared: shown; the server answers it with an error, the model goes on.
                send(page, "Weather in Oslo?")
                page.wait_for_selector(ANSWERED)
                last = page.locator(".message.assistant").last
                call = last.locator(".calls .tool")
                assert call.locator(".tool-head").inner_text() == "→ get_weather"
                assert json.loads(call.locator("pre").inner_text()) == {"city": "Oslo"}
                assert last.locator(".answer").inner_text() == "I cannot check the weather here."
                shots.take(page, "tool-call")
                assert errors == []
        finally:
            server.stop()


def test_an_mcp_tool_the_demo_model_calls_is_shown_in_its_reasoning(home, playwright, shots, tmp_path):
    from test_mcp import WEATHER, config_file
    from test_mcp import server as mcp_server

    process = ServerProcess("--demo", "--mcp", str(config_file(tmp_path, {"weather": mcp_server(tmp_path)})), home=home)
    try:
        with browser(playwright, tmp_path / "profile") as context:
            page, errors = open_page(context, process)
            send(page, "What's the weather in Oslo?")
            page.wait_for_selector(ANSWERED)
            fold = page.locator("details.thought")
            assert re.fullmatch(r"Thought for \d+(\.\d)? s · ran get_weather", fold.locator("summary").inner_text())
            fold.locator("summary").click()
            run = fold.locator(".tool")
            assert run.locator(".tool-head").inner_text() == "MCP weather: get_weather"
            assert json.loads(run.locator("pre").first.inner_text()) == {"city": "Oslo"}
            assert json.loads(run.locator("pre.output").inner_text()) == json.loads(WEATHER)
            assert page.locator(".answer").inner_text() == "It is 14°C and rainy in Oslo right now."
            shots.take(page, "mcp-run")
            assert errors == []
    finally:
        assert process.stop() == 0


TRICKY_MARKDOWN = [
    "Links: <https://a.example/x>, https://b.example/y., [https://c.example](https://d.example/(paren)) and "
    "[*em* link](mailto:me@example.org) and [x](data:text/html,<script>1</script>) ![img](https://e.example/i.png)",
    "**bold _and em_** ~~gone~~ `co`de` \\*not em\\* a_b_c __strong__ ***both*** line  \nbreak\\\nagain",
    "```js\nconst a = `<b>${x}</b>`;\n~~~\nstill code\n```\n~~~\nunclosed fence <i>x</i>",
    "| a | b |\n|---|:-:|\n| 1 |\n| 2 | 3 | 4 |\n\n|not|a table|\n\n> > nested\n> quote\nlazy",
    "1) one\n2) two\n\n   still two\n3) three\n- [ ] todo\n- [x] done\n  * deeper\n    1. deepest\n\n* * *\n# H1\n###### H6 ##",
    "<div onclick=alert(1)>&lt;&amp;</div> <svg/onload=alert(2)> javascript:alert(3) <a href=x>a</a>",
]
SAFE_TAGS = {
    "P",
    "H3",
    "H4",
    "H5",
    "H6",
    "STRONG",
    "EM",
    "DEL",
    "CODE",
    "PRE",
    "A",
    "UL",
    "OL",
    "LI",
    "BLOCKQUOTE",
    "HR",
    "BR",
    "TABLE",
    "THEAD",
    "TBODY",
    "TR",
    "TH",
    "TD",
    "DIV",
    "SPAN",
    "BUTTON",
    "INPUT",
}


def test_markdown_renders_every_prefix_of_a_streamed_answer_safely(server, playwright, tmp_path):
    """What a stream shows at each step: no prefix breaks the renderer, the last render equals a whole one,
    and only plain elements come out, links to http(s) and mailto alone."""
    documents = [RICH_ANSWER.split("<|message|>")[-1].replace("<|return|>", ""), *TRICKY_MARKDOWN]
    with browser(playwright, tmp_path / "profile") as context:
        page, errors = open_page(context, server)
        for document in documents:
            result = page.evaluate(
                """async (text) => {
                const markdown = await import('/static/markdown.js');
                const streamed = document.createElement('div'), failures = [];
                for (let i = 1; i <= text.length; i++) {
                    try { markdown.renderInto(streamed, text.slice(0, i)); }
                    catch (e) { failures.push([i, String(e)]); }
                }
                const whole = document.createElement('div');
                whole.append(markdown.render(text));
                const elements = [...whole.querySelectorAll('*')];
                return {failures: failures.slice(0, 3), same: streamed.innerHTML === whole.innerHTML,
                        tags: [...new Set(elements.map(e => e.tagName))],
                        attributes: [...new Set(elements.flatMap(e => [...e.attributes].map(a => a.name)))],
                        links: [...whole.querySelectorAll('a')].map(a => a.getAttribute('href')),
                        inputs: [...whole.querySelectorAll('input')].map(i => [i.type, i.disabled])};
            }""",
                document,
            )
            assert result["failures"] == [] and result["same"], (document, result)
            assert set(result["tags"]) <= SAFE_TAGS, (document, result["tags"])
            assert set(result["attributes"]) <= {"class", "href", "rel", "target", "start", "type", "aria-label", "disabled"}
            assert all(re.match(r"(https?://|mailto:)", href) for href in result["links"]), result["links"]
            assert all(kind == "checkbox" and disabled for kind, disabled in result["inputs"])
        rendered = page.evaluate(
            "async (t) => { const d = document.createElement('div');"
            " d.append((await import('/static/markdown.js')).render(t));"
            " return [d.innerText, [...d.querySelectorAll('a')].map(a => a.href)]; }",
            TRICKY_MARKDOWN[0],
        )
        assert rendered[1] == [
            "https://a.example/x",
            "https://b.example/y",
            "https://d.example/(paren)",
            "mailto:me@example.org",
            "https://e.example/i.png",
        ]
        assert "[x](data:text/html,<script>1</script>)" in rendered[0]  # not a link: shown as written
        assert errors == []


def test_the_page_is_served_with_its_own_files_only(server):
    status, headers, body = get(server, "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert headers["x-content-type-options"] == "nosniff"
    assert re.findall(r'(?:src|href)="([^"]+)"', body) == ["data:,", "/static/chat.css", "/static/chat.js"]
    shipped = Path(__file__).resolve().parents[1] / "ossrun" / "server" / "static"
    assert sorted(p.name for p in shipped.iterdir()) == PAGE_FILES
    for name in PAGE_FILES:
        status, headers, text = get(server, f"/static/{name}")
        assert status == 200 and text == (shipped / name).read_text()
        assert (
            headers["content-type"]
            == {"css": "text/css", "js": "text/javascript", "html": "text/html"}[name.rsplit(".", 1)[1]] + "; charset=utf-8"
        )
        assert not re.search(r"https?://(?!example\.)", text)  # nothing from elsewhere (links in comments neither)
        imports = re.findall(r'from "([^"]+)"', text)
        assert all(re.fullmatch(r"\./\w+\.js", target) and target[2:] in PAGE_FILES for target in imports), imports
    assert get(server, "/static/nope.js")[0] == 404
    assert get(server, "/static/..%2Fapp.py")[0] == 404
