"""The chat page at ``/``: static files shipped with ossrun, nothing built, nothing fetched from elsewhere.

The page is a client of ``/v1/chat/completions`` like any other (see ``static/chat.js``). Its
files are public, even with ``--api-key``: they hold no data, and the page asks for the key.
A strict Content-Security-Policy keeps it to its own scripts and its own origin, so even a
mistake in rendering the model's text could not run a script or send data elsewhere.
"""

from __future__ import annotations

import functools
import importlib.resources

STATIC = "static"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def names() -> tuple[str, ...]:
    """The page's files, by name."""
    folder = importlib.resources.files("ossrun.server").joinpath(STATIC)
    return tuple(sorted(entry.name for entry in folder.iterdir() if _type_of(entry.name)))


@functools.cache
def read(name: str) -> tuple[bytes, str]:
    """(content, media type) of one of :func:`names`; KeyError for anything else."""
    if name not in names():
        raise KeyError(name)
    return importlib.resources.files("ossrun.server").joinpath(STATIC).joinpath(name).read_bytes(), _type_of(name)


def _type_of(name: str) -> str:
    return next((kind for suffix, kind in TYPES.items() if name.endswith(suffix)), "")
