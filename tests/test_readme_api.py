"""The README's Python API example runs as written, on the tiny converted model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_python_example_runs(tiny_gguf):
    code = python_example()
    # The same code on the tiny model: its path for the name, a few tokens for the long answers.
    for original, replacement in [
        ('ossrun.load("gpt-oss-20b", ctx=8192)', f"ossrun.load({str(tiny_gguf)!r}, ctx=1024)"),
        ("max_tokens=512", "max_tokens=6"),
    ]:
        assert original in code
        code = code.replace(original, replacement)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    stats = [line for line in lines if line.startswith("length {'prompt_tokens': ")]
    assert len(stats) == 1 and "'completion_tokens': 6}" in stats[0] and "'decode_tps': " in stats[0]
    assert lines[-1] == "[6 tokens]"


def errors_example() -> str:
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[1]


@pytest.mark.slow
def test_the_errors_example_catches_a_prompt_too_long_for_the_context(tiny_gguf):
    """The README's error example, with a history that does not fit a 256-token context."""
    code = errors_example()
    assert "except ContextError:" in code and "except OssrunError as exc:" in code
    setup = (
        "import ossrun\n"
        f"model = ossrun.load({str(tiny_gguf)!r}, ctx=256)\n"
        "messages = [{'role': 'user', 'content': 'word ' * 400}]\n"
    )
    check = (
        "\nassert len(messages) == 1 and 'reply' not in dir()  # chat raised ContextError\n"
        "try:\n    model.chat([{'role': 'user', 'content': 'x'}], reasoning_effort='extreme')\n"
        "except OssrunError as exc:\n    print(f'error: {exc}')\n"
    )
    result = subprocess.run([sys.executable, "-c", setup + code + check], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "error: unknown reasoning effort 'extreme': use low, medium or high"
