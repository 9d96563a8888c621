"""What a prior from the data owner's own domain buys under DP (issue 12's target, measured).

electricity100's 74 holdout clients play the part of public data from the same domain (say, customers
who consented to publication): a prior is pretrained on all 336 hours of theirs, then the 296 train
clients' first 100 hours are fitted with DP-SGD at epsilon 8 from that prior, with and without the DP
release of the per-step profile. The shipped prior never sees these clients. Scored like the benchmark
(disc_gbm on len(train) samples vs train, per-step errors of 1,000 draws); distance/MIA figures are left
out because the prior saw the holdout. Writes ``benchmarks/results/domain_prior.json``.

    python -m benchmarks.bench_domain_prior [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tsynth import SeriesSet
from tsynth.data import atomic_write
from tsynth.evaluate.fidelity import discriminative_score
from tsynth.pretrain import pretrain
from tsynth.synthesizer import Synthesizer

from .generators import step_errors
from .run import machine
from .tasks import data_dir, load_task

OUT = Path(__file__).parent / "results" / "domain_prior.json"
PRETRAIN = {"epochs": 20}
PROFILE_SHARES = (0.0, 0.25)


def domain_corpus(path: Path) -> int:
    """Write the holdout clients' whole series (336 hours each) to ``path``; returns how many."""
    holdout = set(load_task("electricity100").holdout.item_id)
    data = SeriesSet.read(data_dir() / "electricity_hourly_std.parquet")
    keep = np.flatnonzero([i in holdout for i in data.item_id])
    data.subset(keep).write(path)
    return len(keep)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    task = load_task("electricity100")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "holdout_clients.parquet"
        n_clients = domain_corpus(corpus)
        t0 = time.time()
        prior = pretrain([str(corpus)], Path(tmp) / "prior", **PRETRAIN)
        pretrain_s = time.time() - t0
        for seed in (int(s) for s in args.seeds.split(",")):
            for share in PROFILE_SHARES:
                t0 = time.time()
                syn = Synthesizer("local", prior=str(prior), dp_epsilon=8.0, dp_profile_share=share,
                                  seed=seed).fit(task.train, progress=False)
                fit_s = time.time() - t0
                synthetic = syn.sample(len(task.train), seed=seed).values
                more = syn.sample(1000, seed=seed + 1).values
                row = {"seed": seed, "dp_profile_share": share, "epsilon": syn.info["privacy"]["epsilon"],
                       "disc_gbm": discriminative_score(task.train.values[..., 0], synthetic[..., 0], seed=0)["disc"],
                       **step_errors(task.train.values, more, ""), "fit_s": fit_s}
                print(json.dumps(row), flush=True)
                rows.append(row)
    doc = {"task": "electricity100", "public_domain_data": f"{n_clients} holdout clients x 336 hours",
           "pretrain": {**PRETRAIN, "seconds": pretrain_s}, "machine": machine(), "rows": rows}
    atomic_write(OUT, lambda f: Path(f).write_text(json.dumps(doc, indent=1)))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
