"""``ossrun serve``'s default effort is the model's own (models.toml's ``reasoning_effort``) unless
``-r`` names one, as for chat, run and batch: /v1/models reports it, and a request that names no
effort is rendered with it. A real server process over the demo model, served under a registry
name whose default effort is low."""

from __future__ import annotations

import http.client
import json
import os
import re
import time

import pytest

from helpers.scripted import invoke
from helpers.serving import ServerProcess
from test_serve import post

# The demo model as a converted registry model: models.toml in the home, the file in models/.
ENTRY = """
[models.mini]
description = "the demo model under a registry name"
parameters = { total = "1M", active = "0.5M" }
context_length = 4096
memory_required = "64 MiB"
reasoning_effort = "low"
sampling = { temperature = 1.0, top_p = 1.0 }
gguf = { repo = "someone/mini-GGUF", files = ["mini.gguf"], download_size = "1 MB" }
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory, demo_build):
    home = tmp_path_factory.mktemp("serve-effort-home")
    (home / "models").mkdir()
    os.link(demo_build, home / "models" / "mini.gguf")
    (home / "models.toml").write_text(ENTRY)
    return home


def test_the_help_says_the_default_is_the_models(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the default's words on one line
    code, out, _ = invoke(capsys, "serve", "--help")
    assert code == 0
    assert re.search(r"--reasoning-effort\s[^[]*\[default: \(the model's, medium\)\]", out)


def prompt_text(server, body) -> str:
    """The prompt a chat request would be rendered to, as text (``/tokenize``, then ``/detokenize``)."""
    status, _, tokens = post(server, "/tokenize", body)
    assert status == 200
    status, _, text = post(server, "/detokenize", {"tokens": tokens["tokens"]})
    assert status == 200
    return text["text"]


def get(server, path):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("GET", path)
    response = connection.getresponse()
    status, data = response.status, json.loads(response.read())
    connection.close()
    return status, data


def logged_efforts(server, count: int) -> list[str]:
    """The efforts of the first ``count`` chat requests' log lines, once the server has written them."""
    deadline = time.monotonic() + 30
    while True:
        lines = server.log_lines("POST /v1/chat/completions 200")
        if len(lines) >= count or time.monotonic() > deadline:
            return [re.search(r" effort=(\w+) ", line).group(1) for line in lines]
        time.sleep(0.02)  # polling the lines the reader thread collects


@pytest.mark.slow
def test_serve_uses_the_models_effort_unless_a_request_names_one(home):
    server = ServerProcess("mini", "--parallel", "1", "--ctx", "4096", home=home)
    try:
        status, listed = get(server, "/v1/models")
        (model,) = listed["data"]
        assert status == 200 and (model["id"], model["default_reasoning_effort"]) == ("mini", "low")
        hello = [{"role": "user", "content": "Hello!"}]
        assert "Reasoning: low" in prompt_text(server, {"messages": hello})
        assert "Reasoning: high" in prompt_text(server, {"messages": hello, "reasoning_effort": "high"})
        body = {"model": "mini", "messages": hello, "max_tokens": 2}
        assert post(server, "/v1/chat/completions", body)[0] == 200
        assert post(server, "/v1/chat/completions", {**body, "reasoning_effort": "high"})[0] == 200
        assert logged_efforts(server, 2) == ["low", "high"]
    finally:
        assert server.stop() == 0
