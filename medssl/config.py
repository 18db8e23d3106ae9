"""Study configuration: dataclasses with commented defaults, loaded from YAML with strict overrides.

Unknown keys (in the YAML or in ``--set key=value``) are errors, never silently ignored.
The resolved config is written to every run directory as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medssl.errors import MedsslError


@dataclass
class DataConfig:
    dataset: str = "breastmnist"  # MedMNIST flag (`medssl data list`)
    size: int = 28  # MedMNIST image size: 28 (or 64/128/224 for MedMNIST+)
    path: str | None = None  # explicit .npz file or folder; else $MEDSSL_DATA_DIR, then the cache
    positive_class: int = 1  # binary tasks: the class that sensitivity/specificity/FPR call positive
    # Classification from a label CSV instead of MedMNIST (e.g. DICOM slices, PNG/JPG folders):
    format: str = "medmnist"  # "medmnist" (.npz) or "csv" (path = CSV; else <data dir>/<dataset>/labels.csv)
    columns: list[str] = field(default_factory=lambda: ["path", "label", "patient_id"])  # csv column names
    window: str = "soft_tissue"  # csv DICOM: CT window preset (lung, soft_tissue, bone) or "none" (min-max)
    folds: int = 5  # csv: patient-level folds; test = test_fold, validation = the next fold, train = the rest
    test_fold: int = 0


@dataclass
class ModelConfig:
    backbone: str = "resnet18_small"  # registered backbone (`medssl models`)
    width: float = 1.0  # channel width multiplier (0.5 = half width)


@dataclass
class EngineConfig:
    precision: str = "auto"  # "auto" (bf16 where the CPU supports it), "bf16" or "fp32"
    channels_last: bool | None = None  # None: on with bf16, off in fp32 (see resolve_channels_last)
    log_every: int = 10  # optimisation steps between log lines
    checkpoint_every: int = 10  # pretraining epochs between checkpoints (and after the last)
    checkpoint_steps: int = 0  # also a checkpoint every this many steps, mid-epoch (0: epochs only)


@dataclass
class PretrainConfig:
    method: str = "simclr"  # registered method (`medssl methods`)
    epochs: int = 50
    batch_size: int = 128
    optimizer: str = "adamw"  # "adamw" or "sgd"
    lr: float = 2e-3  # peak learning rate after warm-up
    weight_decay: float = 1e-4
    warmup_epochs: float = 2.0
    method_args: dict[str, Any] = field(default_factory=dict)  # checked against the method's config
    checkpoint: str | None = None  # an encoder .safetensors to evaluate instead of pretraining
    max_seconds: float | None = None  # wall-clock budget: stop after the step that passes it (the
    # learning-rate schedule is still planned for `epochs`); for same-budget method comparisons


@dataclass
class FinetuneConfig:
    fractions: list[float] = field(default_factory=lambda: [0.1, 1.0])  # labelled train fractions
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    inits: list[str] = field(default_factory=lambda: ["ssl", "scratch"])
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    augment: bool = True  # light flips/crops while fine-tuning
    min_steps: int = 50  # small subsets still get this many optimisation steps
    knn: bool = True  # kNN and linear probe on frozen features (per init, fraction and seed)
    knn_k: int = 20


@dataclass
class SegmentationConfig:
    """``task: segmentation``: folders are relative to the dataset root (data.path, else
    $MEDSSL_DATA_DIR/<dataset>).

    Fine-tuning reuses ``finetune`` (fractions, seeds, inits, epochs, batch_size, lr, min_steps, augment).
    """

    images: str = "images"  # NIfTI volumes (3D) or PNG/JPG/TIFF images (2D)
    masks: str = "labels"  # label maps paired with images by file name
    unlabelled: str | None = None  # extra images for pretraining only (e.g. an unlabelled test folder)
    label_values: list[int] = field(default_factory=lambda: [0, 1])  # raw mask value of class 0, 1, ...
    class_names: list[str] = field(default_factory=lambda: ["foreground"])  # names of classes 1..K-1
    shape: list[int] | None = None  # pad/crop cases to this for training batches; None: the largest case
    spacing: list[float] | None = None  # 3D: resample to this voxel spacing (mm) first; None: keep
    clip_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])  # 3D per-volume clip
    crop: list[int] = field(default_factory=lambda: [128, 128])  # random training patch (per axis)
    sw_roi: list[int] | None = None  # sliding-window size at inference; None: crop
    sw_overlap: float = 0.25  # sliding-window overlap
    group_size: int = 1  # consecutive cases (natural file order) that form one split group
    max_cases: int | None = None  # use only the first N labelled cases (smoke tests)
    slice_axis: int | None = None  # 3D data as 2D slices along this axis (2D models); splits stay per volume
    folds: int = 5  # patient-level k-fold over labelled cases
    test_folds: list[int] = field(default_factory=lambda: [0])  # folds held out in turn; [0..4] = full CV
    val_fraction: float = 0.2  # of the non-test groups, for model selection (Dice)
    val_checks: int = 5  # validations per run (evenly spaced epochs, always the last)
    pretrain_pool: str = "all"  # "all" images (labels unused) or "train": without the test fold (one fold)
    freeze_encoder: bool = False  # ssl init: train the decoder only (encoder weights and BN stats fixed)
    encoder_lr_scale: float = 1.0  # ssl init: encoder learning rate = lr * this (0 < scale <= 1)
    load_decoder: bool = False  # also load decoder/head tensors from the pretraining checkpoint if present
    overlays: int = 2  # overlay PNGs per run (first test cases)
    network: str = "unet"  # fine-tuned model: "unet" (encoder + U-Net decoder) or "maskrcnn" (2D instance
    # route: the whole pretrained distortion_maskrcnn detector, fine-tuned on connected components)


@dataclass
class StudyConfig:
    name: str = "study"
    output_dir: str = "runs"
    seed: int = 0  # pretraining seed; fine-tuning seeds are in finetune.seeds
    task: str = "classification"  # "classification" (MedMNIST/CSV) or "segmentation" (see segmentation)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int -> float is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, inner[0], key, source)
    if origin is list:
        if not isinstance(value, list):
            raise MedsslError(f"{source}: '{key}' must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, key, source) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise MedsslError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise MedsslError(f"{source}: '{key}' must be {_type_name(tp)}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any], source: str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise MedsslError(f"{source}: '{prefix or 'top level'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"'{prefix}{unknown[0]}'"
        raise MedsslError(f"{source}: unknown key {where}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, source, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}", source)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"pretrain.epochs=5"`` -> (["pretrain", "epochs"], 5); the value is parsed as YAML."""
    if "=" not in text:
        raise MedsslError(f"--set '{text}': expected key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to the raw dict; the dataclass check catches unknown keys."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MedsslError(f"--set '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None, overrides: list[str] = ()) -> StudyConfig:
    """Load a study YAML (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    source = str(path) if path else "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MedsslError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            line = getattr(getattr(err, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise MedsslError(f"{path}: not valid YAML{where}") from err
    data = apply_overrides(data, list(overrides))
    return from_dict(StudyConfig, data, source)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
