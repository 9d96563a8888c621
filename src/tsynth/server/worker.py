"""Fine-tuning jobs of ``tsynth serve``: file validation, and training in a worker process.

Life of a job (OpenAI's states): ``validating_files`` (the API process reads the files with the chat
codec, in a thread) -> ``queued`` -> ``running`` (a worker process, one job at a time, trains the
local backend on the series and conditions of the training file) -> ``succeeded`` | ``failed`` |
``cancelled``. Each epoch end writes a metrics event and a weights snapshot (the last
:data:`KEEP_CHECKPOINTS` become ``ft:...:ckpt-step-N`` models); cancelling stops the run at the next
epoch end.

Restart policy: a job that was ``running`` when the server stopped (or was killed) is queued again
at the next start and **resumes from its last epoch checkpoint** (``resume=True``), with a ``warn``
event saying so; a job still ``validating_files`` is validated again. Nothing else is touched.

The worker is a ``python`` process running :func:`main` with its stdin connected to the server:
when the server dies, stdin reaches end-of-file and the worker exits at once, so no orphan keeps
training; a lock file per worker slot keeps a new worker from starting before the old one is gone.
It trains on one torch thread by default: on a small CPU shared with other work that is several
times faster than torch's default of a thread per core.

Base models: ``tsynth-tiny``, ``tsynth-small``, ``tsynth-base`` are the local backend's presets;
an OpenAI model name (``gpt-4o-mini-2024-07-18``, ``gpt-3.5-turbo``, ``davinci-002``...) is accepted
and trained as :data:`DEFAULT_PRESET`. A local Hugging Face model directory, a ``.gguf`` file or a hub
id (``org/name``) is fine-tuned with LoRA by the pretrained backend, in the training file's chat format
(system prompt, user fields, series key, decimals); a checkpoint snapshot then holds the adapter weights
only. Hyperparameters: ``n_epochs`` -> epochs ("auto": OpenAI's cookbook rule -- 3, more for small
files, fewer for huge ones -- capped at :data:`AUTO_EPOCH_CAP` for CPU training); ``batch_size`` ->
batch size ("auto": the backend's default, at most the number of examples);
``learning_rate_multiplier`` multiplies the backend's default learning rate ("auto": 1). Both backends
keep their best epoch by the loss on a validation split of the *training* items; a job's
``validation_file`` is checked like the training file but does not take part in training.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..backends.openai import cookbook_epochs
from ..codecs.chat import ChatCodec, chat_tokens
from ..errors import ConfigError, DataError
from .store import Store, new_id, now

log = logging.getLogger("tsynth.server")

BASE_MODELS = {"tsynth-tiny": "tiny", "tsynth-small": "small", "tsynth-base": "base"}
DEFAULT_PRESET = "tiny"
OPENAI_MODEL_PREFIXES = ("gpt-", "babbage-", "davinci-", "o1", "o3", "o4")
AUTO_EPOCH_CAP = 10
MIN_EXAMPLES = 10
KEEP_CHECKPOINTS = 3
POLL_SECONDS = 0.3
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class Cancelled(Exception):
    """Raised from the training callback when the job was cancelled."""


def preset_for(model: str) -> str | None:
    """The local preset a base model name trains, or None when the name is not a base model."""
    if model in BASE_MODELS:
        return BASE_MODELS[model]
    return DEFAULT_PRESET if model.startswith(OPENAI_MODEL_PREFIXES) else None


def can_fine_tune(model: str) -> bool:
    """Whether ``model`` is a base model: a preset or OpenAI name, or a pretrained model (a local model
    directory, a ``.gguf`` file or a Hugging Face hub id)."""
    if preset_for(model) is not None or HUB_ID.fullmatch(model):
        return True
    path = Path(model)
    return bool(model) and (path.is_dir() or (path.suffix == ".gguf" and path.is_file()))


@dataclass
class Plan:
    """How a job trains: backend and options, default batch size and learning rate, and which weights a
    checkpoint snapshot keeps (None: all)."""

    backend: str
    options: dict[str, Any]
    batch_size: int
    learning_rate: float
    snapshot_keeps: Callable[[str], bool] | None = None


def plan_for(model: str, codec: ChatCodec) -> Plan:
    """The plan for base model ``model`` on a training file read as ``codec`` (see the module docstring)."""
    preset = preset_for(model)
    if preset is not None:
        from ..train import TrainConfig

        # one model per job (no ensemble): its epochs, steps and checkpoints are the job's, as OpenAI shapes them
        return Plan("local", {"preset": preset, "conditions": list(codec.user_fields), "ensemble": 1},
                    TrainConfig.batch_size, TrainConfig.learning_rate)
    from ..backends.pretrained import TRAIN_DEFAULTS, adapter_weight

    options = {"base_model": model, "system_prompt": codec.system_prompt, "user_fields": list(codec.user_fields),
               "series_key": codec.series_key, "decimals": codec.decimals}
    return Plan("pretrained", options, int(TRAIN_DEFAULTS["batch_size"]), TRAIN_DEFAULTS["learning_rate"], adapter_weight)


def resolve_hyperparameters(hp: dict[str, Any], n_examples: int, default_batch: int) -> dict[str, Any]:
    """Numbers for every "auto" hyperparameter (see the module docstring)."""
    epochs = hp.get("n_epochs", "auto")
    if epochs == "auto":
        epochs = min(cookbook_epochs(n_examples), AUTO_EPOCH_CAP)
    batch = hp.get("batch_size", "auto")
    lr = hp.get("learning_rate_multiplier", "auto")
    return {"n_epochs": int(epochs),
            "batch_size": min(default_batch, n_examples) if batch == "auto" else int(batch),
            "learning_rate_multiplier": 1.0 if lr == "auto" else float(lr)}


def read_chat_file(store: Store, file_id: str, source: str) -> tuple[ChatCodec, list[dict], Any]:
    """The codec, conditions and series of an uploaded chat-format JSONL file."""
    path = store.file_path(file_id)
    if store.file(file_id) is None or not path.exists():
        raise DataError(f"{source} {file_id} no longer exists")
    with open(path, encoding="utf-8-sig") as fh:
        return ChatCodec.from_examples(fh, source=f"{source} {file_id}")


# ---------------------------------------------------------------------- validation (API process)
def validate_job(store: Store, job_id: str) -> None:
    """Check the job's files; move it to ``queued``, or fail it with OpenAI's error shape."""
    job = store.job(job_id)
    if job is None or job["status"] != "validating_files":
        return
    tf, vf = job["training_file"], job["validation_file"]
    store.add_event(job_id, f"Validating training file: {tf}" + (f" and validation file: {vf}" if vf else ""))
    keys = None
    for param, fid in (("training_file", tf), ("validation_file", vf)):
        if fid is None:
            continue
        try:
            codec, _, series = read_chat_file(store, fid, param.replace("_", " "))
            if param == "training_file" and len(series) < MIN_EXAMPLES:
                raise DataError(f"Training file has {len(series)} example(s), but must have at least {MIN_EXAMPLES} examples")
            if keys is not None and codec.keys != keys:
                raise DataError(f"validation file {fid}: the assistant turns hold {codec.keys}, the training file {keys}")
            keys = codec.keys
        except (DataError, UnicodeDecodeError) as e:
            fail_job(store, job_id, f"invalid_{param}", str(e), param)
            return
    if store.update_job(job_id, only_if=("validating_files",), status="queued"):
        store.add_event(job_id, "Files validated, moving job to queued state")


def fail_job(store: Store, job_id: str, code: str, message: str, param: str | None = None) -> None:
    """Mark a job failed (unless it already ended) with an error-level event."""
    if store.update_job(job_id, only_if=("validating_files", "queued", "running"), status="failed",
                        finished_at=now(), estimated_finish=None,
                        error={"code": code, "message": message, "param": param}):
        store.add_event(job_id, message, level="error")


def recover(store: Store) -> list[str]:
    """After a restart: queue interrupted jobs again (they resume from their last checkpoint); return
    the ids of jobs whose file validation must run again."""
    for job in store.jobs_with_status("running"):
        snaps = sorted(_snapshots(store.jobs_dir / job["id"]))
        where = f"its last checkpoint (step {snaps[-1][0]})" if snaps else "the start (no checkpoint was written yet)"
        store.update_job(job["id"], only_if=("running",), status="queued", estimated_finish=None)
        store.add_event(job["id"], f"The server restarted while this job was running; it resumes from {where}",
                        level="warn")
    return [j["id"] for j in store.jobs_with_status("validating_files")]


# ---------------------------------------------------------------------- training (worker process)
def run_job(store: Store, job: dict[str, Any]) -> None:
    """Train one claimed job to its end state."""
    from ..synthesizer import Synthesizer

    job_id = job["id"]
    job_dir = store.jobs_dir / job_id
    try:
        codec, _, series = read_chat_file(store, job["training_file"], "training file")
    except (DataError, UnicodeDecodeError) as e:
        fail_job(store, job_id, "invalid_training_file", str(e), "training_file")
        return
    plan = plan_for(job["model"], codec)
    hp = resolve_hyperparameters(job["hyperparameters"], len(series), plan.batch_size)
    updated = store.update_job(job_id, only_if=("running",), hyperparameters=hp,
                               method={"type": "supervised", "supervised": {"hyperparameters": hp}})
    if updated is None:
        return
    job = updated
    store.add_event(job_id, "Fine-tuning job started")
    syn = Synthesizer(plan.backend, **plan.options, epochs=hp["n_epochs"], batch_size=hp["batch_size"],
                      learning_rate=plan.learning_rate * hp["learning_rate_multiplier"], seed=job["seed"])
    tokens_per_epoch = sum(chat_tokens(m["messages"]) for m in codec.examples(series))
    progress = _Progress(store, job_id, job_dir, hp["n_epochs"], plan.snapshot_keeps)
    try:
        syn.fit(series, callback=progress, checkpoint_dir=job_dir / "train", resume=True, progress=False)
        epochs_run = syn.info["training"]["members"][0]["epochs_run"]
        _finish(store, job, syn, codec, series.length, job_dir, tokens_per_epoch * epochs_run)
    except Cancelled:
        pass
    except ConfigError as e:  # the base model cannot be loaded or used (not found, offline, no chat template)
        fail_job(store, job_id, "model_not_available", f"Training failed: {e}", "model")
    except DataError as e:  # the series do not fit the model (e.g. conversations longer than its context)
        fail_job(store, job_id, "invalid_training_file", f"Training failed: {e}", "training_file")
    except Exception as e:  # noqa: BLE001 -- any training failure ends the job, with its reason
        log.exception("job %s failed", job_id)
        fail_job(store, job_id, "server_error", f"Training failed: {type(e).__name__}: {e}")
    shutil.rmtree(job_dir / "train", ignore_errors=True)  # resumable state: only needed while the job runs


class _Progress:
    """The training callback: metrics event, weights snapshot (the weights ``keeps`` selects; None: all),
    cancellation check per epoch."""

    def __init__(self, store: Store, job_id: str, job_dir: Path, epochs: int,
                 keeps: Callable[[str], bool] | None) -> None:
        self.store, self.job_id, self.snap_dir, self.epochs = store, job_id, job_dir / "snapshots", epochs
        self.keeps = keeps
        self.t0, self.first_epoch = time.time(), None

    def __call__(self, ev: dict[str, Any]) -> None:
        job = self.store.job(self.job_id)
        if job is None or job["status"] != "running":
            raise Cancelled
        epoch, step = ev["epoch"], ev["step"]
        self.first_epoch = self.first_epoch or epoch
        total = step // epoch * self.epochs
        data = {"step": step, "train_loss": ev["train_loss"], "total_steps": total}
        msg = f"Step {step}/{total}: training loss={ev['train_loss']:.2f}"
        if ev.get("valid_loss") is not None:
            data["valid_loss"] = ev["valid_loss"]
            msg += f", validation loss={ev['valid_loss']:.2f}"
        self.store.add_event(self.job_id, msg, type_="metrics", data=data)
        if ev.get("checkpoint"):
            self.snap_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.snap_dir / f".step-{step}.tmp"
            self._snapshot(Path(ev["checkpoint"]) / "model.safetensors", tmp)
            os.replace(tmp, self.snap_dir / f"step-{step}.safetensors")
            for _, old in sorted(_snapshots(self.snap_dir.parent))[:-KEEP_CHECKPOINTS]:
                old.unlink()
        per_epoch = (time.time() - self.t0) / (epoch - self.first_epoch + 1)
        self.store.update_job(self.job_id, only_if=("running",),
                              estimated_finish=int(time.time() + per_epoch * (self.epochs - epoch)))

    def _snapshot(self, weights: Path, dest: Path) -> None:
        """Copy the epoch's weights (only those ``keeps`` selects, where given) to ``dest``."""
        if self.keeps is None:
            shutil.copyfile(weights, dest)
            return
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(weights, "pt") as f:
            save_file({k: f.get_tensor(k) for k in f.keys() if self.keeps(k)}, dest)


def _snapshots(job_dir: Path) -> list[tuple[int, Path]]:
    return [(int(p.stem.split("-")[1]), p) for p in (job_dir / "snapshots").glob("step-*.safetensors")]


def _finish(store: Store, job: dict[str, Any], syn, codec: ChatCodec, max_length: int, job_dir: Path,
            trained_tokens: int) -> None:
    """Save the model, register it and its checkpoints, write the result file, mark the job succeeded."""
    job_id, suffix = job["id"], job.get("user_provided_suffix") or ""
    base = Path(job["model"]).name.removesuffix(".gguf")  # a model directory or hub id: its last part
    model_dir = syn.save(store.models_dir / job_id)
    info = {"path": str(model_dir.relative_to(store.root)), "weights": None, "codec": codec.to_dict(),
            "max_length": max_length}
    name = f"ft:{base}:tsynth:{suffix}:{new_id('', 8)}"
    metrics = {m["step"]: m for m in store.metrics(job_id)}
    registered = []
    for step, path in sorted(_snapshots(job_dir)):
        ckpt_name = f"ft:{base}:tsynth:{suffix}:{new_id('', 8)}:ckpt-step-{step}"
        store.add_model(_model_doc(ckpt_name), job_id, {**info, "weights": str(path.relative_to(store.root))})
        store.add_checkpoint({"object": "fine_tuning.job.checkpoint", "id": new_id("ftckpt_"), "created_at": now(),
                              "fine_tuned_model_checkpoint": ckpt_name, "fine_tuning_job_id": job_id,
                              "step_number": step, "metrics": _checkpoint_metrics(metrics.get(step, {"step": step}))})
        store.add_event(job_id, f"Checkpoint created at step {step} with Snapshot ID: {ckpt_name}")
        registered.append(ckpt_name)
    store.add_model(_model_doc(name), job_id, info)
    registered.append(name)
    result = _result_file(store, job_id, list(metrics.values()))
    done = store.update_job(job_id, only_if=("running",), status="succeeded", fine_tuned_model=name,
                            finished_at=now(), estimated_finish=None, trained_tokens=trained_tokens,
                            result_files=[result["id"]])
    if done is None:  # cancelled while saving: the model does not come into being
        for m in registered:
            store.delete_model(m)
        return
    store.add_event(job_id, f"New fine-tuned model created: {name}")
    store.add_event(job_id, "The job has successfully completed")


def _model_doc(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": now(), "owned_by": "org-tsynth"}


def _checkpoint_metrics(m: dict[str, Any]) -> dict[str, Any]:
    out = {"step": float(m["step"])}
    for k in ("train_loss", "valid_loss"):
        if m.get(k) is not None:
            out[k] = m[k]
    return out


def _result_file(store: Store, job_id: str, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """``step_metrics.csv`` (one row per epoch end) as a ``fine-tune-results`` file."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"])
    for m in metrics:
        w.writerow([m["step"], f"{m['train_loss']:.5f}", "",
                    "" if m.get("valid_loss") is None else f"{m['valid_loss']:.5f}", ""])
    content = buf.getvalue().encode()
    doc = {"id": new_id("file-"), "object": "file", "bytes": len(content), "created_at": now(),
           "filename": "step_metrics.csv", "purpose": "fine-tune-results", "status": "processed",
           "status_details": None, "expires_at": None}
    path = store.file_path(str(doc["id"]))
    path.with_suffix(".tmp").write_bytes(content)
    os.replace(path.with_suffix(".tmp"), path)
    return store.add_file(doc)


# ---------------------------------------------------------------------- the process
def start_workers(data_dir: Path, n: int = 1, threads: int = 1) -> list[subprocess.Popen]:
    """Start ``n`` worker processes for the data directory (each trains one job at a time on ``threads``
    torch threads)."""
    code = "import sys; from tsynth.server.worker import main; main(*sys.argv[1:])"
    return [subprocess.Popen([sys.executable, "-c", code, str(data_dir), str(k), str(threads)], stdin=subprocess.PIPE)
            for k in range(n)]


def stop_workers(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
    """Ask the workers to exit (closing their stdin) and wait; a running job resumes at the next start."""
    for p in procs:
        if p.stdin:
            p.stdin.close()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def _exit_when_server_goes() -> None:
    sys.stdin.buffer.read()
    os._exit(0)


def main(data_dir: str, slot: str = "0", threads: str = "1") -> None:
    """Worker loop: claim the oldest queued job, train it, repeat."""
    import fcntl

    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(int(threads))

    logging.basicConfig(level=logging.WARNING, format="tsynth worker: %(message)s")
    logging.getLogger("tsynth").setLevel(logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.ERROR)  # per-epoch checkpoint chatter
    hf_logging.disable_progress_bar()
    threading.Thread(target=_exit_when_server_goes, daemon=True).start()
    store = Store(data_dir)
    lock = open(store.root / f"worker-{slot}.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # waits for a worker of a killed server to be gone
    while True:
        job = store.claim_job()
        if job is None:
            time.sleep(POLL_SECONDS)
            continue
        log.info("training job %s", job["id"])
        run_job(store, job)

