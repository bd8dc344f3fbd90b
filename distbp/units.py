"""Byte sizes as people write them ('8GiB', '512MB') and as distbp prints them (floor 0: standard library only)."""

from __future__ import annotations

import re


def parse_bytes(text: str) -> int:
    """'8GiB', '512MB', '1e9' → bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?i?B?)?\s*", str(text))
    if not m:
        raise ValueError(f"cannot read a memory size from {text!r} (try 8GiB or 512MB)")
    unit = (m.group(2) or "").upper().rstrip("B")
    factor = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
              "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
    return int(float(m.group(1)) * factor)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
