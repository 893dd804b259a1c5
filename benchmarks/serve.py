"""Benchmark: `chex serve` start-up time and what its connection limits cost (issue 24).

Starts `chex serve` as a user does (a subprocess, `python -m chexcli serve --model ...`)
and measures:

* start-up: from launch until `GET /api/info` answers 200 (median and range of --starts runs);
* requests: `GET /api/info` round trips on one keep-alive connection (requests per second);
* 200 idle half-open connections: the server's thread count and resident memory before and
  while they are held, and whether a normal request is still answered.

    python benchmarks/serve.py [--model BUNDLE] [--starts 5] [--out FILE]

Without --model a tiny random bundle is written to a temporary folder (start-up then measures
the server, not the loading of a paper-size model). Prints one JSON object (also written to --out).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: Path, port: int) -> tuple[subprocess.Popen, float]:
    """Launch `chex serve` and wait for /api/info; returns the process and the seconds it took."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "chexcli", "serve", "--model", str(model), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"chex serve exited: {proc.stderr.read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/api/info")
            if conn.getresponse().status == 200:
                return proc, time.perf_counter() - started
        except OSError:
            time.sleep(0.02)


def process_stats(pid: int) -> dict:
    """Threads and resident memory (MB) of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"threads": int(fields["Threads"]), "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1)}


def requests_per_second(port: int, n: int = 300) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    started = time.perf_counter()
    for _ in range(n):
        conn.request("GET", "/api/info")
        conn.getresponse().read()
    return n / (time.perf_counter() - started)


def half_open(port: int, pid: int, count: int = 200) -> dict:
    before = process_stats(pid)
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /api/info HTTP/1.1\r\nHost: local")
        socks.append(s)
    time.sleep(0.5)
    during = process_stats(pid)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/info")
    served = conn.getresponse().status == 200
    for s in socks:
        s.close()
    return {"connections": count, "before": before, "during": during, "normal_request_served": served}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="bundle folder (default: a tiny random bundle)")
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from chexcli.model.tiny import save_tiny_bundle

            model = save_tiny_bundle(Path(tmp) / "tiny", seed=0)
        times, result = [], {}
        for k in range(args.starts):
            port = free_port()
            proc, seconds = start(model, port)
            times.append(seconds)
            if k == args.starts - 1:
                result["requests_per_second"] = round(requests_per_second(port), 1)
                result["half_open"] = half_open(port, proc.pid)
            proc.terminate()
            proc.wait(timeout=30)
    result = {"start_s": {"median": round(statistics.median(times), 2), "min": round(min(times), 2),
                          "max": round(max(times), 2), "runs": len(times)},
              **result, "model": str(args.model or "tiny (random)"),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version()}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
