"""Golden files of JSON documents: compared as data, written for people to read.

``check(path, document)`` fails with a unified diff when the document differs from the file;
with ``OSSRUN_UPDATE_GOLDEN=1`` it rewrites the file instead (review the change with git diff).
Objects compare without regard to key order, lists in order; the file keeps the order the code
produced, the diff is of sorted keys so that it shows values, not moves.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

UPDATE = "OSSRUN_UPDATE_GOLDEN"


def dumps(document: Any, *, sort_keys: bool = False, one_a_line: Collection[str] = ()) -> str:
    """JSON indented by one space; the lists under the top-level keys ``one_a_line`` (a stream's
    events) with one item on each line."""
    if not one_a_line or not isinstance(document, dict):
        return json.dumps(document, indent=1, ensure_ascii=False, sort_keys=sort_keys) + "\n"
    entries = []
    for key, value in document.items():
        if key in one_a_line and isinstance(value, list) and value:
            items = ",\n".join(f"  {json.dumps(item, ensure_ascii=False, sort_keys=sort_keys)}" for item in value)
            text = f"[\n{items}\n ]"
        else:
            text = json.dumps(value, indent=1, ensure_ascii=False, sort_keys=sort_keys).replace("\n", "\n ")
        entries.append(f" {json.dumps(key, ensure_ascii=False)}: {text}")
    return "{\n" + ",\n".join(entries) + "\n}\n"


def check(path: Path, document: Any, *, one_a_line: Collection[str] = ()) -> None:
    """``document`` (JSON data) against the golden file at ``path`` (written as :func:`dumps` does)."""
    document = json.loads(json.dumps(document))  # tuples as lists, as the file holds them
    if os.environ.get(UPDATE):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(document, one_a_line=one_a_line))
        return
    if not path.exists():
        pytest.fail(f"no golden file {path}: run with {UPDATE}=1 to write it, then review it")
    expected = json.loads(path.read_text())
    if document != expected:
        diff = difflib.unified_diff(
            dumps(expected, sort_keys=True).splitlines(),
            dumps(document, sort_keys=True).splitlines(),
            f"{path.name} (golden)",
            f"{path.name} (now)",
            lineterm="",
        )
        pytest.fail(f"{path} differs (rewrite it with {UPDATE}=1 if the change is meant):\n" + "\n".join(diff), pytrace=False)
