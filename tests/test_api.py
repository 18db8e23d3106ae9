"""The Python API (medssl/api.py): configs from dicts, pretraining on tensors/folders, load_encoder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import medssl
from medssl.config import load_config
from medssl.engine.checkpoint import load_weights
from medssl.errors import MedsslError
from medssl.models.unet import UNet
from medssl.registry import create_backbone

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = {"width": 0.125, "epochs": 1, "device": "cpu", "precision": "fp32"}
TINY_STUDY = {"name": "tiny", "model": {"width": 0.125},
              "pretrain": {"epochs": 1, "batch_size": 64},
              "finetune": {"epochs": 1, "min_steps": 0, "fractions": [0.1], "seeds": [0], "knn": False},
              "engine": {"precision": "fp32"}}


def images_2d(n: int = 16, side: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, side, side), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(1))


def test_a_dict_config_is_checked_like_yaml(tmp_path, monkeypatch):
    monkeypatch.setattr("medssl.studies.run_study", lambda *a, **k: pytest.fail("ran a bad config"))
    with pytest.raises(MedsslError, match=r"config dict: unknown key 'pretrain\.epoch' \(did you mean "
                                          r"'pretrain\.epochs'\?\)"):
        medssl.run_study({"output_dir": str(tmp_path), "pretrain": {"epoch": 1}})
    with pytest.raises(MedsslError, match=r"'model\.width' must be > 0"):
        medssl.study_config({"model": {"width": 0}})
    assert list(tmp_path.iterdir()) == []  # nothing written before the config is checked
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    assert medssl.study_config(TINY_STUDY) == load_config(tmp_path / "s.yaml")
    cfg = medssl.study_config(TINY_STUDY, overrides=["pretrain.epochs=3"])
    assert cfg.pretrain.epochs == 3 and TINY_STUDY["pretrain"]["epochs"] == 1  # the dict is not changed
    assert medssl.study_config(cfg, ["seed=5"]).seed == 5


@pytest.fixture(scope="module")
def run2d(tmp_path_factory) -> tuple[Path, torch.Tensor, medssl.Encoder]:
    """One tiny 2D pretraining shared by the tests below: (run dir, its images, the returned encoder)."""
    out, x = tmp_path_factory.mktemp("api") / "run", images_2d()
    return out, x, medssl.pretrain(x, batch_size=8, out=out, **TINY)


def test_pretrain_on_a_2d_tensor_then_load_from_the_run_dir_and_the_file(run2d, tmp_path):
    run, x, enc = run2d
    for f in ("encoder.safetensors", "config.yaml", "log.jsonl"):
        assert (run / f).is_file(), f
    assert enc.config == medssl.EncoderConfig("resnet18_small", 0.125, 2, 1, 16, "simclr")
    from_dir = medssl.load_encoder(run)
    from_file = medssl.load_encoder(run / "encoder.safetensors")
    xb = x[:4].float() / 255
    with torch.no_grad():
        feats = from_dir(xb)
        assert feats.shape == (4, from_dir.num_features) == (4, 64)
        assert torch.equal(feats, from_file(xb)) and torch.equal(feats, enc(xb))
    alone = tmp_path / "copied.safetensors"  # the pretraining file carries its config
    alone.write_bytes((run / "encoder.safetensors").read_bytes())
    assert medssl.load_encoder(alone).config == enc.config
    with pytest.raises(MedsslError, match="run directory exists"):
        medssl.pretrain(x, batch_size=8, out=run, **TINY)


def test_the_encoder_equals_create_backbone_plus_load_weights_by_hand(run2d):
    enc = medssl.load_encoder(run2d[0])
    manual = create_backbone("resnet18_small", 2, 1, width=0.125)
    manual.load_state_dict(load_weights(run2d[0] / "encoder.safetensors"))
    manual.eval()
    x = torch.rand(3, 1, 20, 20)  # another size than pretrained: CNNs take any
    with torch.no_grad():
        assert torch.equal(enc(x), manual(x))
        assert torch.equal(enc.forward_features(x), manual.forward_features(x))
        for a, b in zip(enc.stages(x), manual.stages(x), strict=True):
            assert torch.equal(a, b)
    assert not torch.equal(enc(x), create_backbone("resnet18_small", 2, 1, width=0.125).eval()(x))


def test_float_images_in_0_1_are_pretrained_as_their_uint8_and_3d_works(tmp_path):
    v = torch.rand(8, 1, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    as_float = medssl.pretrain(v, batch_size=4, **TINY)  # out=None: nothing kept
    as_uint8 = medssl.pretrain(torch.round(v * 255).to(torch.uint8).numpy(), batch_size=4, **TINY)
    assert as_float.config.spatial_dims == 3 and as_float.config.size == 8
    with torch.no_grad():
        f = as_float(v[:2])
        assert f.shape == (2, 64) and torch.equal(f, as_uint8(v[:2]))
        assert [m.shape[1] for m in as_float.stages(v[:2])] == as_float.feature_channels == [8, 16, 32, 64]
    with pytest.raises(MedsslError, match=r"float images must be in \[0, 1\]"):
        medssl.pretrain(v * 2, batch_size=4, **TINY)
    saved = as_float.save(tmp_path / "alone.safetensors")  # carries its config: loads on its own
    with torch.no_grad():
        assert torch.equal(medssl.load_encoder(saved)(v[:2]), f)


def test_a_folder_of_images_is_pretrained_like_the_same_tensor(tmp_path, run2d):
    from PIL import Image

    _, x, from_tensor = run2d
    (tmp_path / "imgs").mkdir()
    for i, im in enumerate(x[:, 0].numpy()):
        Image.fromarray(im).save(tmp_path / "imgs" / f"{i}.png")
    from_folder = medssl.pretrain(tmp_path / "imgs", batch_size=8, **TINY)
    xb = x[:2].float() / 255
    with torch.no_grad():
        assert torch.equal(from_folder(xb), from_tensor(xb))
    with pytest.raises(MedsslError, match=r"unknown key 'pretrain\.lrr' \(did you mean 'pretrain\.lr'"):
        medssl.pretrain(x, batch_size=8, lrr=0.1, **TINY)
    with pytest.raises(MedsslError, match="folder not found"):
        medssl.pretrain(tmp_path / "nope", **TINY)


def test_the_encoder_drops_into_a_linear_head_a_unet_and_a_features_only_decoder(run2d):
    enc = medssl.load_encoder(run2d[0])
    x = torch.rand(2, 1, 16, 16)
    head = torch.nn.Sequential(enc, torch.nn.Linear(enc.num_features, 3))
    assert head(x).shape == (2, 3)
    unet = UNet(enc, out_channels=2)
    assert unet(x).shape == (2, 2, 16, 16)
    maps = medssl.load_encoder(run2d[0], features_only=True)(x)
    assert [tuple(m.shape) for m in maps] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]
    head(x).sum().backward()  # the encoder trains in the user's model
    assert enc.backbone.net.conv1.weight.grad is not None


def readme_example() -> str:
    """The fenced python block under README's "## Python API" heading."""
    text = README.read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "README's Python API section should have one python block"
    return blocks[0]


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md#python-api", "exec"), {})
    out = capsys.readouterr().out
    assert "torch.Size([4, 64])" in out and "torch.Size([4, 3, 28, 28]) [8, 16, 32, 64]" in out
    assert (tmp_path / "runs" / "my-simclr" / "encoder.safetensors").is_file()


@pytest.mark.slow
def test_run_study_from_a_dict_on_real_breastmnist(tmp_path, data_dir):
    run = medssl.run_study({**TINY_STUDY, "output_dir": str(tmp_path)})
    assert run == tmp_path / "tiny"
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert {r["protocol"] for r in rows} == {"pretrain", "finetune", "study"}
    assert all(0 <= r["auc"] <= 1 for r in rows if r["protocol"] == "finetune")
    enc = medssl.load_encoder(run)  # a study directory: pretrain/encoder.safetensors + config.yaml
    assert enc.config == medssl.EncoderConfig("resnet18_small", 0.125, 2, 1, 28, "simclr")
    manual = create_backbone("resnet18_small", 2, 1, width=0.125).eval()
    manual.load_state_dict(load_weights(run / "pretrain" / "encoder.safetensors"))
    x = torch.from_numpy(np.linspace(0, 1, 2 * 28 * 28, dtype=np.float32)).reshape(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(enc(x), manual(x))


@pytest.mark.slow
def test_engine_compile_reaches_pretraining_and_fine_tuning(tmp_path, data_dir, compiled_parts):
    cfg = {**TINY_STUDY, "output_dir": str(tmp_path), "engine": {"precision": "fp32", "compile": True}}
    run = medssl.run_study(cfg)
    assert compiled_parts == ["SimCLR", "Classifier", "Classifier"]  # pretraining; ssl and scratch cells
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert all(r["flops_per_sample"] > 0 for r in rows if r["protocol"] == "finetune")  # counted eagerly


@pytest.mark.parametrize("dims", [2, 3])
def test_snapshot_every_saves_the_encoder_as_it_was_after_those_epochs(tmp_path, monkeypatch, dims):
    from medssl.studies import pretraining as study_pretrain
    seen: dict[int, dict[str, torch.Tensor]] = {}  # epoch -> the backbone's weights at its end
    plain_fit = study_pretrain.fit

    def fit(model, *args, on_epoch_end=None, **kwargs):
        def record(epoch: int) -> dict:
            seen[epoch + 1] = {k: v.clone() for k, v in model.backbone.state_dict().items()}
            return on_epoch_end(epoch) if on_epoch_end else {}
        return plain_fit(model, *args, on_epoch_end=record, **kwargs)

    monkeypatch.setattr(study_pretrain, "fit", fit)
    x = images_2d(8, 8) if dims == 2 else torch.randint(0, 256, (8, 1, 8, 8, 8), dtype=torch.uint8)
    enc = medssl.pretrain(x, out=tmp_path / "run", snapshot_every=2, batch_size=4,  # 2 steps/epoch
                          **{**TINY, "epochs": 5})
    snaps = tmp_path / "run" / "snapshots"
    assert sorted(p.name for p in snaps.iterdir()) == ["encoder_epoch0002.safetensors",
                                                        "encoder_epoch0004.safetensors"]
    assert sorted(seen) == [1, 2, 3, 4, 5]
    for epoch in (2, 4):
        saved = load_weights(snaps / f"encoder_epoch{epoch:04d}.safetensors")
        assert saved.keys() == seen[epoch].keys()
        assert all(torch.equal(saved[k], seen[epoch][k]) for k in saved), epoch
    moved = [k for k in seen[5] if not torch.equal(seen[4][k], seen[5][k])]
    assert moved  # epoch 5 trained on: the last snapshot is not the final encoder
    final = load_weights(tmp_path / "run" / "encoder.safetensors")
    assert all(torch.equal(final[k], seen[5][k]) for k in final)
    at2 = medssl.load_encoder(snaps / "encoder_epoch0002.safetensors")  # carries its config
    assert at2.config == enc.config
    with pytest.raises(MedsslError, match=r"'pretrain\.snapshot_every' must be >= 0"):
        medssl.pretrain(x, snapshot_every=-1, **TINY)
