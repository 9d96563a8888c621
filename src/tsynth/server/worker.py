"""Fine-tuning jobs of ``tsynth serve``: file validation, and training in a worker process.

Life of a job (OpenAI's states): ``validating_files`` (the API process reads the files with the chat
codec, in a thread) -> ``queued`` -> ``running`` (a worker process, one job at a time, trains the
local backend on the series and conditions of the training file) -> ``succeeded`` | ``failed`` |
``cancelled``. Each epoch end writes a metrics event and a weights snapshot (the last
:data:`KEEP_CHECKPOINTS` become ``ft:...:ckpt-step-N`` models); cancelling stops the run at the next
epoch end.

Failures: anything a job raises (while its files are validated or while it trains) ends that job
(``failed``, with the reason in ``error``), never the worker. A worker process that dies anyway
(killed, out of memory, a crash in native code) is started again by the server's supervisor thread,
and the job it was running is queued again to **resume from its last epoch checkpoint**, with a
``warn`` event saying so, unless it has already been started :data:`MAX_ATTEMPTS` times: then it is
failed, so a job that kills its worker is not retried forever. The same holds across restarts: a job
that was ``running`` when the server stopped (or was killed) is queued again at the next start (or
failed, past :data:`MAX_ATTEMPTS`); a job still ``validating_files`` is validated again; what a killed
process left half-written (an upload, a model directory) is removed.

The worker is a ``python`` process running :func:`main` with its stdin connected to the server:
when the server dies, stdin reaches end-of-file and the worker exits at once, so no orphan keeps
training; a lock file per worker slot keeps a new worker from starting before the old one is gone.
It trains on one torch thread by default: on a small CPU shared with other work that is several
times faster than torch's default of a thread per core.

Base models: ``tsynth-tiny``, ``tsynth-small``, ``tsynth-base`` are the local backend's presets;
an OpenAI model name (``gpt-4o-mini-2024-07-18``, ``gpt-3.5-turbo``, ``davinci-002``...) is accepted
and trained as :data:`DEFAULT_PRESET`. Hugging Face models come only from the operator's allow-list
(:class:`BaseModels`: ``tsynth serve --models-dir DIR`` and ``--base-model NAME_OR_PATH``); they are
fine-tuned with LoRA by the pretrained backend, in the training file's chat format (system prompt,
user fields, series key, decimals); a checkpoint snapshot then holds the adapter weights only.
Hyperparameters: ``n_epochs`` -> epochs ("auto": OpenAI's cookbook rule -- 3, more for small files,
fewer for huge ones -- capped at :data:`AUTO_EPOCH_CAP` for CPU training); ``batch_size`` -> batch size
("auto": the backend's default, at most the number of examples);
``learning_rate_multiplier`` multiplies the backend's default learning rate ("auto": 1). Both backends
keep their best epoch by the loss on a validation split of the *training* items; a job's
``validation_file`` is checked like the training file but does not take part in training.
"""

from __future__ import annotations

import csv
import io
import logging
import os
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
MAX_ATTEMPTS = 2  # starts of one job: the first and one resumption after its worker died
MODEL_FILES = ("config.json",)  # a folder of --models-dir holding one of these is a base model


class Cancelled(Exception):
    """Raised from the training callback when the job was cancelled."""


def preset_for(model: str) -> str | None:
    """The local preset a base model name trains, or None when the name is not a base model."""
    if model in BASE_MODELS:
        return BASE_MODELS[model]
    return DEFAULT_PRESET if model.startswith(OPENAI_MODEL_PREFIXES) else None


class BaseModels:
    """The base models jobs may start from: the presets and OpenAI names (see :func:`preset_for`), and the
    Hugging Face models the operator allows: every model folder (holding a ``config.json``) or ``.gguf`` file
    in ``models_dir``, by its name, and every entry of ``allowed`` (a path or hub id) exactly as written. A
    client names one of these, never a path or hub id of its own: nothing else is looked up on disk or on the
    hub, so a request cannot probe which server paths exist or start a download."""

    def __init__(self, models_dir: str | os.PathLike | None = None, allowed: tuple[str, ...] | list[str] = ()) -> None:
        self.models_dir = Path(models_dir) if models_dir else None
        self.allowed = [a for a in allowed if a]

    def listed(self) -> dict[str, str]:
        """Name -> path or hub id of every model the operator allows (the folder is read on each call, so
        models added to it are available at once)."""
        out = {a: a for a in self.allowed}
        if self.models_dir is not None and self.models_dir.is_dir():
            for entry in sorted(self.models_dir.iterdir()):
                if (entry.is_dir() and any((entry / f).is_file() for f in MODEL_FILES)) or \
                        (entry.suffix == ".gguf" and entry.is_file()):
                    out.setdefault(entry.name, str(entry.resolve()))
        return out

    def source(self, model: str) -> str | None:
        """Where an operator-allowed model lives (None: not one of them)."""
        return self.listed().get(model)

    def allows(self, model: str) -> bool:
        return preset_for(model) is not None or self.source(model) is not None


@dataclass
class Plan:
    """How a job trains: backend and options, default batch size and learning rate, and which weights a
    checkpoint snapshot keeps (None: all)."""

    backend: str
    options: dict[str, Any]
    batch_size: int
    learning_rate: float
    snapshot_keeps: Callable[[str], bool] | None = None


def plan_for(model: str, codec: ChatCodec, base: str | None = None) -> Plan:
    """The plan for base model ``model`` (living at ``base``, for an operator-allowed Hugging Face model) on a
    training file read as ``codec`` (see the module docstring)."""
    preset = preset_for(model)
    if preset is not None:
        from ..train import TrainConfig

        # one model per job (no ensemble): its epochs, steps and checkpoints are the job's, as OpenAI shapes them
        return Plan("local", {"preset": preset, "conditions": list(codec.user_fields), "ensemble": 1},
                    TrainConfig.batch_size, TrainConfig.learning_rate)
    from ..backends.pretrained import TRAIN_DEFAULTS, adapter_weight

    options = {"base_model": base or model, "system_prompt": codec.system_prompt, "user_fields": list(codec.user_fields),
               "series_key": codec.series_key, "decimals": codec.decimals, "style": codec.style}
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
        except Exception as e:  # noqa: BLE001 -- whatever the file does to the reader ends this job only
            log.exception("validating job %s", job_id)
            fail_job(store, job_id, f"invalid_{param}", f"The {param.replace('_', ' ')} {fid} cannot be read: "
                                                         f"{type(e).__name__}: {e}", param)
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
    """After a restart: remove half-written files, queue interrupted jobs again (they resume from their last
    checkpoint, or fail past MAX_ATTEMPTS); return the ids of jobs whose file validation must run again."""
    store.remove_partial_writes()
    for job in store.jobs_with_status("running"):
        requeue_or_fail(store, job["id"], "The server restarted while this job was running")
    return [j["id"] for j in store.jobs_with_status("validating_files")]


def requeue_or_fail(store: Store, job_id: str, why: str) -> None:
    """A job whose run was cut short (its worker died, the server stopped): queue it again to resume from its
    last checkpoint, or fail it once it has been started MAX_ATTEMPTS times."""
    attempts = store.job_run(job_id)[0]
    if attempts >= MAX_ATTEMPTS:
        fail_job(store, job_id, "server_error", f"{why}, for the {_nth(attempts)} time: the job is not started "
                                                "again (it may be what stops the training process)")
        return
    snaps = sorted(_snapshots(store.jobs_dir / job_id))
    where = f"its last checkpoint (step {snaps[-1][0]})" if snaps else "the start (no checkpoint was written yet)"
    if store.update_job(job_id, only_if=("running",), status="queued", estimated_finish=None):
        store.add_event(job_id, f"{why}; it resumes from {where}", level="warn")


def _nth(k: int) -> str:
    return {1: "first", 2: "second", 3: "third"}.get(k, f"{k}th")


# ---------------------------------------------------------------------- training (worker process)
def run_job(store: Store, job: dict[str, Any], max_storage: int | None = None) -> None:
    """Train one claimed job to its end state; whatever it raises fails the job, not the worker."""
    job_dir = store.jobs_dir / job["id"]
    try:
        if max_storage is not None and store.usage() >= max_storage:
            fail_job(store, job["id"], "storage_quota_exceeded", "The server's storage quota is used up: delete "
                                                               "files or models (or ask the operator for more room)")
            return
        _run_job(store, job, job_dir)
    except Exception as e:  # noqa: BLE001 -- any failure ends the job, with its reason
        log.exception("job %s failed", job["id"])
        fail_job(store, job["id"], "server_error", f"Training failed: {type(e).__name__}: {e}")
    shutil.rmtree(job_dir / "train", ignore_errors=True)  # resumable state: only needed while the job runs


def _run_job(store: Store, job: dict[str, Any], job_dir: Path) -> None:
    from ..synthesizer import Synthesizer

    job_id = job["id"]
    try:
        codec, _, series = read_chat_file(store, job["training_file"], "training file")
    except (DataError, UnicodeDecodeError) as e:
        fail_job(store, job_id, "invalid_training_file", str(e), "training_file")
        return
    plan = plan_for(job["model"], codec, store.job_run(job_id)[2])
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
        if ev.get("type", "epoch") != "epoch":  # only epoch events carry metrics
            return
        epoch, step = ev["epoch"], ev["step"]
        expected = ev.get("expected_epochs", self.epochs)  # what early stopping or the time limit will leave
        self.first_epoch = self.first_epoch or epoch
        total = step // epoch * expected
        data = {"step": step, "train_loss": ev["train_loss"], "total_steps": total}
        msg = f"Step {step}/{total}: training loss={ev['train_loss']:.2f}"
        if ev.get("valid_loss") is not None:
            data["valid_loss"] = ev["valid_loss"]
            msg += f", validation loss={ev['valid_loss']:.2f}"
        # the epoch's snapshot is in place before its metrics event is visible: a server that dies after
        # a client has seen step N resumes from step N, not from the one before
        if ev.get("checkpoint"):
            self.snap_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.snap_dir / f".step-{step}.tmp"
            self._snapshot(Path(ev["checkpoint"]) / "model.safetensors", tmp)
            os.replace(tmp, self.snap_dir / f"step-{step}.safetensors")
            for _, old in sorted(_snapshots(self.snap_dir.parent))[:-KEEP_CHECKPOINTS]:
                old.unlink()
        self.store.add_event(self.job_id, msg, type_="metrics", data=data)
        per_epoch = (time.time() - self.t0) / (epoch - self.first_epoch + 1)
        self.store.update_job(self.job_id, only_if=("running",),
                              estimated_finish=int(time.time() + per_epoch * max(expected - epoch, 0)))

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
def start_worker(data_dir: Path, slot: int, threads: int = 1, max_storage: int | None = None) -> subprocess.Popen:
    """Start the worker process of slot ``slot`` (it trains one job at a time on ``threads`` torch threads)."""
    code = "import sys; from tsynth.server.worker import main; main(*sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, str(data_dir), str(slot), str(threads), str(max_storage or 0)],
                            stdin=subprocess.PIPE)


class Workers:
    """The worker processes of a server, and the supervisor thread that starts a dead one again (the job it
    was running resumes, or fails past MAX_ATTEMPTS: :func:`requeue_or_fail`)."""

    def __init__(self, store: Store, n: int = 1, threads: int = 1, max_storage: int | None = None) -> None:
        self.store, self.threads, self.max_storage = store, threads, max_storage
        self.procs = [start_worker(store.root, k, threads, max_storage) for k in range(n)]
        self.restarts = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._supervise, name="tsynth-worker-supervisor", daemon=True)
        self.thread.start()

    def _supervise(self) -> None:
        while not self.stopping.wait(POLL_SECONDS):
            for slot, proc in enumerate(self.procs):
                if proc.poll() is None or self.stopping.is_set():
                    continue
                why = f"The training process stopped (exit status {proc.returncode}) while running this job"
                log.error("worker %d exited with status %s; starting it again", slot, proc.returncode)
                try:
                    for job in self.store.jobs_on_worker(str(slot)):
                        requeue_or_fail(self.store, job["id"], why)
                except Exception:  # noqa: BLE001 -- the database is busy: the next round tries again
                    log.exception("supervising worker %d", slot)
                    continue
                if proc.stdin:
                    proc.stdin.close()
                self.procs[slot] = start_worker(self.store.root, slot, self.threads, self.max_storage)
                self.restarts += 1

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the workers to exit (closing their stdin) and wait; a running job resumes at the next start."""
        self.stopping.set()
        self.thread.join(timeout)
        for p in self.procs:
            if p.stdin:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()


def _exit_when_server_goes() -> None:
    sys.stdin.buffer.read()
    os._exit(0)


def main(data_dir: str, slot: str = "0", threads: str = "1", max_storage: str = "0") -> None:
    """Worker loop: claim the oldest queued job, train it, repeat (a job's failure fails the job only)."""
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
        job = store.claim_job(slot)
        if job is None:
            time.sleep(POLL_SECONDS)
            continue
        log.info("training job %s", job["id"])
        run_job(store, job, int(max_storage) or None)

