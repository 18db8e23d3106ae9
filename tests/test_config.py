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


def test_every_unknown_key_is_reported_at_once_with_did_you_mean(tmp_path):
    text = "pretrain: {epocs: 1, batchsize: 3}\nfinetun: {}\nzzz: 1\n"
    with pytest.raises(MedsslError) as err:
        load_config(write(tmp_path, text), ["finetune.lrr=0.1"])
    message = str(err.value)
    for part in ("'pretrain.epocs' (did you mean 'pretrain.epochs'?)",
                 "'pretrain.batchsize' (did you mean 'pretrain.batch_size'?)",
                 "'finetun' (did you mean 'finetune'?)", "'finetune.lrr' (did you mean 'finetune.lr'?)",
                 "'zzz' (known in the top level: name,"):
        assert part in message, message
    assert message.count("unknown keys") == 1 and "\n" not in message


@pytest.mark.parametrize("data", [b"name: \xe9t\xe9\n", b"\xff\xfe\x00n\x00"])
@pytest.mark.parametrize("overrides", [[], ["pretrain.epochs=2"]])
def test_non_utf8_config_is_refused(tmp_path, data, overrides):
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    with pytest.raises(MedsslError, match=r"c\.yaml: not UTF-8 text"):
        load_config(path, overrides)


@pytest.mark.parametrize("text", ["- a\n", "3\n", "false\n", "just words\n"])
@pytest.mark.parametrize("overrides", [[], ["name=x"]])
def test_config_that_is_not_a_mapping_is_refused(tmp_path, text, overrides):
    with pytest.raises(MedsslError, match="the config must be a mapping of keys"):
        load_config(write(tmp_path, text), overrides)


def _declared():
    """(dotted key, Check) for every config key with a declared value rule."""
    import dataclasses
    import typing

    out = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
            elif typing.get_origin(tp) is typing.Annotated:
                out.append((f"{prefix}{f.name}", tp.__metadata__[0], f))

    walk(StudyConfig, "")
    return out


def _outside(check, default):
    """A value just outside the declared rule (same shape as the default)."""
    if check.choices:
        bad = "no-such-choice"
    elif check.plain_name:
        bad = "../x"
    elif check.ge is not None:
        bad = check.ge - 1
    elif check.gt is not None:
        bad = check.gt
    elif check.le is not None:
        bad = check.le + 1
    else:
        return [] if isinstance(default, list) else None  # a length-only rule: too short
    return [bad] if isinstance(default, list) or check.min_len else bad


@pytest.mark.parametrize("key,check,fld", _declared(), ids=[k for k, _, _ in _declared()])
def test_every_declared_rule_rejects_a_value_just_outside_it(key, check, fld):
    import dataclasses

    default = fld.default_factory() if fld.default_factory is not dataclasses.MISSING else fld.default
    assert check.problem(default) is None, f"{key}: the default breaks its own rule"
    bad = _outside(check, default)
    with pytest.raises(MedsslError, match=f"'{key}' must"):
        load_config(None, [f"{key}={bad!r}" if isinstance(bad, str) else f"{key}={bad}"])


@pytest.mark.parametrize("override", ["pretrain.epochs=1", "finetune.fractions=[1.0]", "pretrain.lr=1e-9",
                                      "segmentation.sw_overlap=0", "pretrain.max_seconds=null",
                                      "segmentation.crop=[1, 1, 1]", "name=run-1.b"])
def test_values_on_the_edge_of_a_rule_are_accepted(override):
    load_config(None, [override])
