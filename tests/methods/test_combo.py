import json
from pathlib import Path

import pytest
import torch

from medssl.config import PretrainConfig, load_config
from medssl.data.loaders import TensorBatches
from medssl.engine import fit, seed_everything
from medssl.engine.checkpoint import load_weights, save_weights
from medssl.errors import MedsslError
from medssl.methods import create_method, method_config
from medssl.registry import create_backbone

PRESETS = sorted((Path(__file__).parents[2] / "configs" / "presets").glob("*.yaml"))
SMALL = {"simclr": {"proj_hidden_dim": 32, "proj_dim": 16}}


def combo(weights, dims=2, size=16, backbone="resnet18_small", args=None):
    net = create_backbone(backbone, dims, 1, width=0.125, img_size=size)
    args = args or {k: v for k, v in SMALL.items() if k in weights}
    return create_method("combo", net, dims, size, {"weights": weights, "args": args}), net


def test_three_terms_train_one_shared_encoder():
    model, net = combo({"genesis": 1.0, "simclr": 0.5, "rotation": 0.2})
    assert all(task.backbone is net for task in model.tasks.values())
    out = model.training_step({"image": torch.rand(4, 1, 16, 16)})
    assert {"loss/genesis", "loss/simclr", "loss/rotation", "rotation/acc"} <= set(out)
    out["loss"].backward()
    assert all(p.grad is not None for p in net.parameters())
    ids = [id(p) for p in model.parameters()]
    assert len(ids) == len(set(ids))  # the optimizer sees the shared encoder once


def test_weights_scale_the_terms_as_configured():
    x = torch.rand(4, 1, 16, 16)
    totals, terms = [], []
    for weights in ({"genesis": 1.0, "simclr": 0.5, "rotation": 0.2},
                    {"genesis": 2.0, "simclr": 0.5, "rotation": 1.0}):
        torch.manual_seed(0)
        model, _ = combo(weights)
        torch.manual_seed(1)
        out = model.training_step({"image": x})
        expected = sum(w * out[f"loss/{k}"] for k, w in weights.items())
        assert torch.allclose(out["loss"], expected)
        totals.append(out["loss"])
        terms.append({k: out[f"loss/{k}"] for k in weights})
    assert all(torch.allclose(terms[0][k], terms[1][k]) for k in terms[0])  # same seeds, same terms
    assert torch.allclose(totals[1] - totals[0], terms[0]["genesis"] + 0.8 * terms[0]["rotation"])


def test_three_terms_in_3d():
    model, _ = combo({"genesis": 1.0, "rotation": 0.5, "rubik": 0.5}, dims=3, size=20, backbone="resnet10")
    out = model.training_step({"image": torch.rand(2, 1, 20, 20, 20)})
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and {"loss/genesis", "loss/rotation", "loss/rubik"} <= set(out)


def test_vit_encoder_combines_mae_with_predictive_tasks():
    model, _ = combo({"mae": 1.0, "rotation": 0.5, "simclr": 0.5}, backbone="vit_tiny")
    out = model.training_step({"image": torch.rand(4, 1, 16, 16)})
    assert torch.isfinite(out["loss"])


def test_backbone_is_saved_once_and_loads_strictly(tmp_path):
    model, net = combo({"genesis": 1.0, "simclr": 0.5, "byol": 0.5})
    keys = list(model.state_dict())
    assert not any(".backbone." in k and k.startswith("tasks.") and "target" not in k for k in keys)
    save_weights(model, tmp_path / "m.safetensors")
    fresh, fresh_net = combo({"genesis": 1.0, "simclr": 0.5, "byol": 0.5})
    fresh.load_state_dict(load_weights(tmp_path / "m.safetensors"))
    assert torch.equal(fresh_net.net.conv1.weight, net.net.conv1.weight)
    assert fresh.tasks["genesis"].net.backbone is fresh_net


@pytest.mark.parametrize("args,match", [
    ({"weights": {"genesis": 1.0, "nope": 1.0}}, "unknown task 'nope'"),
    ({"weights": {"combo": 1.0}}, "unknown task 'combo'"),
    ({"weights": {"genesis": 0.0}}, "must be a number > 0"),
    ({"weights": {}}, "lists no task"),
    ({"weights": {"genesis": 1.0}, "args": {"simclr": {}}}, "not in 'weights'"),
    ({"weights": {"simclr": 1.0}, "args": {"simclr": {"nope": 1}}}, "args.simclr.nope"),
    ({"weight": {"simclr": 1.0}}, "unknown key"),
])
def test_config_errors_are_caught_before_training(args, match):
    with pytest.raises(MedsslError, match=match) as err:
        method_config("combo", args)
    assert "\n" not in str(err.value)


def test_tasks_that_cannot_share_the_encoder_are_one_line_errors():
    with pytest.raises(MedsslError, match="task 'mae' cannot share the ResNetBackbone encoder") as err:
        combo({"genesis": 1.0, "mae": 1.0})
    assert "\n" not in str(err.value)
    with pytest.raises(MedsslError, match="task 'genesis' cannot share"):
        combo({"genesis": 1.0, "mae": 1.0}, backbone="vit_tiny")


def test_the_engine_logs_every_term(tmp_path):
    seed_everything(0)
    model, _ = combo({"denoising": 1.0, "simclr": 0.5, "rotation": 0.2})
    images = torch.randint(0, 256, (16, 1, 16, 16), dtype=torch.uint8)
    spec = PretrainConfig(epochs=1, batch_size=8, warmup_epochs=0)
    fit(model, TensorBatches(images, None, 8, seed=0), spec, tmp_path, log_every=1)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"loss", "loss/denoising", "loss/simclr", "loss/rotation"} <= set(rows[0])


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_presets_load_and_build(preset):
    cfg = load_config(preset, ["model.width=0.125"])
    assert cfg.pretrain.method == "combo" and len(cfg.pretrain.method_args["weights"]) >= 2
    net = create_backbone(cfg.model.backbone, 2, 1, width=0.125)
    create_method("combo", net, 2, 28, cfg.pretrain.method_args)


def test_there_are_two_presets():
    assert len(PRESETS) >= 2
