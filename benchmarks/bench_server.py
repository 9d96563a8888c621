"""Load and faults on ``tsynth serve``, over real HTTP on loopback with the official ``openai`` SDK.

Load (the default): starts ``tsynth serve`` in its own process on a free port with a fresh data
directory, fine-tunes ``tsynth-tiny`` through the API on 40 synthetic meters of 100 hourly values (the
recipe's length, 3 epochs), warms the model up with one completion, then fires 50 requests at once with
the recipe's sampling call (``temperature=1.1``, one meter id per request) from ``AsyncOpenAI``. Every
answer must parse as a 100-value series. Writes throughput and latency percentiles to
``benchmarks/results/server_load.json``.

Faults (``--faults``): one server (``tsynth serve --max-storage``) and its data directory go through
four faults in turn, each with jobs in flight: the worker process is killed (SIGKILL) mid-job; the server
is killed (SIGKILL) mid-upload and started again; the operator's storage quota is filled by uploads; 50
completions arrive at once while a job trains. Every job created must end ``succeeded``, or ``failed``
with the code the fault calls for (none is lost or left running); no half-stored upload may remain; the
server must answer throughout (but while it is down). Writes requests served, errors, jobs lost and
latency percentiles to ``benchmarks/results/server_faults.json``.

    python -m benchmarks.bench_server [--requests 50]
    python -m benchmarks.bench_server --faults
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
import threading
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


def training_file(directory: Path, length: int = LENGTH) -> Path:
    """The recipe's chat format for N_METERS daily-profile meters of ``length`` hourly values."""
    rng = np.random.default_rng(0)
    t = np.arange(length)
    arrays = [np.sin(2 * np.pi * (t + 3 * i) / 24) + 0.2 * rng.normal(size=length) for i in range(N_METERS)]
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
    ap.add_argument("--faults", action="store_true", help="run the fault suite instead of the load benchmark")
    args = ap.parse_args()
    if args.faults:
        faults(args.requests)
        return
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


# ---------------------------------------------------------------------- faults
FAULTS_OUT = Path(__file__).parent / "results" / "server_faults.json"
FAULT_LENGTH = 24  # hourly values per series (one day): the faults need jobs in flight, not long series
QUOTA_ROOM = 3 << 20  # bytes the storage quota leaves free when the server restarts
PIECE = 256 << 10  # bytes per upload piece (the slow upload and the quota's uploads)
TERMINAL = ("succeeded", "failed", "cancelled")


class Ledger:
    """Every API call of the suite: what, how long, and whether it ended as it should."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.jobs: dict[str, str] = {}  # job id -> the end it must reach: "succeeded" or a failure code

    def call(self, what: str, fn, *args, expect: tuple[str, ...] = (), **kw):
        """``fn(*args, **kw)``; an API error whose code is in ``expect`` is a refusal the fault calls for.
        Returns the result or the exception."""
        import openai

        t0 = time.perf_counter()
        try:
            out = fn(*args, **kw)
            self.calls.append({"what": what, "seconds": time.perf_counter() - t0, "ok": True})
            return out
        except openai.APIStatusError as e:
            self.calls.append({"what": what, "seconds": time.perf_counter() - t0, "ok": e.code in expect,
                               "expected": e.code in expect, "status": e.status_code, "code": e.code})
            return e
        except openai.APIConnectionError as e:
            self.calls.append({"what": what, "seconds": time.perf_counter() - t0, "ok": False, "code": "connection"})
            return e

    def job(self, client, expect: str = "succeeded", **kw):
        job = self.call("create job", client.fine_tuning.jobs.create, **kw)
        self.jobs[job.id] = expect
        return job


class FaultServer:
    """``tsynth serve`` in its own process, started and killed at will on one port and data directory."""

    def __init__(self, port: int, data_dir: Path, log) -> None:
        self.port, self.data_dir, self.log, self.proc = port, data_dir, log, None

    def start(self, client, max_storage: int | None = None) -> None:
        cmd = [sys.executable, "-m", "tsynth.cli", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        if max_storage:
            cmd += ["--max-storage", str(max_storage)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 90
        while True:
            try:
                client.models.list()
                return
            except APIConnectionError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"the server did not start; see {self.log.name}")
                time.sleep(0.2)

    def worker_pid(self, timeout: float = 90) -> int:
        """The live worker process of this server (it may be starting again)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                for pid in (task / "children").read_text().split():
                    try:
                        if b"tsynth.server.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                            return int(pid)
                    except OSError:
                        pass
            time.sleep(0.1)
        raise SystemExit("the server has no worker process")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def _wait(client, job_id: str, timeout: float = 600):
    deadline = time.time() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in TERMINAL or time.time() > deadline:
            return job
        time.sleep(0.3)


def _wait_metrics(client, job_id: str, newer_than: str | None = None, timeout: float = 300) -> None:
    """Wait for a metrics event of the job (newer than event ``newer_than``, when given)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data  # newest first
        ids = [e.id for e in events]
        recent = events[: ids.index(newer_than)] if newer_than in ids else events
        if any(e.type == "metrics" for e in recent):
            return
        time.sleep(0.2)
    raise SystemExit(f"job {job_id} trained no epoch in {timeout} s")


def _slow_upload(url: str, size: int, sent: list, result: dict) -> None:
    """Upload ``size`` bytes as a fine-tuning file, a piece every 0.1 s (chunked), counting pieces in ``sent``."""
    import httpx2

    boundary = "tsynthfaults"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    line = (json.dumps({"x": "y" * 1000}) + "\n").encode()

    def body():
        yield head
        for _ in range(size // PIECE):
            yield line * (PIECE // len(line))
            sent.append(1)
            time.sleep(0.1)
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        r = httpx2.post(url + "/files", content=body(), timeout=120,
                        headers={"content-type": f"multipart/form-data; boundary={boundary}",
                                 "authorization": "Bearer faults"})
        result["status"] = r.status_code
    except httpx2.HTTPError as e:
        result["error"] = type(e).__name__


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _percentiles(seconds: list[float]) -> dict:
    lat = np.asarray(seconds) if seconds else np.zeros(1)
    return {"p50": round(float(np.percentile(lat, 50)), 3), "p95": round(float(np.percentile(lat, 95)), 3),
            "max": round(float(lat.max()), 3), "n": len(seconds)}


def faults(n_requests: int) -> None:
    """The fault suite (see the module docstring)."""
    ledger, report = Ledger(), {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir, port = tmp / "data", free_port()
        base_url = f"http://127.0.0.1:{port}/v1"
        client = OpenAI(base_url=base_url, api_key="faults", max_retries=0, timeout=120)
        log = open(tmp / "server.log", "w")
        server = FaultServer(port, data_dir, log)
        server.start(client)
        try:
            train = training_file(tmp, FAULT_LENGTH)
            file_id = ledger.call("upload", client.files.create, file=train, purpose="fine-tune").id
            first = _wait(client, ledger.job(client, model="tsynth-tiny", training_file=file_id,
                                             hyperparameters={"n_epochs": 3}).id)
            model = first.fine_tuned_model

            def ask(what: str, **kw):
                return ledger.call(what, client.chat.completions.create, model=model, temperature=1.1, messages=[
                    {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                    {"role": "user", "content": json.dumps({"item_id": "MT_001"})}], **kw)

            long_job = {"model": "tsynth-tiny", "training_file": file_id,
                        "hyperparameters": {"n_epochs": 25, "batch_size": 4}}

            # 1. the worker killed mid-job: restarted, the job resumes from its checkpoint
            job = ledger.job(client, **long_job)
            _wait_metrics(client, job.id)
            victim, t_kill = server.worker_pid(), time.time()
            os.kill(victim, 9)
            job = _wait(client, job.id)
            events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
            report["worker_killed_mid_job"] = {
                "job": job.status, "resumed": any("resumes from" in e.message for e in events),
                "worker_restarted": server.worker_pid() != victim, "job_seconds_after_kill": round(time.time() - t_kill, 1),
                "completion_after": not isinstance(ask("completion after the worker fault"), Exception)}

            # 2. the server killed mid-upload, with a job running: started again, nothing half-stored, job resumes
            job = ledger.job(client, **long_job)
            _wait_metrics(client, job.id)
            files_before = {f.id for f in client.files.list()}
            sent, result = [], {}
            upload = threading.Thread(target=_slow_upload, args=(base_url, 64 << 20, sent, result))
            upload.start()
            while len(sent) < 8 and upload.is_alive():
                time.sleep(0.05)
            server.kill()
            upload.join(60)
            ledger.calls.append({"what": "upload cut by the server's death", "seconds": 0.0, "ok": True,
                                 "expected": True, "code": result.get("error", result.get("status"))})
            leftovers_at_kill = sorted(p.name for p in (data_dir / "files").glob(".*"))
            quota = _dir_bytes(data_dir) + QUOTA_ROOM
            server.start(client, max_storage=quota)
            files_after = {f.id for f in ledger.call("list files", client.files.list)}
            job = _wait(client, job.id)
            report["server_killed_mid_upload"] = {
                "bytes_sent_before_kill": len(sent) * PIECE, "upload_client_saw": result,
                "files_listed_unchanged": files_after == files_before,
                "partial_files_at_kill": leftovers_at_kill,
                "partial_files_after_restart": sorted(p.name for p in (data_dir / "files").glob(".*")),
                "running_job": job.status,
                "completion_after_restart": not isinstance(ask("completion after the restart"), Exception)}

            # 3. the storage quota filled by uploads: refused with 413 storage_quota_exceeded, room again once freed
            piece = tmp / "piece.jsonl"
            piece.write_bytes((json.dumps({"x": "y" * 1000}) + "\n").encode() * (PIECE // 1012))
            accepted, refusal = [], None
            for _ in range(4 * QUOTA_ROOM // PIECE):
                out = ledger.call("upload toward the quota", client.files.create, file=piece, purpose="fine-tune",
                                  expect=("storage_quota_exceeded",))
                if isinstance(out, Exception):
                    refusal = out
                    break
                accepted.append(out.id)
            served = not isinstance(ask("completion at a full quota"), Exception)
            job = ledger.job(client, **{**long_job, "hyperparameters": {"n_epochs": 2}})
            job = _wait(client, job.id)
            for fid in accepted:
                ledger.call("delete file", client.files.delete, fid)
            again = ledger.call("upload after freeing room", client.files.create, file=piece, purpose="fine-tune")
            report["quota_filled"] = {
                "quota_bytes": quota, "uploads_accepted": len(accepted),
                "refusal": None if refusal is None else {"status": refusal.status_code, "code": refusal.code,
                                                         "message": refusal.message},
                "partial_files": sorted(p.name for p in (data_dir / "files").glob(".*")),
                "completion_at_full_quota": served, "job_at_full_quota": job.status,
                "upload_after_freeing_room": not isinstance(again, Exception)}

            # 4. n_requests completions at once while a job trains
            job = ledger.job(client, **{**long_job, "hyperparameters": {"n_epochs": 15, "batch_size": 4}})
            _wait_metrics(client, job.id)
            latencies, answers, wall = asyncio.run(load(base_url, model, n_requests))
            for s in latencies:
                ledger.calls.append({"what": "concurrent completion", "seconds": s, "ok": True})
            codec = ChatCodec(length=FAULT_LENGTH)
            job = _wait(client, job.id)
            report["concurrent_completions_while_training"] = {
                "requests": n_requests, "answered": len(answers), "wall_s": round(wall, 2),
                "valid_series": int(sum(codec.parse(a).shape == (FAULT_LENGTH, 1) for a in answers)),
                "latency_s": _percentiles(latencies), "job": job.status}

            jobs = {j.id: j for j in client.fine_tuning.jobs.list(limit=100)}  # every page
        finally:
            server.stop()
            log.close()
    lost = [jid for jid, want in ledger.jobs.items() if jid not in jobs or jobs[jid].status not in TERMINAL
            or (jobs[jid].status if want == "succeeded" else (jobs[jid].error.code if jobs[jid].error else None)) != want]
    errors = [c for c in ledger.calls if not c["ok"]]
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python -m benchmarks.bench_server --faults",
        "requests_served": sum(c["ok"] and not c.get("expected") for c in ledger.calls),
        "refused_as_the_fault_calls_for": sum(bool(c.get("expected")) for c in ledger.calls),
        "errors": len(errors), "error_details": errors[:10],
        "jobs": {"created": len(ledger.jobs), "lost": len(lost), "lost_ids": lost,
                 "ended": {s: sum(j.status == s for j in jobs.values()) for s in TERMINAL}},
        "latency_s": _percentiles([c["seconds"] for c in ledger.calls if c["ok"] and not c.get("expected")]),
        "faults": report, "seconds": round(time.perf_counter() - t_start, 1),
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version()},
    }
    atomic_write(FAULTS_OUT, lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    print(json.dumps(result, indent=2))
    if lost or errors:
        raise SystemExit(f"{len(lost)} job(s) lost, {len(errors)} error(s)")


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
