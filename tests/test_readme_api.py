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
    for original, replacement in [('ossrun.load("gpt-oss-20b", ctx=8192)', f"ossrun.load({str(tiny_gguf)!r}, ctx=1024)"),
                                  ("max_tokens=512", "max_tokens=6")]:
        assert original in code
        code = code.replace(original, replacement)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    stats = [line for line in lines if line.startswith("length {'prompt_tokens': ")]
    assert len(stats) == 1 and "'completion_tokens': 6}" in stats[0] and "'decode_tps': " in stats[0]
    assert lines[-1] == "[6 tokens]"
