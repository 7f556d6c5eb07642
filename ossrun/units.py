"""Byte sizes and parameter counts as people write them ("12.1 GB", "61 GiB", "20.9B")."""

from __future__ import annotations

import re

SIZE_UNITS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "PB": 1000**5,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}
COUNT_UNITS = {"": 1, "K": 1000, "M": 1000**2, "B": 1000**3, "T": 1000**4}

_NUMBER_AND_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes in ``"12.1 GB"`` or ``"61 GiB"``; ValueError if the text is not such a size."""
    match = _NUMBER_AND_UNIT.match(text)
    if not match or match.group(2) not in SIZE_UNITS:
        raise ValueError(f'{text!r} is not a size like "12.1 GB" or "61 GiB"')
    return round(float(match.group(1)) * SIZE_UNITS[match.group(2)])


def parse_count(text: str) -> int:
    """The number in ``"20.9B"`` or ``"500M"``; ValueError if the text is not such a count."""
    match = _NUMBER_AND_UNIT.match(text)
    if not match or match.group(2) not in COUNT_UNITS:
        raise ValueError(f'{text!r} is not a count like "20.9B" or "500M"')
    return round(float(match.group(1)) * COUNT_UNITS[match.group(2)])


def format_size(n_bytes: int) -> str:
    """Decimal units, as the Hugging Face hub and disk tools show downloads: ``"12.1 GB"``."""
    for unit in ("PB", "TB", "GB", "MB", "KB"):
        if n_bytes >= SIZE_UNITS[unit]:
            return f"{n_bytes / SIZE_UNITS[unit]:.1f} {unit}"
    return f"{n_bytes} B"


def format_memory(n_bytes: int) -> str:
    """Binary units, as memory is sold and reported: ``"61 GiB"``."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if n_bytes >= SIZE_UNITS[unit]:
            value = n_bytes / SIZE_UNITS[unit]
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{n_bytes} B"


def format_count(n: int) -> str:
    """``20_900_000_000`` -> ``"20.9B"``."""
    for unit in ("T", "B", "M", "K"):
        if n >= COUNT_UNITS[unit]:
            return f"{n / COUNT_UNITS[unit]:.1f}{unit}"
    return str(n)
