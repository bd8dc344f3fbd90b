"""Ctrl-C on a rank whose main thread is blocked inside MPI: heard by a helper thread, reported once.

Python runs a signal's handler only between bytecodes of the main thread, so a root waiting inside a
collective for a peer that will not come (stalled, or itself interrupted while the root was elsewhere)
never raises KeyboardInterrupt. `signal.set_wakeup_fd` makes the C-level handler write the signal's
number to a pipe at once; `InterruptWatch`'s thread reads it, gives the main thread `grace_s` to
take the interrupt the ordinary way (`claim()` from its KeyboardInterrupt handler), and otherwise
prints the line itself and ends the job (`comm.hard_exit(130)`). Exactly one of the two reports it:
the root's, so a job prints one line whichever thread got there.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

INTERRUPTED = "interrupted; checkpoints written so far are kept (resume with --resume)"


class InterruptWatch:
    """Watch for SIGINT from the main thread's start on; `close()` restores the previous wakeup fd."""

    def __init__(self, comm, grace_s: float = 2.0):
        self.comm, self.grace_s = comm, grace_s
        self._lock = threading.Lock()
        self._owner: str | None = None  # "main" or "helper": who reports this interrupt
        self._heard = threading.Event()
        self._read, write = os.pipe()
        os.set_blocking(write, False)
        self._write = write
        self._previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)  # main thread only
        self._thread = threading.Thread(target=self._listen, name="distbp-interrupts", daemon=True)
        self._thread.start()

    def claim(self) -> bool:
        """From the main thread's KeyboardInterrupt handler: True if it reports, False if the helper does."""
        with self._lock:
            if self._owner is None:
                self._owner = "main"
            return self._owner == "main"

    def _listen(self) -> None:
        while True:
            try:
                data = os.read(self._read, 64)
            except OSError:
                return  # closed
            if not data:
                return
            if signal.SIGINT in data and not self._heard.is_set():
                self._heard.set()
                timer = threading.Timer(self.grace_s, self._take_over)
                timer.daemon = True  # an exit after the main thread took the interrupt does not wait for it
                timer.start()

    def _take_over(self) -> None:
        with self._lock:
            if self._owner is not None:
                return  # the main thread took it
            self._owner = "helper"
        if self.comm.is_root:
            sys.stderr.write(f"distbp: {INTERRUPTED}\n")
            sys.stderr.flush()
        self.comm.hard_exit(130)  # the main thread is stuck in MPI: end the job from here

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        for fd in (self._write, self._read):
            try:
                os.close(fd)
            except OSError:
                pass
