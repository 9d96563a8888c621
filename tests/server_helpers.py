"""Helpers for the tests that talk to a real ``tsynth serve`` on loopback with the official SDK."""

from __future__ import annotations

import json
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
        self.server = uvicorn.Server(uvicorn.Config(create_app(data_dir, **options), host="127.0.0.1",
                                                    port=self.port, log_level="warning"))
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
