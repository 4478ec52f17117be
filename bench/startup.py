"""Seconds from process start to the first 200 on /system_stats, and idle RSS.

    python bench/startup.py [--plugins all] [--runs 3]

For scale, the reference server takes ~6.6 s to its first 200 and ~0.9 GB idle RSS on the
2-core development machine.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(plugins: str, settle: float) -> tuple[float, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as base:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kernel.cli",
                "run",
                "--port",
                str(port),
                "--plugins",
                plugins,
                "--base-directory",
                base,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ),
        )
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.01)
                if proc.poll() is not None:
                    raise SystemExit(f"server exited with {proc.returncode}")
            first_200 = time.perf_counter() - started
            time.sleep(settle)  # let background imports (torch) finish before reading RSS
            rss = psutil.Process(proc.pid).memory_info().rss / 2**20
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return first_200, rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plugins", default="all")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds idle before reading RSS")
    args = ap.parse_args()
    results = [one_run(args.plugins, args.settle) for _ in range(args.runs)]
    times = [r[0] for r in results]
    rss = [r[1] for r in results]
    print(f"plugins={args.plugins} runs={args.runs}")
    print(
        f"first 200 on /system_stats: median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f})"
    )
    print(f"idle RSS after {args.settle:g} s: median {statistics.median(rss):.1f} MiB")


if __name__ == "__main__":
    main()
