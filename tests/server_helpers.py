"""Helpers for the tests that talk to a real ``tsynth serve`` on loopback with the official SDK."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np

from tsynth import SeriesSet
from tsynth.codecs.chat import ChatCodec

LENGTH = 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """``create_app`` served by uvicorn in a thread on a free loopback port (with its worker process)."""

    def __init__(self, data_dir: Path, **options) -> None:
        import uvicorn

        from tsynth.server import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.data_dir = Path(data_dir)
        self.models_dir = options.get("models_dir")
        self.app = create_app(data_dir, **options)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)

    def client(self, api_key: str = "test-key", **kw):
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key=api_key, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def meters(n_items: int = 20, length: int = LENGTH, seed: int = 0) -> SeriesSet:
    """Hourly-looking z-scored consumption of meters MT_001.., each with its own daily phase."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    arrays = [np.sin(2 * np.pi * (t + i) / 24) + 0.1 * rng.normal(size=length) for i in range(n_items)]
    return SeriesSet.from_arrays(arrays, [f"MT_{i + 1:03d}" for i in range(n_items)], ["consumption"])


def write_chat_files(directory: Path, data: SeriesSet) -> tuple[Path, Path]:
    """The recipe's train and validation JSONL files (validation: other items)."""
    train, valid = data.split(0.2, seed=0)
    codec = ChatCodec()
    paths = []
    for name, part in (("train.jsonl", train), ("validation.jsonl", valid)):
        p = directory / name
        p.write_text("".join(json.dumps(ex) + "\n" for ex in codec.examples(part)))
        paths.append(p)
    return paths[0], paths[1]


def wait_for_job(client, job_id: str, timeout: float = 120, until=("succeeded", "failed", "cancelled")):
    """Poll a job until its status is one of ``until``."""
    deadline = time.time() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        if time.time() > deadline:
            raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
        time.sleep(0.2)


def worker_pids(parent: int | None = None) -> list[int]:
    """The live ``tsynth serve`` worker processes among the children of ``parent`` (default: this process)."""
    parent = parent or os.getpid()
    kids = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        try:
            kids += (task / "children").read_text().split()
        except OSError:  # the thread ended meanwhile
            pass
    pids = []
    for pid in kids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()  # empty for a zombie
        except OSError:
            continue
        if b"tsynth.server.worker" in cmdline:
            pids.append(int(pid))
    return pids


def kill_worker(parent: int | None = None, timeout: float = 60, server=None) -> int:
    """SIGKILL the (one) worker process of the server in ``parent``, waiting for it to be up; its pid. With an
    in-process ``server`` (a ThreadServer), its own worker: this process may hold other servers' workers too."""
    deadline = time.time() + timeout
    if server is not None:
        while (proc := server.app.state.workers.procs[0]).poll() is not None:
            if time.time() > deadline:
                raise TimeoutError("no worker process to kill")
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        return proc.pid
    while not (pids := worker_pids(parent)):
        if time.time() > deadline:
            raise TimeoutError("no worker process to kill")
        time.sleep(0.1)
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


def wait_for_event(client, job_id: str, predicate, timeout: float = 120):
    """Poll a job's events (newest first) until one satisfies ``predicate``; return it."""
    deadline = time.time() + timeout
    while True:
        for event in client.fine_tuning.jobs.list_events(job_id, limit=100).data:
            if predicate(event):
                return event
        if time.time() > deadline:
            raise TimeoutError(f"job {job_id}: no such event after {timeout} s")
        time.sleep(0.1)
