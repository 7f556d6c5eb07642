"""A real headless Chromium for the tests: Debian's ``chromium`` driven by Playwright for Python.

Playwright's own browser download is not used: ``.ci/run`` installs Debian's package when it is
missing. Each browser starts with a fresh user-data-dir (its own localStorage), offline flags,
and reduced motion so that screenshots never catch a transition halfway.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT_FOLDERS = pytest.StashKey[list]()  # shown at the end of the run (conftest's terminal summary)
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-sync",
    "--no-default-browser-check",
]
DESKTOP = {"width": 1100, "height": 760}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    path = shutil.which("chromium") or CHROMIUM
    if not Path(path).exists():
        pytest.fail("Debian's chromium is not installed: apt-get install -y chromium (.ci/run installs it)")
    return path


@contextlib.contextmanager
def browser(playwright, user_data_dir: Path) -> Iterator:
    """A persistent context (one profile) of Debian's Chromium; its first page is ``context.pages[0]``."""
    context = playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=chromium_path(),
        headless=True,
        args=FLAGS,
        viewport=DESKTOP,
        reduced_motion="reduce",
        color_scheme="light",
        accept_downloads=True,
    )
    try:
        yield context
    finally:
        context.close()


class Screenshots:
    """Numbered screenshots of each step, kept in one folder for a person to look at."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.taken: list[Path] = []

    def take(self, page, name: str) -> Path:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path))
        self.taken.append(path)
        return path

    def every_look(self, page, name: str) -> None:
        """The page as it is now, light and dark, at a desktop's and a phone's width."""
        try:
            for size_name, size in (("desktop", DESKTOP), ("phone", PHONE)):
                page.set_viewport_size(size)
                for scheme in ("light", "dark"):
                    page.emulate_media(color_scheme=scheme)
                    self.take(page, f"{name}-{size_name}-{scheme}")
        finally:
            page.set_viewport_size(DESKTOP)
            page.emulate_media(color_scheme="light")
