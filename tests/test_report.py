"""evaluate_to_dir: metrics.json plus a self-contained report.html."""

import json
import re

import numpy as np

from tsynth.evaluate import evaluate_to_dir

from test_evaluate import make, renamed


def test_report_is_self_contained_with_verdict_and_figures(tmp_path):
    train, holdout = make(160).split(0.25, seed=0)
    ev = evaluate_to_dir(train, renamed(holdout), holdout, tmp_path, fast=True,
                         title="<Demo> & co", extra={"model": "gaussian", "epochs": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "report.html"]   # no temp files left
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["extra"] == {"model": "gaussian", "epochs": 3}
    assert metrics["fidelity"]["disc_gbm"] == ev.fidelity["disc_gbm"]

    page = (tmp_path / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)           # nothing fetched from outside
    assert "<script" not in page and "<link" not in page
    assert "&lt;Demo&gt; &amp; co" in page and "<Demo>" not in page
    verdict = page.index("<h2>Verdict</h2>")
    assert verdict < page.index("<table", verdict) < page.index("<img")                  # the verdict table comes first
    assert "discriminative score disc_gbm" in page and "holdout&#x27;s value" in page
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 7
    assert all(img.startswith("iVBORw0KGgo") for img in images)                          # PNG signature
    assert "exact copies of a training series" in page
    assert len(page) < 1_000_000


def test_report_without_holdout_lists_what_is_not_computed(tmp_path):
    train, _ = make(120).split(0.25, seed=0)
    synthetic = renamed(train, train.values + np.float32(0.5))
    evaluate_to_dir(train, synthetic, None, tmp_path, fast=True)
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Not computed</h2>" in page
    assert "privacy.mia_auc</b>: needs a holdout" in page
    assert "Without a holdout there is no fresh real data" in page
