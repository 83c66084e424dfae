"""Memory of ``mlflow server`` with and without MLflow 3's job runner (docker/compose.yaml, docker/README.md).

Starts the same server twice (SQLite store in a temp folder, 127.0.0.1, ``--workers 2`` as in compose),
once with ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true`` (MLflow's default) and once with ``false`` (the
compose file's), waits until ``/health`` answers and then ``--settle`` seconds more (the job runner starts
its consumers after the server), and prints the number of processes in the server's tree and their summed
proportional set size (PSS, from /proc/<pid>/smaps_rollup: shared pages counted once across processes),
and the ratio. Linux only. The basic-auth app of the compose file needs Flask-WTF (the image has it, the
project's venv does not), so this runs the default app; the job runner is the same either way.

    .venv/bin/python benchmarks/mlflow_server_memory.py
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _tree(root: int) -> list[int]:
    """``root`` and every process below it (from /proc/<pid>/stat's parent field)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
            children.setdefault(parent, []).append(int(entry.name))
    tree = [root]
    for pid in tree:
        tree.extend(children.get(pid, []))
    return tree


def _pss_mib(pids: list[int]) -> float:
    total_kib = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        total_kib += sum(int(line.split()[1]) for line in lines if line.startswith("Pss:"))
    return total_kib / 1024


def measure(job_execution: bool, settle_s: float, folder: Path) -> tuple[int, float]:
    """(processes, PSS MiB) of one server ``settle_s`` seconds after it answered ``/health``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(job_execution).lower()}
    name = "jobs" if job_execution else "nojobs"
    with open(folder / f"{name}.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
             "--backend-store-uri", f"sqlite:///{folder / name}.db", "--artifacts-destination", str(folder / name)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"mlflow server did not come up: see {folder / name}.log")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                        break
                except OSError:
                    time.sleep(0.5)
            time.sleep(settle_s)
            pids = _tree(server.pid)
            return len(pids), _pss_mib(pids)
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=60.0, help="seconds after /health before measuring")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlflow-mem-") as tmp:
        with_jobs = measure(True, args.settle, Path(tmp))
        without = measure(False, args.settle, Path(tmp))
    print(f"job runner on (MLflow's default): {with_jobs[0]} processes, {with_jobs[1]:.0f} MiB PSS")
    print(f"job runner off (docker/compose.yaml): {without[0]} processes, {without[1]:.0f} MiB PSS")
    print(f"ratio on/off: {with_jobs[1] / without[1]:.1f}x")


if __name__ == "__main__":
    main()
