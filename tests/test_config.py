import pytest

from medssl.config import StudyConfig, load_config, save_config
from medssl.errors import MedsslError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_land_in_dataclasses(tmp_path):
    path = write(tmp_path, "name: x\npretrain:\n  epochs: 3\n  lr: 1\nfinetune:\n  fractions: [0.5]\n")
    cfg = load_config(path, ["pretrain.epochs=7", "model.width=0.25", "data.path=null"])
    assert isinstance(cfg, StudyConfig)
    assert (cfg.name, cfg.pretrain.epochs, cfg.model.width) == ("x", 7, 0.25)
    assert cfg.pretrain.lr == 1.0 and isinstance(cfg.pretrain.lr, float)  # int accepted for float
    assert cfg.finetune.fractions == [0.5] and cfg.finetune.seeds == [0, 1]  # defaults kept


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["pretrain.method_args={temperature: 0.3}", "finetune.seeds=[3]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("text,overrides,match", [
    ("pretrain:\n  epoch: 3\n", [], r"unknown key 'pretrain.epoch'"),
    ("bogus: 1\n", [], r"unknown key 'bogus'"),
    ("", ["finetune.lrr=0.1"], r"unknown key 'finetune.lrr'"),
    ("", ["pretrain.epochs=many"], r"'pretrain.epochs' must be int"),
    ("", ["finetune.fractions=0.1"], r"'finetune.fractions' must be a list"),
    ("", ["pretrain.epochs"], r"expected key=value"),
    ("pretrain: [1, 2\n", [], r"not valid YAML"),
    ("data: 3\n", [], r"'data' must be a mapping"),
])
def test_bad_config_is_a_one_line_error_naming_the_key(tmp_path, text, overrides, match):
    with pytest.raises(MedsslError, match=match) as err:
        load_config(write(tmp_path, text), overrides)
    assert "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(MedsslError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
