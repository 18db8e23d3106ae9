"""Every bad input is a clear error: exit code 2, one stderr line naming the file or key and the
problem, no traceback, and no run directory that looks finished.

CASES is the table; ``python tests/test_bad_inputs.py`` regenerates docs/bad_inputs.md from it, and
each case checks that its documented message is still the exact message shown (so the doc cannot
drift).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import sys
import tempfile
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import medssl.data.medmnist as mm
import medssl.engine.trainer as trainer
from medssl.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"
REAL_DATA = os.environ.get("MEDSSL_DATA_DIR", "")

BASE = """name: t
output_dir: {tmp}/runs
data: {dataset: breastmnist}
pretrain: {epochs: 1, batch_size: 8}
finetune: {fractions: [0.5], seeds: [0], epochs: 1}
"""


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)
    return path


def csv_dataset(rows: str, header: str = "path,label,patient_id") -> Callable[[Path], None]:
    """A CSV classification dataset under <tmp>/csvdata with two tiny PNGs."""

    def setup(tmp: Path) -> None:
        for name in ("a.png", "b.png"):
            png(tmp / "csvdata" / name, np.full((6, 6), 90, np.uint8))
        write(tmp / "csvdata" / "labels.csv", f"{header}\n{rows}\n")

    return setup


def seg_dataset(image: Callable[[Path], object], mask: Callable[[Path], object]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        image(tmp / "seg" / "images" / "case_1.png")
        mask(tmp / "seg" / "labels" / "case_1.png")

    return setup


def pickled_array() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


def offline(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
    def fetch(url: str, dest: Path) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(mm, "_fetch", fetch)
    monkeypatch.setenv("MEDSSL_DATA_DIR", str(tmp / "empty_data"))
    (tmp / "empty_data").mkdir()


class Evil:
    """Unpickling this runs a shell command: the hostile ``state.pt`` payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_run_dir(tmp: Path) -> None:
    import torch

    run = tmp / "runs" / "t-pretrain"
    run.mkdir(parents=True)
    torch.save({"epoch": 0, "payload": Evil(tmp / "PWNED")}, run / "state.pt")
    write(run / "checkpoint.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      garbage")


@dataclass
class Case:
    id: str
    argv: list[str]  # "{tmp}" and "{cfg}" (the base config) are filled in
    needles: tuple[str, ...]  # each must appear in the error line
    config: str | bytes = BASE  # written to {cfg}
    setup: Callable[[Path], object] | None = None
    patch: Callable[[pytest.MonkeyPatch, Path], None] | None = None
    what: str = ""  # the bad input, for the doc table
    exact: bool = True  # the message is the same on every machine (checked against the doc)
    trains: bool = False  # the error is raised inside fit() (resume), so fit is not stubbed out


S = ["study", "{cfg}"]
CSV = [*S, "--set", "data.format=csv", "--set", "data.path={tmp}/csvdata/labels.csv"]
CASES = [
    # ---- the config file itself
    Case("config_not_utf8", S, ("c.yaml", "not UTF-8"), config=b"name: \xff\xfe\n",
         what="config file in Latin-1 / binary (not UTF-8)"),
    Case("config_not_utf8_with_set", [*S, "--set", "pretrain.epochs=1"], ("c.yaml", "not UTF-8"),
         config=b"\xff\xfe\x00", what="same, with --set"),
    Case("config_is_a_list", S, ("c.yaml", "must be a mapping", "list"), config="- a\n- b\n",
         what="config is a YAML list"),
    Case("config_is_a_list_with_set", [*S, "--set", "name=x"], ("c.yaml", "must be a mapping"),
         config="- a\n", what="same, with --set"),
    Case("config_is_a_scalar", S, ("c.yaml", "must be a mapping", "str"), config="just words\n",
         what="config is a bare string"),
    Case("config_false", S, ("c.yaml", "must be a mapping", "bool"), config="false\n",
         what="config is `false` (was silently the defaults)"),
    Case("config_bad_yaml", S, ("c.yaml", "not valid YAML (line"), config="name: x\npretrain: [1, 2\n",
         what="YAML syntax error"),
    Case("config_missing", ["study", "{tmp}/nope.yaml"], ("nope.yaml", "config file not found"),
         what="config path does not exist"),
    Case("config_is_a_directory", ["study", "{tmp}"], ("not a file",), what="config path is a folder"),
    Case("unknown_keys_all_at_once", S, (
        "unknown keys", "'pretrain.epocs' (did you mean 'pretrain.epochs'?)",
        "'pretrain.batchsize' (did you mean 'pretrain.batch_size'?)", "'finetun' (did you mean 'finetune'?)"),
        config="pretrain: {epocs: 1, batchsize: 3}\nfinetun: {}\n", what="three misspelled keys"),
    Case("unknown_key_no_near_match", S, ("'zzz'", "known in the top level: name, output_dir"),
         config="zzz: 1\n", what="unknown key with no near match"),
    Case("unknown_key_via_set", [*S, "--set", "finetune.lrr=0.1"],
         ("'finetune.lrr' (did you mean 'finetune.lr'?)",), what="misspelled key in --set"),
    Case("section_is_not_a_mapping", [*S, "--set", "pretrain=3"], ("'pretrain' must be a mapping",),
         what="a section set to a number"),
    Case("unknown_method_arg", [*S, "--set", "pretrain.method_args={temperatur: 0.1}"],
         ("'pretrain.method_args.temperatur' (did you mean 'pretrain.method_args.temperature'?)",),
         what="misspelled method argument"),
    # ---- --set syntax
    Case("set_without_equals", [*S, "--set", "pretrain.epochs"], ("--set 'pretrain.epochs'", "key=value"),
         what="--set without '='"),
    Case("set_empty_key", [*S, "--set", "=3"], ("--set '=3'", "empty key"), what="--set with no key"),
    Case("set_bad_yaml_value", [*S, "--set", "pretrain.epochs=[1"], ("not valid YAML",),
         what="--set value that is broken YAML"),
    Case("set_into_a_value", [*S, "--set", "pretrain.epochs.x=3"], ("'epochs' is not a section",),
         what="--set a.b.c where a.b is a number"),
    # ---- values: zero, negative, wrong type, out of range
    Case("epochs_zero", [*S, "--set", "pretrain.epochs=0"], ("'pretrain.epochs' must be >= 1, got 0",),
         what="pretrain.epochs = 0"),
    Case("pretrain_epochs_negative", ["pretrain", "{cfg}", "--set", "pretrain.epochs=-1"],
         ("'pretrain.epochs' must be >= 1, got -1",), what="`medssl pretrain`, epochs = -1"),
    Case("batch_size_zero", [*S, "--set", "pretrain.batch_size=0"], ("'pretrain.batch_size' must be >= 2",),
         what="pretrain.batch_size = 0"),
    Case("batch_size_one", [*S, "--set", "finetune.batch_size=1"], ("'finetune.batch_size' must be >= 2",),
         what="finetune.batch_size = 1 (BatchNorm needs 2)"),
    Case("finetune_epochs_zero", [*S, "--set", "finetune.epochs=0"], ("'finetune.epochs' must be >= 1",),
         what="finetune.epochs = 0"),
    Case("fraction_zero", [*S, "--set", "finetune.fractions=[0]"],
         ("'finetune.fractions' must be in (0, 1], got 0.0",), what="label fraction 0"),
    Case("fraction_above_one", [*S, "--set", "finetune.fractions=[0.5, 1.5]"],
         ("'finetune.fractions' must be in (0, 1], got 1.5",), what="label fraction 1.5"),
    Case("fractions_empty", [*S, "--set", "finetune.fractions=[]"],
         ("'finetune.fractions' must have at least 1 item(s)",), what="no label fractions"),
    Case("seed_negative", [*S, "--set", "finetune.seeds=[-1]"], ("'finetune.seeds' must be in [0,",),
         what="negative seed"),
    Case("data_size_zero", [*S, "--set", "data.size=0"], ("'data.size' must be >= 1, got 0",),
         what="data.size = 0"),
    Case("width_negative", [*S, "--set", "model.width=-0.5"], ("'model.width' must be > 0",),
         what="model.width < 0"),
    Case("lr_zero", [*S, "--set", "pretrain.lr=0"], ("'pretrain.lr' must be > 0, got 0.0",),
         what="learning rate 0"),
    Case("lr_nan", [*S, "--set", "finetune.lr=.nan"], ("'finetune.lr' must be > 0, got nan",),
         what="learning rate NaN"),
    Case("warmup_negative", [*S, "--set", "pretrain.warmup_epochs=-1"],
         ("'pretrain.warmup_epochs' must be >= 0",), what="negative warm-up"),
    Case("max_seconds_zero", [*S, "--set", "pretrain.max_seconds=0"], ("'pretrain.max_seconds' must be > 0",),
         what="time budget 0"),
    Case("crop_zero", [*S, "--set", "segmentation.crop=[0, 0]"], ("'segmentation.crop' must be >= 1, got 0",),
         what="segmentation crop of 0"),
    Case("crop_one_axis", [*S, "--set", "segmentation.crop=[64]"],
         ("'segmentation.crop' must have 2 to 3 item(s), got 1",), what="crop with one size"),
    Case("sw_overlap_one", [*S, "--set", "segmentation.sw_overlap=1"],
         ("'segmentation.sw_overlap' must be in [0, 1), got 1.0",), what="sliding-window overlap 1"),
    Case("epochs_float", [*S, "--set", "pretrain.epochs=1.5"], ("'pretrain.epochs' must be int, got 1.5",),
         what="epochs = 1.5"),
    Case("epochs_bool", [*S, "--set", "pretrain.epochs=true"], ("'pretrain.epochs' must be int, got True",),
         what="epochs = true"),
    Case("several_problems_at_once", [*S, "--set", "pretrain.lr=-1", "--set", "data.size=0"],
         ("'data.size' must be >= 1", "'pretrain.lr' must be > 0"), what="two bad values: both reported"),
    Case("optimizer_typo", [*S, "--set", "pretrain.optimizer=adam"],
         ("'pretrain.optimizer' must be adamw or sgd, got 'adam' (did you mean 'adamw'?)",),
         what="optimizer adam (was found only after the run dir was made)"),
    Case("precision_typo", [*S, "--set", "engine.precision=b16"], ("(did you mean 'bf16'?)",),
         what="precision b16"),
    Case("fp16_on_cpu", [*S, "--set", "engine.precision=fp16"], ("engine.precision=fp16 is for CUDA GPUs",),
         what="fp16 on a machine without CUDA"),
    Case("device_cuda_missing", [*S, "--set", "engine.device=cuda"], ("engine.device=cuda", "no CUDA GPU"),
         what="engine.device=cuda on a machine without CUDA"),
    Case("device_unknown", [*S, "--set", "engine.device=tpu"], ("engine.device must be auto, cpu",),
         what="an unknown device"),
    Case("run_name_with_path", [*S, "--set", "name=../../etc"], ("'name' must be a plain folder name",),
         what="run name that escapes output_dir"),
    Case("unknown_method", [*S, "--set", "pretrain.method=simclrr"], ("unknown method 'simclrr'",),
         what="unknown pretext method"),
    Case("unknown_backbone", [*S, "--set", "model.backbone=resnet19"], ("unknown backbone 'resnet19'",),
         what="unknown backbone"),
    # ---- output locations
    Case("output_dir_is_a_file", [*S, "--set", "output_dir={tmp}/afile"], ("afile is a file",),
         setup=lambda t: write(t / "afile", "x"), what="output_dir is an existing file"),
    Case("output_dir_under_a_file", [*S, "--set", "output_dir={tmp}/afile/runs"], ("afile is a file",),
         setup=lambda t: write(t / "afile", "x"), what="output_dir inside a file"),
    Case("output_dir_not_writable", [*S, "--set", "output_dir=/proc/medssl-runs"], ("/proc is not writable",),
         exact=False, what="output_dir on a read-only file system"),
    Case("pretrain_out_is_a_file", ["pretrain", "{cfg}", "--out", "{tmp}/afile"], ("afile: is a file",),
         setup=lambda t: write(t / "afile", "x"), what="pretrain --out is a file"),
    Case("pretrain_out_exists", ["pretrain", "{cfg}", "--out", "{tmp}/old"], ("old: run directory exists",),
         setup=lambda t: (t / "old").mkdir(), what="pretrain --out exists, no --resume"),
    Case("pretrain_fails_inside_fit", ["pretrain", "{cfg}", "--set", "pretrain.batch_size=100000"],
         ("546 images are too few for batch size 100000",), trains=True,
         what="`medssl pretrain` failing after its run dir was made (the dir is removed)"),
    Case("study_fails_inside_fit", [*S, "--set", "pretrain.batch_size=100000"],
         ("546 images are too few for batch size 100000",), trains=True,
         what="study failing mid-run (only `<name>.incomplete` is left)"),
    Case("show_corruptions_out_in_a_file", ["show-corruptions", "{cfg}", "--out", "{tmp}/afile/x.png"],
         ("--out", "afile is a file"), setup=lambda t: write(t / "afile", "x"),
         what="figure path inside a file"),
    # ---- command line usage
    Case("usage_missing_config", ["study"], ("medssl study", "required: config"),
         what="`medssl study` without a config"),
    Case("usage_bad_n", ["show-corruptions", "{cfg}", "--n", "0"], ("--n", "positive integer, got '0'"),
         what="show-corruptions --n 0 (was a RuntimeError)"),
    Case("usage_unknown_command", ["trian"], ("invalid choice: 'trian'",), what="misspelled command"),
    # ---- MedMNIST files
    Case("dataset_typo", ["data", "info", "breastmnis"], ("unknown dataset 'breastmnis' (did you mean "
         "'breastmnist'?)",), what="`data info` with a misspelled flag"),
    Case("dataset_size_missing", [*S, "--set", "data.size=29"], ("no size 29; available: 28, 64, 128, 224",),
         what="image size that MedMNIST does not publish"),
    Case("data_path_missing", [*S, "--set", "data.path={tmp}/nowhere"], ("nowhere: no such file",),
         what="data.path does not exist"),
    Case("npz_garbage", [*S, "--set", "data.path={tmp}/x.npz"], ("x.npz: not a valid .npz file",),
         setup=lambda t: write(t / "x.npz", b"this is not a zip"), what="random bytes as .npz"),
    Case("npz_pickled", [*S, "--set", "data.path={tmp}/p.npz"], ("p.npz", "pickled data is never loaded"),
         setup=lambda t: write(t / "p.npz", pickled_array()),
         what="pickled object array as .npz (numpy's hint to unpickle is not relayed)"),
    Case("npz_missing_keys", [*S, "--set", "data.path={tmp}/k.npz"], ("k.npz: missing keys train_images",),
         setup=lambda t: np.savez(t / "k.npz", x=np.zeros(3)), what=".npz without the MedMNIST arrays"),
    Case("download_failed", [*S, "--set", "data.dataset=retinamnist"], (
        "retinamnist.npz not found (download failed: URLError", "and place it at <tmp>/empty_data/"),
        patch=offline, what="MedMNIST file absent and the download fails"),
    Case("checkpoint_garbage", [*S, "--set", "pretrain.checkpoint={tmp}/afile"],
         ("afile: not a readable safetensors checkpoint",), setup=lambda t: write(t / "afile", "x"),
         what="pretrain.checkpoint is not safetensors"),
    Case("hostile_resume", ["pretrain", "{cfg}", "--resume", "--set", "pretrain.max_seconds=0.1"],
         ("t-pretrain/checkpoint.safetensors",), setup=hostile_run_dir, trains=True,
         what="--resume over a hostile state.pt and a corrupt checkpoint"),
    # ---- label CSVs
    Case("csv_absolute_path", CSV,
         ("labels.csv:2: image path '/etc/passwd' is absolute",),
         setup=csv_dataset("/etc/passwd,0,p1\nb.png,1,p2"), what="CSV row with an absolute path"),
    Case("csv_leaves_root", CSV,
         ("labels.csv:3: image path '../c.yaml' leaves the dataset folder",),
         setup=csv_dataset("a.png,0,p1\n../c.yaml,1,p2"), what="CSV row with '..'"),
    Case("csv_missing_column", CSV,
         ("labels.csv: no column 'label' (columns: path, y)",),
         setup=csv_dataset("a.png,0", header="path,y"), what="CSV without the label column"),
    Case("csv_label_not_int", CSV,
         ("labels.csv:2: label 'benign' is not an integer",),
         setup=csv_dataset("a.png,benign,p1"), what="CSV label text"),
    Case("csv_label_multiline", CSV, ("labels.csv:2: label 'be\\nnign' is not an integer",),
         setup=csv_dataset('a.png,"be\nnign",p1'), what="CSV label with a quoted line break"),
    Case("csv_ragged_row", CSV,
         ("labels.csv:2: expected 3 fields",), setup=csv_dataset("a.png,0,p1,extra"),
         what="CSV row with an extra field"),
    Case("csv_not_utf8", CSV,
         ("labels.csv: not UTF-8",),
         setup=lambda t: write(t / "csvdata" / "labels.csv", b"path,label\n\xe9.png,1\n"),
         what="CSV in Latin-1"),
    Case("csv_one_class", CSV,
         ("labels must be 0..K-1 with K >= 2, found [0]",), setup=csv_dataset("a.png,0,p1\nb.png,0,p2"),
         what="CSV with a single class"),
    # ---- segmentation folders
    Case("seg_mask_in_colour", [*S, "--set", "task=segmentation", "--set", "data.path={tmp}/seg"],
         ("case_1.png: mask has colour channels",),
         setup=seg_dataset(lambda p: png(p, np.zeros((8, 8), np.uint8)),
                           lambda p: png(p, np.dstack([np.zeros((8, 8), np.uint8)] * 2
                                                      + [np.ones((8, 8), np.uint8)]))),
         what="segmentation mask saved as colour RGB"),
    Case("select_on_val_knn_segmentation", [*S, "--set", "task=segmentation", "--set", "data.path={tmp}/seg",
                                            "--set", "pretrain.select_on=val_knn"],
         ("pretrain.select_on: val_knn needs labelled validation images",),
         setup=seg_dataset(lambda p: png(p, np.zeros((8, 8), np.uint8)),
                           lambda p: png(p, np.zeros((8, 8), np.uint8))),
         what="choosing the pretraining epoch by validation kNN in a segmentation study"),
    Case("seg_corrupt_image", [*S, "--set", "task=segmentation", "--set", "data.path={tmp}/seg"],
         ("images/case_1.png: not a readable image",),
         setup=seg_dataset(lambda p: write(p, b"\x89PNG\r\n\x1a\n truncated"),
                           lambda p: png(p, np.zeros((8, 8), np.uint8))),
         what="truncated PNG in a segmentation folder"),
    Case("seg_mask_values", [*S, "--set", "task=segmentation", "--set", "data.path={tmp}/seg"],
         ("case_1.png: unexpected label values [7]",),
         setup=seg_dataset(lambda p: png(p, np.zeros((8, 8), np.uint8)),
                           lambda p: png(p, np.full((8, 8), 7, np.uint8))),
         what="mask value not in segmentation.label_values"),
]


def prepare(case: Case, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Write the config and the case's files; return the argv."""
    config = case.config.replace("{tmp}", str(tmp)) if isinstance(case.config, str) else case.config
    cfg = write(tmp / "c.yaml", config)
    if case.setup:
        case.setup(tmp)
    if case.patch:
        case.patch(monkeypatch, tmp)
    return [a.replace("{tmp}", str(tmp)).replace("{cfg}", str(cfg)) for a in case.argv]


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Run ``medssl`` in-process; return (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse
            code = stop.code
    return code, err.getvalue()


def shown(message: str, tmp: Path) -> str:
    """The message with machine-specific paths replaced, as in the doc."""
    out = message.replace(str(tmp), "<tmp>")
    return out.replace(REAL_DATA, "$MEDSSL_DATA_DIR") if REAL_DATA else out


def documented() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| `([a-z0-9_]+)` \| .* \| `(.*)` \|$", line)
        if m:
            rows[m.group(1)] = m.group(2).replace("\\|", "|")
    return rows


def study_modules() -> list:
    """The loaded medssl modules (study drivers included) that may hold a reference to ``fit``."""
    for name in ("medssl.studies", "medssl.studies.pretraining",
                 "medssl.studies.classification", "medssl.studies.segmentation"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    return [m for n, m in list(sys.modules.items()) if n.startswith("medssl") and m is not None]


study_modules()  # import torch and the study drivers at collection, not inside the first case


def isolate(case: Case, monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
    """No network, a scratch cache, and (unless the case needs it) no training: a bad input must
    fail before training, so a regressed check fails fast instead of training."""
    def refuse(*args, **kwargs):
        raise AssertionError("training started: the bad input was not caught")

    if not case.trains:
        for module in study_modules():
            if getattr(module, "fit", None) is trainer.fit:
                monkeypatch.setattr(module, "fit", refuse)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp / "xdg"))
    monkeypatch.setattr(mm, "_fetch", refuse)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line(case, tmp_path, monkeypatch):
    isolate(case, monkeypatch, tmp_path)
    argv = prepare(case, tmp_path, monkeypatch)
    before = {p for p in tmp_path.rglob("*")}
    code, err = run_cli(argv)
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("medssl: error: "), err
    assert "Traceback" not in err and "weights_only" not in err
    for needle in case.needles:
        assert needle.replace("<tmp>", str(tmp_path)) in lines[0], lines[0]
    new = {p for p in tmp_path.rglob("*")} - before
    runs = tmp_path / "runs"  # output_dir: only a `<name>.incomplete` run directory may appear in it
    finished = [p for p in new if p.is_dir() and p.is_relative_to(runs) and p != runs
                and not p.relative_to(runs).parts[0].endswith(".incomplete")]
    assert not finished, f"left behind: {finished}"
    assert not any(p.name in ("report.md", "encoder.safetensors") for p in new)
    assert not (tmp_path / "PWNED").exists(), "the hostile pickle was executed"
    if case.exact:
        doc = documented().get(case.id)
        stale = "docs/bad_inputs.md is stale: run python tests/test_bad_inputs.py"
        assert doc == shown(lines[0], tmp_path), stale


def test_the_table_is_big_and_ids_unique():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


def test_hostile_checkpoint_is_refused_not_executed_with_a_clean_message(tmp_path):
    """A real malicious pickle (torch.save of an object whose __reduce__ calls os.system) where
    resume reads its training state: checkpoints are safetensors only, nothing is unpickled."""
    import torch

    from medssl.engine.checkpoint import load_checkpoint
    from medssl.errors import MedsslError

    marker = tmp_path / "PWNED"
    torch.save({"step": 0, "payload": Evil(marker)}, tmp_path / "checkpoint.safetensors")
    with pytest.raises(MedsslError) as err:
        load_checkpoint(tmp_path / "checkpoint.safetensors")
    message = str(err.value)
    assert not marker.exists(), "the pickle payload ran"
    assert "checkpoint.safetensors: not a readable safetensors" in message and "\n" not in message
    assert "weights_only" not in message and "os.system" not in message and "posix" not in message


def render() -> str:
    """docs/bad_inputs.md from CASES: each case run in a scratch folder, its exact message shown."""
    mp = pytest.MonkeyPatch()
    rows = []
    try:
        for case in CASES:
            with tempfile.TemporaryDirectory() as d:
                tmp = Path(d)
                isolate(case, mp, tmp)
                code, err = run_cli(prepare(case, tmp, mp))
                mp.undo()
                argv = " ".join(a.replace("{cfg}", "c.yaml").replace("{tmp}", "<tmp>") for a in case.argv)
                line = shown(err.strip(), tmp).replace("|", "\\|")
                rows.append(f"| `{case.id}` | {case.what} | `medssl {argv}` | {code} | `{line}` |")
    finally:
        mp.undo()
    head = ["# Bad inputs and the exact message shown", "",
            "Generated by `python tests/test_bad_inputs.py` from the table in tests/test_bad_inputs.py, "
            "which checks every row (exit code 2, one line, no traceback, nothing finished left behind, "
            "and this exact text). `<tmp>` is the scratch folder; `c.yaml` is a small valid study config "
            "(breastmnist, output_dir `<tmp>/runs`) unless the row is about the config itself.", "",
            "| id | bad input | command | exit | message (stderr, one line) |", "|---|---|---|---|---|"]
    return "\n".join(head + rows) + "\n"


if __name__ == "__main__":
    DOC.write_text(render())
    print(f"wrote {DOC}")
