"""The report from a hand-built run: every section, the interval numbers against direct calls, the
self-contained HTML (images inline, nothing fetched), binary and multi-class."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medssl.report.classification import seed_mean_auc
from medssl.report.report import write_report
from medssl.stats.intervals import bootstrap_ci, paired_bootstrap
from medssl.stats.metrics import classification_metrics, operating_points

SEEDS, FRACTIONS = (0, 1, 2), (0.1, 1.0)


def _probs(y, k, strength, rng):
    """Class probabilities [N, k] that favour the true class by ``strength``."""
    logits = rng.normal(size=(len(y), k))
    logits[np.arange(len(y)), y] += strength
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def build_run(root, k=2, task="binary-class", pos=1):
    """A study directory with results.jsonl and one predictions.npz per cell: SimCLR clearly better
    than scratch (a larger logit margin), linear probe in between."""
    rng = np.random.default_rng(0)
    y_val, y_test = rng.integers(0, k, 150), rng.integers(0, k, 200)
    (root / "config.yaml").write_text(f"data:\n  positive_class: {pos}\n")
    rows = [{"protocol": "pretrain", "dataset": "toy", "method": "simclr", "steps": 100, "seconds": 10.0,
             "img_per_s": 50.0}]
    for seed in SEEDS:
        for f in FRACTIONS:
            for init, strength in (("ssl", 2.0 + f), ("scratch", 0.6 + f)):
                preds = {"val_y": y_val, "test_y": y_test}
                for protocol, scale in (("finetune", 1.0), ("linear", 0.7)):
                    pv, pt = _probs(y_val, k, strength * scale, rng), _probs(y_test, k, strength * scale, rng)
                    preds[f"{protocol}_val"], preds[f"{protocol}_test"] = pv, pt
                    m = classification_metrics(y_test, pt, pos, task=task)
                    if k == 2:
                        m.update(operating_points(y_val, pv, y_test, pt, pos))
                    rows.append({"dataset": "toy", "method": "simclr", "backbone": "b", "width": 1.0,
                                 "protocol": protocol, "init": init, "fraction": f, "seed": seed,
                                 "n_labelled": int(100 * f), **m})
                cell = root / "finetune" / f"{init}_f{f:g}_s{seed}"
                cell.mkdir(parents=True)
                np.savez(cell / "predictions.npz", **preds)
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "pretrain").mkdir()
    (root / "pretrain" / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5 - s / 50}) + "\n"
                                                         for s in range(10, 101, 10)))
    return y_test, pos


def _cell(root, init, f, seed, key):
    return np.load(root / "finetune" / f"{init}_f{f:g}_s{seed}" / "predictions.npz")[key]


def test_binary_report_sections_numbers_and_self_contained_html(tmp_path):
    y_test, pos = build_run(tmp_path)
    text = write_report(tmp_path).read_text()
    html = (tmp_path / "report.html").read_text()
    for section in ("How to read this report", "toy: label efficiency", "toy: SSL − scratch",
                    "toy: operating points", "Compute"):
        assert f"## {section}" in text or f"### {section}" in text, section
        assert section.replace("−", "−") in html
    for figure in ("label_efficiency", "roc_pr", "confusion", "calibration", "pretrain_loss"):
        assert (tmp_path / "figures" / f"toy_{figure}.png").stat().st_size > 2000, figure
    # every image inline, nothing to fetch: the file opens offline
    assert html.count("src='data:image/png;base64,") == 5 and not re.search(r"src=['\"]http", html)

    # the interval in the table is the stratified bootstrap of the seed-mean AUC, computed directly
    y = (y_test == pos).astype(int)[:, None]
    scores = np.stack([_cell(tmp_path, "ssl", 0.1, s, "finetune_test")[:, [pos]] for s in SEEDS], 1)
    _, lo, hi = bootstrap_ci(seed_mean_auc, y, scores, strata=y_test, n_boot=1000, batched=True)
    mean_auc = np.mean([roc_auc_score(y[:, 0], scores[:, s, 0]) for s in range(3)])
    row = next(line for line in text.splitlines() if line.startswith("| 10% | fine-tuned | simclr |"))
    assert f"| {mean_auc:.3f} ± " in row and f"[{lo:.3f}, {hi:.3f}]" in row

    # the paired difference against scratch, same resamples for both arms
    scratch = np.stack([_cell(tmp_path, "scratch", 0.1, s, "finetune_test")[:, [pos]] for s in SEEDS], 1)
    boot = paired_bootstrap(seed_mean_auc, y, scores, scratch, strata=y_test, n_boot=1000, batched=True)
    delta = next(line for line in text.splitlines() if line.startswith("| 10% | fine-tuned | simclr | 3 |"))
    assert f"| {boot['diff']:+.3f} | [{boot['lo']:+.3f}, {boot['hi']:+.3f}] |" in delta
    assert boot["lo"] > 0 and delta.endswith("yes, SSL better |")
    # operating points: the Youden row shows the mean over seeds of the rows' values
    youden = [r for r in map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())
              if r.get("protocol") == "finetune" and r.get("init") == "ssl" and r.get("fraction") == 0.1]
    sens = np.mean([r["sensitivity@youden"] for r in youden])
    assert any(line.startswith("| 10% | fine-tuned | simclr | Youden (val) |") and f"| {sens:.3f} ± " in line
               for line in text.splitlines())


def test_multi_class_report_has_kappa_and_macro_auc(tmp_path):
    build_run(tmp_path, k=5, task="ordinal-regression")
    text = write_report(tmp_path).read_text()
    assert "5-class task, 200 test cases" in text
    assert "| acc | kappa | ece | balanced_acc |" in text  # quadratic kappa for the ordinal task
    assert "toy: operating points" not in text  # binary only
    assert (tmp_path / "figures" / "toy_confusion.png").is_file()
    assert "roc_pr" not in text


@pytest.mark.parametrize("broken", ["swap", "unpaired"])
def test_the_checks_above_would_catch_a_wrong_interval(tmp_path, monkeypatch, broken):
    """Deliberately broken statistics change the numbers the first test checks."""
    from medssl.report import classification as rc

    if broken == "swap":  # intervals built from the scratch scores
        monkeypatch.setattr(rc, "stacked", lambda ds, g, seeds: np.stack(
            [rc.columns(ds, ds.groups[("scratch", g.protocol, g.fraction)].scores[s]) for s in seeds], 1))
    else:  # each arm resampled on its own: not a paired comparison
        monkeypatch.setattr(rc, "paired_bootstrap", lambda m, y, a, b, **kw: {
            **paired_bootstrap(m, y, a, b, **{**kw, "seed": 1}), "lo": 0.0, "hi": 0.0})
    with pytest.raises(AssertionError):
        test_binary_report_sections_numbers_and_self_contained_html(tmp_path)
