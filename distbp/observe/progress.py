"""Root-only progress display: a bar on a terminal, a few plain lines in logs and CI."""

from __future__ import annotations

import os
import sys
import time

from distbp.host.launcher import output_is_forwarded


def wants_bar(stream, env=None) -> bool:
    """--progress auto: a carriage-return bar only on a real terminal that is the user's own.

    Not when a launcher relays the output (Open MPI's mpirun hands ranks a pseudo-terminal even when
    its own output goes to a file; srun relays without --pty), nor on a dumb terminal.
    """
    env = os.environ if env is None else env
    isatty = getattr(stream, "isatty", lambda: False)
    return bool(isatty()) and not output_is_forwarded(env) and env.get("TERM", "") != "dumb"


class Progress:
    """Progress over `total` steps of one epoch; silent on every rank but the root."""

    def __init__(self, total: int, label: str, mode: str = "auto", is_root: bool = True, stream=None):
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "bar" if wants_bar(self.stream) else "lines"
        self.mode = mode if is_root else "none"
        self.shown = self.mode != "none"  # False: update draws nothing, and its caller may skip the call
        self.total, self.label = total, label
        self.t0 = self._last = time.monotonic()
        self._next_quarter = 1

    def update(self, done: int, loss: float) -> None:
        if self.mode == "bar":
            now = time.monotonic()
            if now - self._last < 0.1 and done < self.total:
                return
            self._last = now
            width = 30
            filled = width * done // self.total
            rate = done / max(now - self.t0, 1e-9)
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                              f"loss {loss:.4f} {rate:.1f} it/s")
            self.stream.flush()
        elif self.mode == "lines":
            # a plain line at each quarter of a long epoch (> 10 s so far); short epochs print only their summary
            if done * 4 >= self._next_quarter * self.total and done < self.total:
                self._next_quarter += 1
                if time.monotonic() - self.t0 > 10:
                    print(f"{self.label}: {done}/{self.total} steps, loss {loss:.4f}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.mode == "bar":
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
