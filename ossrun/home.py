"""Where ossrun keeps its state: one folder, ``OSSRUN_HOME`` or the platform's app dir."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

APP_NAME = "ossrun"


def default_home() -> Path:
    """The platform's per-user data folder for ossrun."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / APP_NAME
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP_NAME
    xdg = os.environ.get("XDG_DATA_HOME")
    return Path(xdg or Path.home() / ".local" / "share") / APP_NAME


def home() -> Path:
    """The ossrun home: ``$OSSRUN_HOME`` if set, else :func:`default_home`. Not created here."""
    env = os.environ.get("OSSRUN_HOME")
    return Path(env).expanduser() if env else default_home()


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` (its folder created if needed) through a temporary file: never half a file."""
    ensure_dir(path.parent)
    fd, part = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(part, path)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise


def cache_dir() -> Path:
    """Derived, re-creatable files (vocabularies, prompt caches, demo builds)."""
    return home() / "cache"


def models_dir() -> Path:
    """Models converted locally (``ossrun pull --from-safetensors``)."""
    return home() / "models"
