"""How much memory this machine can still give, and how many ranks share it (standard library only)."""

from __future__ import annotations

import os


def available_memory() -> int:
    """Bytes this machine can still give (MemAvailable; the physical memory where /proc has none)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
