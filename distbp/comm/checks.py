"""Checks that fail loudly and on every rank: ranks that must agree, parameters that must be identical,
and a failure on any rank that must stop all of them.

`AgreementChecks` is mixed into `distbp.comm.Comm` and uses only its `rank`, `size` and
`allgather_object`; it holds no MPI call of its own.
"""

from __future__ import annotations

import hashlib
import json
import zlib

import numpy as np

from distbp.errors import ConfigMismatchError, DistbpError, DivergenceError


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def rank_list(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


def _fingerprint(value) -> str:
    """sha256 of a canonical text of value (dict keys sorted; values JSON cannot hold by repr)."""
    try:
        text = json.dumps(value, sort_keys=True, default=repr)
    except TypeError:  # dict keys of mixed types cannot be sorted
        text = repr(value)
    return hashlib.sha256(text.encode()).hexdigest()


def _dict_differences(ref: dict, other: dict) -> list[str]:
    """'key: <value on rank 0> on rank 0 vs <value here>' for every key whose value differs or is missing."""
    out = []
    for key in sorted(set(ref) | set(other), key=str):
        if key in ref and key in other and _fingerprint([ref[key]]) == _fingerprint([other[key]]):
            continue
        a = repr(ref[key]) if key in ref else "<missing>"
        b = repr(other[key]) if key in other else "<missing>"
        out.append(f"{key}: {a} on rank 0 vs {b}")
    return out


class AgreementChecks:
    """Collective checks shared by every Comm."""

    rank: int
    size: int

    def allgather_object(self, obj) -> list:
        raise NotImplementedError

    def check_agree(self, what: str, value: dict | str) -> None:
        """Raise ConfigMismatchError on every rank unless value is the same on all ranks.

        Compares a hash first; only on a mismatch are the values themselves gathered, so the
        message can name the ranks that differ from rank 0 and, for dicts, the keys and values.
        """
        hashes = self.allgather_object(_fingerprint(value))
        if all(h == hashes[0] for h in hashes):
            return
        values = self.allgather_object(value)
        lines = [f"{what} differs between ranks:"]
        for r in range(1, self.size):
            if hashes[r] == hashes[0]:
                continue
            ref, other = values[0], values[r]
            if isinstance(ref, dict) and isinstance(other, dict):
                diffs = "; ".join(_dict_differences(ref, other))
            else:
                diffs = f"{ref!r} on rank 0 vs {other!r}"
            lines.append(f"  rank {r} differs from rank 0: {diffs}")
        raise ConfigMismatchError("\n".join(lines))

    def check_identical(self, buf: np.ndarray, step: int) -> None:
        """Raise DivergenceError on every rank unless buf has the same bytes on all ranks.

        Costs a crc32 of the buffer (about 1 ms per 10 MB) and an allgather of 8 bytes.
        """
        if not buf.flags.c_contiguous:
            raise ValueError("check_identical needs a C-contiguous buffer")
        crc = zlib.crc32(memoryview(buf).cast("B"))
        crcs = self.allgather_object((crc, buf.nbytes))
        bad = [r for r in range(self.size) if crcs[r] != crcs[0]]
        if bad:
            raise DivergenceError(
                f"parameters on {rank_list(bad)} differ from rank 0 at step {step} "
                f"(crc32 {crcs[0][0]:08x} on rank 0 vs {', '.join(f'{crcs[r][0]:08x}' for r in bad)}); "
                "the ranks no longer train the same model")

    def agree_on_failure(self, exc: BaseException | None) -> None:
        """Collective: raise DistbpError on every rank if any rank passes an exception.

        The message lists "rank r: <cause>" per failed rank; ranks with the same cause are listed
        together, and a cause shared by all ranks is reported once as "all ranks: <cause>".
        """
        causes = self.allgather_object(None if exc is None else _describe(exc))
        failed = [r for r in range(self.size) if causes[r] is not None]
        if not failed:
            return
        by_cause: dict[str, list[int]] = {}
        for r in failed:
            by_cause.setdefault(causes[r], []).append(r)
        lines = []
        for cause, ranks in by_cause.items():
            who = "all ranks" if len(ranks) == self.size and self.size > 1 else rank_list(ranks)
            lines.append(f"{who}: {cause}")
        message = lines[0] if len(lines) == 1 else "failed on several ranks:\n  " + "\n  ".join(lines)
        raise DistbpError(message) from exc
