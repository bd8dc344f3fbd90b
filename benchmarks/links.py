"""What the namespace harness's links carry: TCP throughput and ping-pong latency between two test hosts.

    sudo .venv/bin/python benchmarks/links.py                   # ~1 minute: table, results/links.json
    sudo .venv/bin/python benchmarks/links.py --rates 500mbit,10gbit --delays 20us --repeats 2

Every case is a 2-host Cluster (tests/helpers/netns.py) with its links shaped by --rates or --delays; the
unshaped one is the baseline. All clusters exist at once and are measured round-robin, so load from
other processes falls on every case alike. In each round, per case: h0 streams 1 MiB sendall()s to
h1 for --seconds (the receiver times first byte to end of stream), then bounces one byte over a
TCP_NODELAY connection (--round-trips, after 200 untimed). Both ends are Python sockets run in the
hosts with `ip netns exec`; the table shows medians over the rounds. A delay's added one-way latency
is half the difference between its fastest round trip and the unshaped link's (the medians move with
the machine's load; the fastest round trips hardly).

A rate counts Ethernet frames, so TCP's payload can have at most 1448/1514 = 95.6 % of it; a delay is
per link, so host to host it adds 2·delay one way, 4·delay to a round trip. Without netem in the
kernel a delay cannot be set: those rows say so and carry no numbers. A shaped rate above what the
CPUs move over an unshaped veth gives the unshaped speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "helpers"))
import netns  # noqa: E402  (standard library only, like the workers below)

PORT = 5201
CHUNK = 1 << 20
WARMUP_ROUND_TRIPS = 200


# ---- the two ends, run inside the test hosts ----------------------------------------------------------

def serve() -> None:
    """h1: per connection, b'T' → sink the stream and answer {bytes, seconds}; b'P' → echo byte by byte."""
    listener = socket.create_server(("0.0.0.0", PORT))
    print("ready", flush=True)
    buf = bytearray(CHUNK)
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mode = conn.recv(1)
            if mode == b"T":
                received, first = 0, None
                while n := conn.recv_into(buf):
                    first = first or time.perf_counter()
                    received += n
                seconds = time.perf_counter() - first if first else 0.0
                conn.sendall(json.dumps({"bytes": received, "seconds": seconds}).encode())
            elif mode == b"P":
                while byte := conn.recv(1):
                    conn.sendall(byte)


def connect(addr: str, timeout: float = 10.0) -> socket.socket:
    """Connect to the server on `addr`, retrying while it starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((addr, PORT), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def throughput(addr: str, seconds: float) -> dict:
    """h0: stream for `seconds`; the receiver's bytes and seconds → Gbit/s of TCP payload."""
    data = memoryview(bytearray(CHUNK))
    with connect(addr) as sock:
        sock.sendall(b"T")
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = json.loads(b"".join(iter(lambda: sock.recv(4096), b"")))
    return {"gbit_s": answer["bytes"] * 8 / answer["seconds"] / 1e9}


def ping_pong(addr: str, round_trips: int) -> dict:
    """h0: one byte there and back, `round_trips` times after a warm-up; median and fastest round trip in µs."""
    times = []
    with connect(addr) as sock:
        sock.sendall(b"P")
        for i in range(WARMUP_ROUND_TRIPS + round_trips):
            t0 = time.perf_counter()
            sock.sendall(b"x")
            sock.recv(1)
            if i >= WARMUP_ROUND_TRIPS:
                times.append(time.perf_counter() - t0)
    return {"rtt_us": statistics.median(times) * 1e6, "rtt_min_us": min(times) * 1e6}


# ---- the driver, as root on the machine ------------------------------------------------------------------

def client(cluster: netns.Cluster, *args: str) -> dict:
    """Run this script's client in h0 against h1; its JSON answer."""
    proc = subprocess.run(["ip", "netns", "exec", cluster.hosts[0], sys.executable, __file__, "--client",
                           cluster.addrs[1], *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"client in {cluster.hosts[0]} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def start(stack: contextlib.ExitStack, rate: str | None, delay: str | None) -> netns.Cluster:
    """A 2-host cluster with the server running in h1; removed (with the server) when `stack` closes."""
    cluster = stack.enter_context(netns.Cluster(2, rate=rate, delay=delay))
    server = subprocess.Popen(["ip", "netns", "exec", cluster.hosts[1], sys.executable, __file__, "--serve"],
                              stdout=subprocess.PIPE, text=True)
    stack.callback(server.wait)
    stack.callback(server.kill)  # runs first: the stack unwinds in reverse, and destroy() comes later
    if server.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the server in {cluster.hosts[1]} did not start")
    return cluster


def measure(args: argparse.Namespace) -> list[dict]:
    cases = [(None, None)] + [(r, None) for r in args.rates] + [(None, d) for d in args.delays]
    rows = [{"rate": r or "unshaped", "delay": d or "0", "rate_bit_s": r and netns.parse_rate(r),
             "delay_s": netns.parse_delay(d) if d else 0.0} for r, d in cases]
    with contextlib.ExitStack() as stack:
        live = {}
        for k, (rate, delay) in enumerate(cases):
            try:
                live[k] = start(stack, rate, delay)
            except netns.Unavailable as e:
                rows[k]["note"], rows[k]["reason"] = "not possible here", str(e)
        if 0 not in live:
            raise SystemExit(f"links: cannot make test hosts: {rows[0]['reason']}")
        for k, cluster in live.items():
            rows[k]["links"] = str(cluster.shaping()["h0/eth0"])
        runs: dict[int, list[dict]] = {k: [] for k in live}
        for _ in range(args.repeats):
            for k, cluster in live.items():
                runs[k].append({**client(cluster, "--test", "throughput", "--seconds", str(args.seconds)),
                                **client(cluster, "--test", "ping-pong", "--round-trips", str(args.round_trips))})
    for k, measured in runs.items():
        rows[k]["runs"] = measured
        for key in measured[0]:
            rows[k][key] = statistics.median(m[key] for m in measured)
    return rows


def summarise(rows: list[dict]) -> None:
    """Derived columns: share of the rate, one-way latency and what the delay added against the baseline."""
    base = rows[0]
    for row in rows:
        if "gbit_s" not in row:
            continue
        if row["rate_bit_s"]:
            row["of_rate"] = f"{100 * row['gbit_s'] * 1e9 / row['rate_bit_s']:.0f} %"
        row["vs_unshaped"] = row["gbit_s"] / base["gbit_s"]
        row["added_one_way_us"] = (row["rtt_min_us"] - base["rtt_min_us"]) / 2
        row["expected_added_us"] = 2 * row["delay_s"] * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", type=lambda s: s.split(",") if s else [], default="500mbit,1gbit,2gbit,10gbit,25gbit",
                   help="link rates to measure besides the unshaped link (comma-separated)")
    p.add_argument("--delays", type=lambda s: s.split(",") if s else [], default="5us,20us,50us",
                   help="per-link one-way delays to measure (comma-separated; needs netem)")
    p.add_argument("--repeats", type=int, default=3, help="rounds over all cases (medians are reported)")
    p.add_argument("--seconds", type=float, default=1.5, help="length of each throughput stream")
    p.add_argument("--round-trips", type=int, default=2000, help="timed ping-pong round trips per round")
    p.add_argument("--out", default="results/links.json")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--client", metavar="ADDR", help=argparse.SUPPRESS)
    p.add_argument("--test", choices=["throughput", "ping-pong"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        return serve()
    if args.client:
        result = (throughput(args.client, args.seconds) if args.test == "throughput"
                  else ping_pong(args.client, args.round_trips))
        return print(json.dumps(result))
    for text in args.rates:
        netns.parse_rate(text)  # a typo fails here, before any namespace exists
    for text in args.delays:
        netns.parse_delay(text)
    reason = netns.unavailable_reason()
    if reason:
        raise SystemExit(f"links: {reason}")

    from common import machine, print_table, write_json  # numpy and numba only for the driver

    rows = measure(args)
    summarise(rows)
    print_table(rows, ["rate", "delay", "gbit_s", "of_rate", "vs_unshaped", "rtt_us", "rtt_min_us",
                       "added_one_way_us", "expected_added_us", "note"],
                f"2 test hosts through one bridge: TCP payload Gbit/s (1 stream, {args.seconds:g} s) and "
                f"1-byte ping-pong round trips in µs, medians of {args.repeats} rounds")
    for reason in sorted({row["reason"] for row in rows if "reason" in row}):
        print(f"not possible here: {reason}")
    settings = {k: getattr(args, k) for k in ("rates", "delays", "repeats", "seconds", "round_trips")}
    write_json(args.out, {"benchmark": "links", "machine": machine(), "settings": settings,
                          "tbf": {"GSO_BYTES": netns.GSO_BYTES, "TIMER_SLACK_S": netns.TIMER_SLACK_S,
                                  "QUEUE_S": netns.QUEUE_S}, "rows": rows})


if __name__ == "__main__":
    main()
