"""Study configuration: dataclasses with commented defaults, loaded from YAML with strict overrides.

Unknown keys (in the YAML or in ``--set key=value``) are errors, never silently ignored.
The resolved config is written to every run directory as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml

from medssl.errors import MedsslError
from medssl.io import atomic_write


@dataclass(frozen=True)
class Check:
    """Allowed values of one config key (of every item, for a list): bounds, choices, list length."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()
    min_len: int = 0
    max_len: int | None = None
    plain_name: bool = False  # a folder name: not empty, no path separator, not "." or ".."

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed (None: allowed, or None as the value)."""
        if isinstance(value, list):
            if len(value) < self.min_len or (self.max_len is not None and len(value) > self.max_len):
                return f"must have {self._length()} item(s), got {len(value)}"
            return next((p for p in map(self._item, value) if p), None)
        return None if value is None else self._item(value)

    def _length(self) -> str:
        if self.max_len is None:
            return f"at least {self.min_len}"
        return str(self.max_len) if self.max_len == self.min_len else f"{self.min_len} to {self.max_len}"

    def _item(self, v: Any) -> str | None:
        if self.choices and v not in self.choices:
            close = difflib.get_close_matches(str(v), self.choices, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            options = ", ".join(self.choices[:-1]) + f" or {self.choices[-1]}"
            return f"must be {options}, got {v!r}{hint}"
        if self.plain_name and (not v or v in (".", "..") or "/" in v or "\\" in v):
            return f"must be a plain folder name (no '/', not '.' or '..'), got {v!r}"
        if isinstance(v, (int, float)) and not self._in_range(v):
            return f"must be {self._range()}, got {v!r}"
        return None

    def _in_range(self, v: float) -> bool:
        return math.isfinite(v) and all((
            self.ge is None or v >= self.ge, self.gt is None or v > self.gt,
            self.le is None or v <= self.le, self.lt is None or v < self.lt))

    def _range(self) -> str:
        ge, gt, le, lt = (None if v is None else _num(v) for v in (self.ge, self.gt, self.le, self.lt))
        low = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else None
        high = f"{le}]" if le is not None else f"{lt})" if lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
        return f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}" if high else "a finite number"


def _num(v: float | None) -> str:
    return str(int(v)) if v is not None and float(v).is_integer() else f"{v:g}"


# Declared value rules, shared by several keys.
POSITIVE = Check(gt=0)
AT_LEAST_1 = Check(ge=1)
AT_LEAST_0 = Check(ge=0)
BATCH = Check(ge=2)  # a batch of 1 breaks BatchNorm and contrastive losses
FRACTION = Check(gt=0, le=1)
SEED = Check(ge=0, le=2**32 - 1)  # numpy's seed range
OPTIMIZER = Check(choices=("adamw", "sgd"))
SIZES = Check(ge=1, min_len=2, max_len=3)  # one size per spatial axis


@dataclass
class DataConfig:
    dataset: str = "breastmnist"  # MedMNIST flag (`medssl data list`)
    size: Annotated[int, AT_LEAST_1] = 28  # MedMNIST image size: 28 (or 64/128/224 for MedMNIST+)
    path: str | None = None  # explicit .npz file or folder; else $MEDSSL_DATA_DIR, then the cache
    positive_class: Annotated[int, AT_LEAST_0] = 1  # binary tasks: the class sensitivity etc. call positive
    # Classification from a label CSV instead of MedMNIST (e.g. DICOM slices, PNG/JPG folders):
    # "medmnist" (.npz) or "csv" (path = CSV; else <data dir>/<dataset>/labels.csv); `medssl pretrain`
    # also takes "folder": every image or NIfTI volume under path, unlabelled, resized to `size`
    format: Annotated[str, Check(choices=("medmnist", "csv", "folder"))] = "medmnist"
    columns: Annotated[list[str], Check(min_len=2, max_len=3)] = field(
        default_factory=lambda: ["path", "label", "patient_id"])  # csv column names
    # csv DICOM: CT window preset (lung, soft_tissue, bone) or "none" (min-max)
    window: Annotated[str, Check(choices=("lung", "soft_tissue", "bone", "none"))] = "soft_tissue"
    # csv: patient-level folds; test = test_fold, validation = the next fold, train = the rest
    folds: Annotated[int, Check(ge=2)] = 5
    test_fold: Annotated[int, AT_LEAST_0] = 0
    # where preprocessed images live: "memory", "disk" (a persistent memory-mapped cache under
    # $MEDSSL_CACHE_DIR, for data larger than RAM) or "auto" (disk above half the available memory)
    storage: Annotated[str, Check(choices=("auto", "memory", "disk"))] = "auto"
    workers: Annotated[int, AT_LEAST_0] = 2  # DataLoader processes that read/decode files and batches
    dicom_series: bool = False  # format folder: every folder of .dcm slices is one 3D volume


@dataclass
class ModelConfig:
    backbone: str = "resnet18_small"  # registered backbone (`medssl models`)
    width: Annotated[float, POSITIVE] = 1.0  # channel width multiplier (0.5 = half width)


@dataclass
class EngineConfig:
    device: str = "auto"  # "auto" (CUDA, else MPS, else CPU), "cpu", "cuda", "cuda:N" or "mps"
    # "auto": bf16 where the device supports it, else fp16 on CUDA (with loss scaling), else fp32
    precision: Annotated[str, Check(choices=("auto", "bf16", "fp16", "fp32"))] = "auto"
    channels_last: bool | None = None  # None: on with bf16/fp16, off in fp32 (see resolve_channels_last)
    log_every: Annotated[int, AT_LEAST_1] = 10  # optimisation steps between log lines
    # pretraining epochs between checkpoints (and after the last)
    checkpoint_every: Annotated[int, AT_LEAST_1] = 10
    # also a checkpoint every this many steps, mid-epoch (0: epochs only)
    checkpoint_steps: Annotated[int, AT_LEAST_0] = 0
    # pretraining: micro-batches per optimizer step (gradient accumulation; batch_size stays the step's
    # global batch, each micro-batch is batch_size / (accumulate x processes))
    accumulate: Annotated[int, AT_LEAST_1] = 1
    sync_batchnorm: bool = False  # under torchrun on CUDA: BatchNorm statistics over the global batch
    # torch.compile (inductor) the model's parts in place (medssl.engine.compile_parts): a one-off
    # compile per shape and mode, then faster steps where kernels fuse (GPUs); checkpoints unchanged
    compile: bool = False
    # mirror the log.jsonl rows to these trackers (run_dir/tensorboard); needs medssl[tracking]
    tracking: Annotated[list[str], Check(choices=("tensorboard", "mlflow"))] = field(default_factory=list)


@dataclass
class PretrainConfig:
    method: str = "simclr"  # registered method (`medssl methods`)
    epochs: Annotated[int, AT_LEAST_1] = 50
    batch_size: Annotated[int, BATCH] = 128
    optimizer: Annotated[str, OPTIMIZER] = "adamw"
    lr: Annotated[float, POSITIVE] = 2e-3  # peak learning rate after warm-up
    weight_decay: Annotated[float, AT_LEAST_0] = 1e-4
    warmup_epochs: Annotated[float, AT_LEAST_0] = 2.0
    method_args: dict[str, Any] = field(default_factory=dict)  # checked against the method's config
    # pretraining seed (initial weights, batch order, augmentation); null: the study's seed. Another
    # value re-pretrains with the same splits and labelled subsets: pretraining-seed variation
    seed: Annotated[int | None, SEED] = None
    checkpoint: str | None = None  # an encoder .safetensors to evaluate instead of pretraining
    # cross-dataset pretraining: the unlabelled pool is this MedMNIST flag's training split (or every
    # image under this folder) instead of the study's own training images; resized to data.size
    dataset: str | None = None
    # wall-clock budget: the learning-rate schedule is planned from the measured throughput to end
    # in it (at most `epochs`; planned again at 10% and 25% of it), and training stops after the
    # step that passes it; for same-budget method comparisons
    max_seconds: Annotated[float | None, POSITIVE] = None
    # every this many epochs (0: never) also save the encoder as snapshots/encoder_epochNNNN.safetensors
    # (loadable like encoder.safetensors): choose the pretraining length on validation data afterwards
    snapshot_every: Annotated[int, AT_LEAST_0] = 0
    # the encoder kept: "last" (the end of training) or "val_knn": the epoch (0 = the encoder before
    # training) with the best leave-one-out kNN AUC among the validation images (needs their labels:
    # a classification study or a MedMNIST pool); the last one is kept as encoder_last.safetensors
    select_on: Annotated[str, Check(choices=("last", "val_knn"))] = "last"
    select_every: Annotated[int, AT_LEAST_1] = 1  # epochs between validation scores (select_on: val_knn)
    # select_on val_knn: stop once the best epoch lies this share of the planned steps behind (0: never)
    patience: Annotated[float, Check(ge=0, le=1)] = 0.0


@dataclass
class FinetuneConfig:
    fractions: Annotated[list[float], Check(gt=0, le=1, min_len=1)] = field(
        default_factory=lambda: [0.1, 1.0])  # labelled train fractions
    seeds: Annotated[list[int], Check(ge=0, le=2**32 - 1, min_len=1)] = field(default_factory=lambda: [0, 1])
    inits: Annotated[list[str], Check(choices=("ssl", "scratch"), min_len=1)] = field(
        default_factory=lambda: ["ssl", "scratch"])
    epochs: Annotated[int, AT_LEAST_1] = 30
    batch_size: Annotated[int, BATCH] = 64
    optimizer: Annotated[str, OPTIMIZER] = "adamw"
    lr: Annotated[float, POSITIVE] = 1e-3
    weight_decay: Annotated[float, AT_LEAST_0] = 1e-4
    warmup_epochs: Annotated[float, AT_LEAST_0] = 1.0
    augment: bool = True  # light flips/crops while fine-tuning
    min_steps: Annotated[int, AT_LEAST_0] = 50  # small subsets still get this many optimisation steps
    # the fine-tuning recipe (chosen on validation splits: README "Fine-tuning recipe"); the head
    # init, the encoder's lr scale and layer decay apply to pretrained encoders only (scratch
    # starts from a random head and trains at lr)
    head_init: Annotated[str, Check(choices=("random", "probe"))] = "probe"  # probe: LP-FT
    encoder_lr_scale: Annotated[float, POSITIVE] = 1.0  # backbone lr = lr x this (head: lr)
    layer_decay: Annotated[float, FRACTION] = 1.0  # x this per backbone stage below the head
    # early stopping: stop once validation AUC has not improved for this share of the planned
    # steps (0: train all epochs); the best validation epoch is kept either way
    patience: Annotated[float, Check(ge=0, le=1)] = 0.0
    knn: bool = True  # kNN and linear probe on frozen features (per init, fraction and seed)
    knn_k: Annotated[int, AT_LEAST_1] = 20
    # second test sets with the same classes (MedMNIST flags, or "flag=path.npz"): every fine-tuned
    # model is also scored on their test split (row keys "<metric>@<name>")
    extra_test: list[str] = field(default_factory=list)


@dataclass
class SegmentationConfig:
    """``task: segmentation``: folders are relative to the dataset root (data.path, else
    $MEDSSL_DATA_DIR/<dataset>).

    Fine-tuning reuses ``finetune`` (fractions, seeds, inits, epochs, batch_size, lr, min_steps, augment).
    """

    images: str = "images"  # NIfTI volumes (3D) or PNG/JPG/TIFF images (2D)
    masks: str = "labels"  # label maps paired with images by file name
    unlabelled: str | None = None  # extra images for pretraining only (e.g. an unlabelled test folder)
    label_values: Annotated[list[int], Check(min_len=2)] = field(
        default_factory=lambda: [0, 1])  # raw mask value of class 0, 1, ...
    class_names: Annotated[list[str], Check(min_len=1)] = field(
        default_factory=lambda: ["foreground"])  # names of classes 1..K-1
    # pad/crop cases to this for training batches; None: the largest case
    shape: Annotated[list[int] | None, SIZES] = None
    # 3D: resample to this voxel spacing (mm) first; None: keep
    spacing: Annotated[list[float] | None, Check(gt=0, min_len=2, max_len=3)] = None
    clip_percentiles: Annotated[list[float], Check(ge=0, le=100, min_len=2, max_len=2)] = field(
        default_factory=lambda: [0.5, 99.5])  # 3D per-volume clip
    crop: Annotated[list[int], SIZES] = field(default_factory=lambda: [128, 128])  # random training patch
    sw_roi: Annotated[list[int] | None, SIZES] = None  # sliding-window size at inference; None: crop
    sw_overlap: Annotated[float, Check(ge=0, lt=1)] = 0.25  # sliding-window overlap
    group_size: Annotated[int, AT_LEAST_1] = 1  # consecutive cases (natural file order) that form one group
    max_cases: Annotated[int | None, AT_LEAST_1] = None  # use only the first N labelled cases (smoke tests)
    # 3D data as 2D slices along this axis (2D models); splits stay per volume
    slice_axis: Annotated[int | None, Check(ge=0, le=2)] = None
    folds: Annotated[int, Check(ge=2)] = 5  # patient-level k-fold over labelled cases
    test_folds: Annotated[list[int], Check(ge=0, min_len=1)] = field(
        default_factory=lambda: [0])  # folds held out in turn; [0..4] = full CV
    val_fraction: Annotated[float, Check(gt=0, lt=1)] = 0.2  # of the non-test groups, for model selection
    val_checks: Annotated[int, AT_LEAST_1] = 5  # validations per run (evenly spaced epochs, always the last)
    # "all" images (labels unused) or "train": without the test fold (one fold)
    pretrain_pool: Annotated[str, Check(choices=("all", "train"))] = "all"
    freeze_encoder: bool = False  # ssl init: train the decoder only (encoder weights and BN stats fixed)
    encoder_lr_scale: Annotated[float, FRACTION] = 1.0  # ssl init: encoder learning rate = lr * this
    # ssl init: the encoder's learning rate is 0 for this share of the planned steps, so that the
    # random decoder learns on the pretrained features first (the dense analogue of LP-FT)
    decoder_warmup: Annotated[float, Check(ge=0, lt=1)] = 0.0
    load_decoder: bool = False  # also load decoder/head tensors from the pretraining checkpoint if present
    overlays: Annotated[int, AT_LEAST_0] = 2  # overlay PNGs per run (first test cases)
    # fine-tuned model: "unet" (encoder + U-Net decoder) or "maskrcnn" (2D instance route: the whole
    # pretrained distortion_maskrcnn detector, fine-tuned on connected components)
    network: Annotated[str, Check(choices=("unet", "maskrcnn"))] = "unet"


@dataclass
class GridConfig:
    """A benchmark grid: one study per dataset x method, run one after another into
    ``<output_dir>/<name>/<dataset>_<method>/`` and reported together. Scratch is trained once per
    dataset (in its first method's study)."""

    datasets: list[str] = field(default_factory=list)  # MedMNIST flags; empty: no grid
    # pretext methods; "genesis+simclr" is their combination with equal loss weights
    methods: list[str] = field(default_factory=list)
    # `--set` overrides per dataset, per method or per "dataset/method" (applied in that order), e.g.
    # {adrenalmnist3d: ["model.backbone=resnet10"], genesis+simclr: ["pretrain.method_args={...}"]}
    overrides: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class StudyConfig:
    name: Annotated[str, Check(plain_name=True)] = "study"  # run directory: <output_dir>/<name>
    output_dir: str = "runs"
    # study seed: the splits and folds, and pretraining unless pretrain.seed is set; fine-tuning
    # seeds (and the labelled subsets they draw) are in finetune.seeds
    seed: Annotated[int, SEED] = 0
    # "classification" (MedMNIST/CSV) or "segmentation" (see segmentation)
    task: Annotated[str, Check(choices=("classification", "segmentation"))] = "classification"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    grid: GridConfig = field(default_factory=GridConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int -> float is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if not isinstance(value, list):
            raise MedsslError(f"'{key}' must be a list, got {_short(value)}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise MedsslError(f"'{key}' must be a mapping, got {_short(value)}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise MedsslError(f"'{key}' must be {_type_name(tp)}, got {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown(key: Any, names: list[str], prefix: str) -> str:
    """``'pretrain.epoch' (did you mean 'pretrain.epochs'?)``, or the known keys of the section."""
    close = difflib.get_close_matches(str(key), names, n=1)
    if close:
        return f"{_short(f'{prefix}{key}')} (did you mean '{prefix}{close[0]}'?)"
    return f"{_short(f'{prefix}{key}')} (known in {prefix[:-1] or 'the top level'}: {', '.join(names)})"


def _build(cls: type, data: Any, prefix: str, problems: list[str], unknown: list[str]) -> Any:
    """Build dataclass ``cls`` from ``data``; collect every problem and unknown key (no raise)."""
    if not isinstance(data, dict):
        where = f"'{prefix[:-1]}'" if prefix else "the config"
        problems.append(f"{where} must be a mapping of keys, got {_short(data)}")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    checks = {n: t.__metadata__[0] for n, t in typing.get_type_hints(cls, include_extras=True).items()
              if typing.get_origin(t) is Annotated}
    unknown += [_unknown(k, list(fields), prefix) for k in data if k not in fields]
    kwargs = {}
    for name, value in data.items():
        if name not in fields:
            continue
        key, tp = f"{prefix}{name}", hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{key}.", problems, unknown)
            continue
        try:
            kwargs[name] = _coerce(value, tp, key)
        except MedsslError as err:
            problems.append(str(err))
            continue
        problem = checks[name].problem(kwargs[name]) if name in checks else None
        if problem:
            problems.append(f"'{key}' {problem}")
    return None if problems or unknown else cls(**kwargs)


def from_dict(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; every unknown key, wrong type and value out of
    range is reported at once, in one line."""
    problems: list[str] = []
    unknown: list[str] = []
    obj = _build(cls, data, prefix, problems, unknown)
    if unknown:
        problems.insert(0, f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    if problems:
        raise MedsslError(f"{source}: {'; '.join(problems)}")
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"pretrain.epochs=5"`` -> (["pretrain", "epochs"], 5); the value is parsed as YAML."""
    if "=" not in text:
        raise MedsslError(f"--set {_short(text)}: expected key=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise MedsslError(f"--set {_short(text)}: empty key name before '='")
    try:
        return path, yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError) as err:
        raise MedsslError(f"--set {_short(text)}: the value is not valid YAML") from err


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to the raw dict; the dataclass check catches unknown keys."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MedsslError(f"--set {_short(text)}: {_short(part)} is not a section")
        node[path[-1]] = value
    return data


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; unreadable, non-UTF-8 or invalid YAML is a one-line error."""
    if not path.exists():
        raise MedsslError(f"{path}: config file not found")
    if not path.is_file():
        raise MedsslError(f"{path}: not a file (a config YAML is expected)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise MedsslError(f"{path}: not UTF-8 text (byte {err.start}); save the config as UTF-8") from err
    except OSError as err:
        raise MedsslError(f"{path}: cannot read the config ({err.strerror})") from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise MedsslError(f"{path}: not valid YAML{where}") from err
    except RecursionError as err:
        raise MedsslError(f"{path}: not valid YAML (nested too deeply)") from err


def load_config(path: str | Path | None, overrides: list[str] = ()) -> StudyConfig:
    """Load a study YAML (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    data: Any = {}
    source = str(path) if path else "defaults"
    if path is not None:
        data = read_yaml(Path(path))
        data = {} if data is None else data  # an empty file: all defaults
        if not isinstance(data, dict):
            raise MedsslError(f"{path}: the config must be a mapping of keys (key: value lines), "
                              f"got {type(data).__name__}")
    data = apply_overrides(data, list(overrides))
    return from_dict(StudyConfig, data, source)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: Path) -> None:
    """Write ``cfg`` as YAML, atomically (a resume compares against it)."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
