"""Load on ``tsynth serve``: 50 concurrent chat completions against a fine-tuned model on loopback.

Starts ``tsynth serve`` in its own process on a free port with a fresh data directory, fine-tunes
``tsynth-tiny`` through the API on 40 synthetic meters of 100 hourly values (the recipe's length,
3 epochs), warms the model up with one completion, then fires 50 requests at once with the recipe's
sampling call (``temperature=1.1``, one meter id per request) from ``AsyncOpenAI``. Every answer must
parse as a 100-value series. Writes throughput and latency percentiles to
``benchmarks/results/server_load.json``.

    python benchmarks/bench_server.py [--requests 50]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from openai import APIConnectionError, AsyncOpenAI, OpenAI

from tsynth import SeriesSet
from tsynth.codecs.chat import DEFAULT_SYSTEM_PROMPT, ChatCodec
from tsynth.data import atomic_write

LENGTH, N_METERS, EPOCHS = 100, 40, 3
OUT = Path(__file__).parent / "results" / "server_load.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_file(directory: Path) -> Path:
    """The recipe's chat format for N_METERS daily-profile meters."""
    rng = np.random.default_rng(0)
    t = np.arange(LENGTH)
    arrays = [np.sin(2 * np.pi * (t + 3 * i) / 24) + 0.2 * rng.normal(size=LENGTH) for i in range(N_METERS)]
    data = SeriesSet.from_arrays(arrays, [f"MT_{i + 1:03d}" for i in range(N_METERS)], ["consumption"])
    path = directory / "train.jsonl"
    path.write_text("".join(json.dumps(ex) + "\n" for ex in ChatCodec().examples(data)))
    return path


def fine_tune(client: OpenAI, path: Path) -> str:
    file_id = client.files.create(file=path, purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model="tsynth-tiny", training_file=file_id, hyperparameters={"n_epochs": EPOCHS})
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status != "succeeded":
        raise SystemExit(f"fine-tuning {job.status}: {job.error}")
    return job.fine_tuned_model


async def load(base_url: str, model: str, n: int) -> tuple[list[float], list[str], float]:
    """Fire ``n`` completions at once; per-request latencies, answers, wall time."""
    client = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=300)

    async def one(i: int) -> tuple[float, str]:
        t0 = time.perf_counter()
        r = await client.chat.completions.create(model=model, temperature=1.1, messages=[
            {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": json.dumps({"item_id": f"MT_{i % N_METERS + 1:03d}"})}])
        return time.perf_counter() - t0, r.choices[0].message.content

    t0 = time.perf_counter()
    done = await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    await client.close()
    return [d[0] for d in done], [d[1] for d in done], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        base_url = f"http://127.0.0.1:{port}/v1"
        log = open(Path(tmp) / "server.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "tsynth.cli", "serve", "--port", str(port), "--data-dir",
                                   str(Path(tmp) / "data")], stdout=log, stderr=subprocess.STDOUT)
        try:
            client = OpenAI(base_url=base_url, api_key="bench", max_retries=0)
            deadline = time.time() + 60
            while True:
                try:
                    client.models.list()
                    break
                except APIConnectionError:
                    if time.time() > deadline or server.poll() is not None:
                        raise SystemExit(f"the server did not start; see {log.name}")
                    time.sleep(0.2)
            t0 = time.perf_counter()
            model = fine_tune(client, training_file(Path(tmp)))
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "{}"}])
            warm_s = time.perf_counter() - t0
            latencies, answers, wall = asyncio.run(load(base_url, model, args.requests))
        finally:
            server.terminate()
            server.wait(30)
            log.close()
    codec = ChatCodec(length=LENGTH)
    valid = sum(codec.parse(a).shape == (LENGTH, 1) for a in answers)
    lat = np.asarray(latencies)
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_server.py",
        "requests": args.requests, "concurrent": args.requests, "succeeded": len(answers), "valid_series": int(valid),
        "series_length": LENGTH, "model": "tsynth-tiny fine-tuned via the API "
                                          f"({N_METERS} meters, {EPOCHS} epochs, {fit_s:.1f} s)",
        "first_completion_s": round(warm_s, 3),
        "wall_s": round(wall, 3), "throughput_rps": round(args.requests / wall, 2),
        "latency_s": {"mean": round(float(lat.mean()), 3),
                      **{f"p{q}": round(float(np.percentile(lat, q)), 3) for q in (50, 90, 95, 99)},
                      "max": round(float(lat.max()), 3)},
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version()},
    }
    atomic_write(OUT, lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    print(json.dumps(result, indent=2))
    if valid != args.requests:
        raise SystemExit(f"only {valid} of {args.requests} answers were valid series")


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
