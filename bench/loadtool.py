#!/usr/bin/env python3
"""Small HTTP/1.1 clients for bench/run.sh, where wrk does not fit (standard library only).

  warm     GET every id of a range once over a few keep-alive connections (fills a cache).
  burst    open N connections first, then send one request on each at the same moment.
  startup  spawn a server command several times; time from spawn to its first 200.
  hits     send N requests for one URL, one after another, on one keep-alive connection
           (bench/callgrind.sh: an exact request count, unlike wrk's timed runs).
  latency  GET every id of a range once, one after another on one keep-alive connection, and
           report the latency percentiles (each request alone: no queueing in the figures).

Each prints one JSON object on stdout.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from urllib.parse import urlsplit


def request_bytes(host: str, path: str, key: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode()


async def read_response(reader: asyncio.StreamReader) -> tuple:
    """Reads one response (Content-Length framed, as every server here answers); returns the
    status and whether the server will close the connection after it."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, closing = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value == "close":
            closing = True
    if length:
        await reader.readexactly(length)
    return status, closing


def parse_ids(text: str) -> list:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


async def warm(args) -> dict:
    url = urlsplit(args.url)
    ids = parse_ids(args.ids)
    queue = asyncio.Queue()
    for i in ids:
        queue.put_nowait(i)
    statuses: dict = {}

    async def worker():
        reader = writer = None
        try:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if writer is None:
                    reader, writer = await asyncio.open_connection(url.hostname, url.port)
                writer.write(request_bytes(url.netloc, f"{url.path}/{i}", args.key))
                status, closing = await read_response(reader)
                statuses[status] = statuses.get(status, 0) + 1
                if closing:  # e.g. nginx after keepalive_requests answers on one connection
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return {
        "requests": len(ids),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(time.monotonic() - started, 3),
    }


async def burst(args) -> dict:
    url = urlsplit(args.url)
    path = url.path + (f"?{url.query}" if url.query else "")
    payload = request_bytes(url.netloc, path, args.key)
    conns = []
    for _ in range(args.n):
        conns.append(await asyncio.open_connection(url.hostname, url.port))
    go = asyncio.Event()

    async def one(reader, writer):
        await go.wait()
        sent = time.monotonic()
        writer.write(payload)
        try:
            status, _ = await asyncio.wait_for(read_response(reader), args.timeout)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            status = 0
        elapsed = time.monotonic() - sent
        writer.close()
        return status, elapsed

    tasks = [asyncio.create_task(one(r, w)) for r, w in conns]
    await asyncio.sleep(0.05)  # every task is parked on the event
    started = time.monotonic()
    go.set()
    results = await asyncio.gather(*tasks)
    total = time.monotonic() - started
    statuses: dict = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    latencies = sorted(e for _, e in results)
    return {
        "requests": args.n,
        "statuses": statuses,
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2),
        "max_ms": round(1000 * latencies[-1], 2),
        "all_answered_ms": round(1000 * total, 2),
    }


def http_status(host: str, port: int, path: str, key: str) -> int:
    """One blocking GET; 0 if nothing listens yet."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(request_bytes(f"{host}:{port}", path, key))
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    return 0
                data += chunk
            return int(data.split(b" ", 2)[1])
    except OSError:
        return 0


def startup(args) -> dict:
    url = urlsplit(args.url)
    ready = urlsplit(args.ready_url) if args.ready_url else None
    runs = []
    for _ in range(args.runs):
        started = time.monotonic()
        child = subprocess.Popen(args.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            first_ready = None
            deadline = started + args.timeout
            while time.monotonic() < deadline:
                if ready and first_ready is None:
                    if http_status(ready.hostname, ready.port, ready.path, "") == 200:
                        first_ready = time.monotonic() - started
                if http_status(url.hostname, url.port, url.path, args.key) == 200:
                    first_200 = time.monotonic() - started
                    break
                if child.poll() is not None:
                    raise SystemExit(f"startup: the server exited with {child.returncode}")
                time.sleep(0.0005)
            else:
                raise SystemExit(f"startup: no 200 from {args.url} within {args.timeout} s")
            runs.append({"first_200_ms": round(1000 * first_200, 1),
                         "ready_ms": round(1000 * first_ready, 1) if first_ready else None})
        finally:
            # Only the child this run started, by its pid.
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if args.between:
            subprocess.run(args.between, shell=True, check=True)
    firsts = [r["first_200_ms"] for r in runs]
    return {
        "runs": runs,
        "median_first_200_ms": statistics.median(firsts),
        "min_first_200_ms": min(firsts),
        "max_first_200_ms": max(firsts),
    }


def hits(args) -> dict:
    url = urlsplit(args.url)
    req = request_bytes(url.netloc, url.path, args.key)
    statuses = {}
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        f = sock.makefile("rb")
        for _ in range(args.n):
            sock.sendall(req)
            status = int(f.readline().split(b" ", 2)[1])
            length = 0
            while True:
                line = f.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            f.read(length)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"requests": args.n, "statuses": statuses}


def latency(args) -> dict:
    url = urlsplit(args.url)
    took, statuses = [], {}
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        f = sock.makefile("rb")
        for i in parse_ids(args.ids):
            req = request_bytes(url.netloc, f"{url.path}/{i}", args.key)
            t = time.perf_counter()
            sock.sendall(req)
            status = int(f.readline().split(b" ", 2)[1])
            length = 0
            while True:
                line = f.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            f.read(length)
            took.append((time.perf_counter() - t) * 1e6)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
    took.sort()
    pick = lambda q: took[min(len(took) - 1, int(q * len(took)))]
    return {"requests": len(took), "statuses": statuses, "p50_us": pick(0.5), "p90_us": pick(0.9),
            "p99_us": pick(0.99), "mean_us": statistics.fmean(took)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("warm")
    w.add_argument("--url", required=True, help="base, e.g. http://127.0.0.1:8080/api/incidents")
    w.add_argument("--key", default="")
    w.add_argument("--ids", required=True, help="FIRST-LAST")
    w.add_argument("--concurrency", type=int, default=16)
    b = sub.add_parser("burst")
    b.add_argument("--url", required=True)
    b.add_argument("--key", default="")
    b.add_argument("-n", type=int, default=1000)
    b.add_argument("--timeout", type=float, default=30.0)
    h = sub.add_parser("hits")
    h.add_argument("--url", required=True)
    h.add_argument("--key", default="")
    h.add_argument("-n", type=int, default=1000)
    lt = sub.add_parser("latency")
    lt.add_argument("--url", required=True, help="base, e.g. http://127.0.0.1:8080/api/incidents")
    lt.add_argument("--key", default="")
    lt.add_argument("--ids", required=True, help="FIRST-LAST")
    s = sub.add_parser("startup")
    s.add_argument("--url", required=True, help="polled until it answers 200")
    s.add_argument("--ready-url", help="also note when this one first answers 200")
    s.add_argument("--key", default="")
    s.add_argument("--runs", type=int, default=5)
    s.add_argument("--timeout", type=float, default=10.0)
    s.add_argument("--between", help="shell command run after each run (e.g. reset stats)")
    s.add_argument("command", nargs=argparse.REMAINDER, help="-- server command and arguments")
    args = parser.parse_args()
    if args.cmd == "warm":
        out = asyncio.run(warm(args))
    elif args.cmd == "burst":
        out = asyncio.run(burst(args))
    elif args.cmd == "hits":
        out = hits(args)
    elif args.cmd == "latency":
        out = latency(args)
    else:
        if args.command and args.command[0] == "--":
            args.command = args.command[1:]
        if not args.command:
            parser.error("startup needs a command after --")
        out = startup(args)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
