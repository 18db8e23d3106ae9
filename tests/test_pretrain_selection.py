"""``pretrain.select_on: val_knn`` (medssl/studies/pretraining.py, eval/selection.py): the kept
encoder is the epoch with the best leave-one-out kNN AUC on the validation images, scored here
again by loops and sklearn's AUC, in 2D and 3D; early stopping, resume, and a pool without labels."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medssl.config import StudyConfig, from_dict
from medssl.data.types import PretrainData, Split
from medssl.engine import seed_everything
from medssl.engine.checkpoint import load_weights
from medssl.errors import MedsslError
from medssl.eval.probes import extract_features
from medssl.studies.pretraining import build_backbone, pretrain


def config(engine: dict | None = None, **pretrain_keys) -> StudyConfig:
    return from_dict(StudyConfig, {
        "seed": 0, "model": {"width": 0.125},
        "engine": {"device": "cpu", "precision": "fp32", **(engine or {})},
        "pretrain": {"method": "simclr", "batch_size": 4, "select_on": "val_knn", **pretrain_keys}}, "test")


def pool(dims: int, val: bool = True) -> PretrainData:
    g = torch.Generator().manual_seed(dims)
    shape = (8,) * dims
    images = torch.randint(0, 256, (8, 1, *shape), dtype=torch.uint8, generator=g)  # 2 steps per epoch
    if not val:
        return PretrainData(images, dims, 1, 8)
    labels = torch.arange(14) % 2
    # the label shifts the brightness a little, so features carry some of it
    shift = 40 * labels.view(-1, *[1] * (dims + 1))
    v = (torch.rand((14, 1, *shape), generator=g) * 200 + shift).to(torch.uint8)
    return PretrainData(images, dims, 1, 8, Split(v, labels), 2)


def loo_auc(weights: dict[str, torch.Tensor], cfg: StudyConfig, data: PretrainData) -> float:
    """Leave-one-out kNN AUC by loops: each validation image's 20 (here: all 13 others) most
    cosine-similar others vote exp(cos / 0.07) for their class; AUC of the class-1 share."""
    backbone = build_backbone(cfg.model, data.spatial_dims, 1, data.size)
    backbone.load_state_dict(weights)
    f = extract_features(backbone, data.val.images).astype(np.float64)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    y = data.val.labels.numpy()
    p1 = []
    for i in range(len(f)):
        sims = sorted(((float(f[i] @ f[j]), int(y[j])) for j in range(len(f)) if j != i), reverse=True)[:20]
        votes = [sum(math.exp(s / 0.07) for s, c in sims if c == k) for k in (0, 1)]
        p1.append(votes[1] / sum(votes))
    return float(roc_auc_score(y, p1))


def initial_weights(cfg: StudyConfig, dims: int) -> dict[str, torch.Tensor]:
    seed_everything(cfg.seed)  # as pretrain builds its backbone
    return build_backbone(cfg.model, dims, 1, 8).state_dict()


def val_rows(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_knn_auc" in r]


@pytest.mark.parametrize("dims", [2, 3])
def test_the_kept_encoder_is_the_best_validation_epoch(tmp_path, dims):
    cfg, data, run = config(epochs=6, snapshot_every=1), pool(dims), tmp_path / "run"
    row = pretrain(cfg, data, run)
    weights = {0: initial_weights(cfg, dims)} | {
        e: load_weights(run / "snapshots" / f"encoder_epoch{e:04d}.safetensors") for e in range(1, 7)}
    scores = {e: loo_auc(w, cfg, data) for e, w in weights.items()}
    best = max(scores, key=lambda e: (scores[e], -e))  # the earliest of equal scores
    assert 0 < best < 6, scores  # the data are chosen so that neither end is the best
    assert row["selected_epoch"] == best
    assert row["val_knn_auc"] == pytest.approx(scores[best], abs=1e-9)
    assert row["val_knn_auc_start"] == pytest.approx(scores[0], abs=1e-9)
    logged = [r["val_knn_auc"] for r in val_rows(run)]
    assert logged == pytest.approx([scores[e] for e in range(1, 7)], abs=1e-9)
    kept, last = load_weights(run / "encoder.safetensors"), load_weights(run / "encoder_last.safetensors")
    assert all(torch.equal(kept[k], weights[best][k]) for k in kept)
    assert all(torch.equal(last[k], weights[6][k]) for k in last)
    assert any(not torch.equal(kept[k], last[k]) for k in kept)
    again = pretrain(cfg, data, run, resume=True)  # a finished run resumed keeps its choice
    assert (again["selected_epoch"], again["val_knn_auc"]) == (best, row["val_knn_auc"])
    assert all(torch.equal(v, kept[k]) for k, v in load_weights(run / "encoder.safetensors").items())


def test_patience_stops_once_the_best_epoch_lies_that_far_behind(tmp_path):
    # 10 epochs x 2 steps planned; patience 0.2 -> stop when the best lies > 4 steps (2 epochs) behind
    cfg, data, run = config(epochs=10, patience=0.2), pool(2), tmp_path / "run"
    row = pretrain(cfg, data, run)
    scores = [row["val_knn_auc_start"]] + [r["val_knn_auc"] for r in val_rows(run)]
    best, stop = 0, None
    for e, s in enumerate(scores):
        best = e if s > scores[best] else best
        if e - best > 2:
            stop = e
            break
    assert stop is not None and stop < 10, scores
    assert len(scores) == stop + 1 and row["steps"] == 2 * stop
    assert val_rows(run)[-1].get("early_stop") is True
    assert row["selected_epoch"] == best


def test_refused_before_training(tmp_path):
    with pytest.raises(MedsslError, match=r"pretrain\.select_on: val_knn needs labelled validation images"):
        pretrain(config(epochs=1), pool(2, val=False), tmp_path / "run")
    two = pool(2)
    one_class = PretrainData(two.images, 2, 1, 8, Split(two.val.images, two.val.labels * 0), 2)
    with pytest.raises(MedsslError, match="two classes among the validation images"):
        pretrain(config(epochs=1), one_class, tmp_path / "run")
    with pytest.raises(MedsslError, match=r"pretrain\.patience and pretrain\.select_every act with"):
        pretrain(config(epochs=1, select_on="last", patience=0.5), pool(2), tmp_path / "run")
    with pytest.raises(MedsslError, match=r"pretrain\.checkpoint skips pretraining"):
        pretrain(config(epochs=1, checkpoint="enc.safetensors"), pool(2), tmp_path / "run")
    assert not (tmp_path / "run" / "log.jsonl").exists()
    pretrain(config(epochs=1, select_on="last"), pool(2), tmp_path / "plain")
    with pytest.raises(MedsslError, match=r"checkpoint was written without pretrain\.select_on: val_knn"):
        pretrain(config(epochs=2), pool(2), tmp_path / "plain", resume=True)


def test_the_last_epoch_is_a_candidate_when_select_every_skips_it(tmp_path, monkeypatch):
    from medssl.eval.selection import ValKnnSelection

    scores = iter([0.5, 0.6, 0.55, 0.9])  # before training, after epochs 2 and 4, after the last (5)
    monkeypatch.setattr(ValKnnSelection, "score", lambda self: next(scores))
    cfg, run = config(epochs=5, select_every=2, snapshot_every=1), tmp_path / "run"
    row = pretrain(cfg, pool(3), run)
    assert [r["epochs_done"] for r in val_rows(run)] == [2, 4]
    assert (row["selected_epoch"], row["val_knn_auc"], row["val_knn_auc_start"]) == (5, 0.9, 0.5)
    kept, last = load_weights(run / "encoder.safetensors"), load_weights(run / "encoder_last.safetensors")
    assert all(torch.equal(kept[k], last[k]) for k in kept)


class Killed(Exception):
    """Stands in for a kill between two checkpoints."""


def test_a_run_killed_between_checkpoints_resumes_to_the_same_choice(tmp_path, monkeypatch):
    from medssl.studies import pretraining

    cfg, data = config({"checkpoint_every": 2}, epochs=6), pool(2)
    full = pretrain(cfg, data, tmp_path / "full")
    kept = pretraining._kept

    def kept_then_die(out, *args):
        kept(out, *args)
        if out.get("epochs_done") == 3:  # after epoch 3's score and save, before its checkpoint (at 4)
            raise Killed

    monkeypatch.setattr(pretraining, "_kept", kept_then_die)
    with pytest.raises(Killed):
        pretrain(cfg, data, tmp_path / "cut")
    monkeypatch.setattr(pretraining, "_kept", kept)
    resumed = pretrain(cfg, data, tmp_path / "cut", resume=True)
    keys = ("steps", "selected_epoch", "val_knn_auc", "val_knn_auc_start")
    assert {k: resumed[k] for k in keys} == {k: full[k] for k in keys}
    for name in ("encoder.safetensors", "encoder_last.safetensors"):
        a, b = load_weights(tmp_path / "full" / name), load_weights(tmp_path / "cut" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_an_early_stopped_run_stays_stopped_when_resumed(tmp_path):
    cfg, data, run = config(epochs=10, patience=0.2), pool(2), tmp_path / "run"
    row = pretrain(cfg, data, run)
    assert row["steps"] < 20
    last = load_weights(run / "encoder_last.safetensors")
    again = pretrain(cfg, data, run, resume=True)
    assert (again["steps"], again["selected_epoch"]) == (row["steps"], row["selected_epoch"])
    assert all(torch.equal(v, last[k]) for k, v in load_weights(run / "encoder_last.safetensors").items())


def test_a_study_keeps_the_chosen_epoch_and_its_report_says_so(tmp_path, data_dir):
    import medssl
    from medssl.data.medmnist import load_medmnist

    run = medssl.run_study({
        "name": "sel", "output_dir": str(tmp_path), "model": {"width": 0.125},
        "engine": {"precision": "fp32"},
        "pretrain": {"epochs": 2, "batch_size": 64, "select_on": "val_knn"},
        "finetune": {"epochs": 1, "min_steps": 0, "fractions": [0.1], "seeds": [0], "knn": False}})
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    [pre] = [r for r in rows if r["protocol"] == "pretrain"]
    assert pre["select_on"] == "val_knn" and pre["selected_epoch"] in (0, 1, 2)
    data = load_medmnist("breastmnist")
    cfg = medssl.study_config({"model": {"width": 0.125}})
    kept = load_weights(run / "pretrain" / "encoder.safetensors")
    assert pre["val_knn_auc"] == pytest.approx(loo_auc(kept, cfg, PretrainData(
        data.train.images, 2, 1, 28, data.val, 2)), abs=1e-9)  # scored on BreastMNIST's validation split
    assert f"pretraining epoch {pre['selected_epoch']}" in (run / "report.md").read_text()
