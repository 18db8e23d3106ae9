"""Use a pretrained encoder outside medssl: export it (safetensors + JSON + checked ONNX), embed
images into feature files, and load weights saved by another tool.

- :func:`export_encoder` (``medssl export``): ``encoder.safetensors``, ``encoder.json`` and
  ``encoder.onnx``, whose outputs are checked against PyTorch's with onnxruntime before it is kept.
- :func:`embed` (``medssl embed``): features ``[N, F]`` of a MedMNIST flag or ``.npz``, a folder of
  images/volumes or a label CSV, as ``.npy`` plus a ``.json`` of what each row is.
- :func:`load_foreign_weights`: a state dict from another tool (``module.``/``backbone.``... prefixes)
  into an encoder, listing the missing and unexpected keys.

Every file is written atomically (:func:`medssl.io.atomic_write`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medssl import __version__
from medssl.api import Encoder, load_encoder
from medssl.data.folder import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    list_files,
    read_any_image,
    read_label_csv,
    resize_uint8,
    spatial_kind,
)
from medssl.data.pool import folder_pool, resize_batch
from medssl.data.types import SPLITS
from medssl.data.volume import NIFTI_SUFFIXES
from medssl.engine.precision import resolve_device
from medssl.errors import MedsslError
from medssl.io import atomic_write, check_writable_dir

RTOL = 1e-4  # ONNX check: max |onnx - torch| <= RTOL * max(1, max |torch|), fp32 on the CPU
CHECK_BATCH = 3  # images in the check's random batch (the export's example has 2: B is really dynamic)
FOREIGN_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
_SHOW = 5  # key names shown per list in load_foreign_weights' summary


# --------------------------------------------------------------------------- export


def export_encoder(encoder_path: str | Path, out_dir: str | Path, *, onnx: bool = True,
                   opset: int | None = None) -> dict[str, Path]:
    """Write ``out_dir/encoder.safetensors``, ``encoder.json`` and (``onnx``) a checked ``encoder.onnx``
    (an ``encoder.onnx`` of an earlier export is removed first, so it can never describe another encoder).

    The ONNX model maps float32 ``x [B, C, *S]`` in [0, 1] to ``features [B, num_features]``; ``B`` is
    dynamic, ``S`` is fixed at ``config.size`` per side. It is kept only if onnxruntime's output on a
    random batch matches PyTorch's fp32 output (see :func:`check_onnx`); otherwise a MedsslError.

    Returns:
        ``{"safetensors": path, "json": path[, "onnx": path]}``.
    """
    out_dir = Path(out_dir)
    if out_dir.is_file():
        raise MedsslError(f"{out_dir}: is a file; --out must be a directory")
    check_writable_dir(out_dir, "--out")
    encoder = load_encoder(encoder_path)
    if onnx:
        _check_onnx_installed()
    files, report = {}, None
    (out_dir / "encoder.onnx").unlink(missing_ok=True)  # never leave an earlier export's ONNX beside
    if onnx:
        files["onnx"], report = out_dir / "encoder.onnx", {}
        atomic_write(files["onnx"], lambda tmp: report.update(_export_checked(encoder, Path(tmp), opset,
                                                                              files["onnx"])))
    files["safetensors"] = encoder.save(out_dir / "encoder.safetensors")
    files["json"] = out_dir / "encoder.json"
    text = json.dumps(encoder_card(encoder, report), indent=2) + "\n"
    atomic_write(files["json"], lambda tmp: Path(tmp).write_text(text))
    return files


def encoder_card(encoder: Encoder, onnx_report: dict[str, Any] | None) -> dict[str, Any]:
    """The content of ``encoder.json``: config, feature size, input convention, version, ONNX facts."""
    cfg = encoder.config
    spatial = ["D", "H", "W"][3 - cfg.spatial_dims:]
    card: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "num_features": encoder.num_features,
        "input": {"shape": ["B", "C", *spatial], "dtype": "float32", "range": [0.0, 1.0],
                  "channels": cfg.in_channels, "size": cfg.size,
                  "note": "uint8 images divided by 255; pretrained at size per spatial side"},
        "output": {"shape": ["B", "num_features"], "dtype": "float32",
                   "pooling": "global average (CNNs) or the CLS token (ViT)"},
        "weights": "encoder.safetensors (config in its metadata; medssl.load_encoder reads it)",
        "medssl_version": __version__,
        "torch_version": torch.__version__,
    }
    if onnx_report is not None:
        card["onnx"] = {"file": "encoder.onnx", "input_name": "x", "output_name": "features",
                        "dynamic_axes": {"x": [0], "features": [0]},
                        "fixed_input_shape": [cfg.in_channels, *[cfg.size] * cfg.spatial_dims],
                        "note": "batch size is dynamic; channels and spatial size are fixed", **onnx_report}
    return card


def _export_checked(encoder: Encoder, path: Path, opset: int | None, name: Path) -> dict[str, Any]:
    """Export ``encoder`` to ``path`` (ONNX), then :func:`check_onnx` it (errors name ``name``); returns
    what ``encoder.json`` records."""
    cfg = encoder.config
    example = torch.rand(2, cfg.in_channels, *[cfg.size] * cfg.spatial_dims,
                         generator=torch.Generator().manual_seed(0))
    # torch 2.14's default exporter (dynamo=True: torch.export, then onnxscript) handles medssl's
    # MONAI ResNets and ViT in 2D and 3D, with matching outputs (tests/test_export.py). The legacy
    # TorchScript exporter (dynamo=False) works too but is deprecated and warns about the conv guard's
    # Python shape check being traced as a constant; here that constant is right, since S is fixed.
    # The example batch is 2: torch.export specialises dimensions of size 1.
    try:
        torch.onnx.export(encoder.eval(), (example,), str(path), input_names=["x"], output_names=["features"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                          external_data=False, verbose=False)
    except Exception as err:  # torch.export / onnxscript errors are long; keep the first line
        first = " ".join(str(err).split())[:200]
        raise MedsslError(f"{cfg.backbone}: ONNX export failed ({type(err).__name__}: {first}); "
                          "export without ONNX (--no-onnx)") from err
    import onnx as onnx_lib

    opsets = {o.domain or "ai.onnx": o.version for o in onnx_lib.load(str(path), load_external_data=False)
              .opset_import}
    max_diff, max_ref = check_onnx(path, encoder, name=name)
    return {"opset": opsets.get("ai.onnx"), "exporter": "torch.onnx.export (dynamo)",
            "check": {"runtime": "onnxruntime CPUExecutionProvider", "batch": CHECK_BATCH,
                      "tolerance": f"max abs diff <= {RTOL:g} * max(1, max |torch|)",
                      "max_abs_diff": max_diff, "max_abs_torch": max_ref}}


def _check_onnx_installed() -> None:
    absent = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if absent:
        raise MedsslError(f"ONNX export needs {', '.join(absent)}: pip install 'medssl[export]' "
                          "(or export without ONNX: --no-onnx)")


def check_onnx(path: str | Path, encoder: Encoder, batch: int = CHECK_BATCH, seed: int = 1,
               name: str | Path | None = None) -> tuple[float, float]:
    """Run ``path`` with onnxruntime (CPU) and ``encoder`` in fp32 on one random batch ``[batch, C, *S]``.

    ``name``: the file named in errors (default ``path``; export checks a temporary file first).

    Returns:
        (max abs difference, max abs PyTorch output).

    Raises:
        MedsslError: naming the file and the difference when it exceeds ``RTOL * max(1, max|torch|)``.
    """
    cfg = encoder.config
    x = torch.rand(batch, cfg.in_channels, *[cfg.size] * cfg.spatial_dims,
                   generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref = encoder.cpu().float().eval()(x).numpy()
    got, name = _run_onnx(Path(path), x.numpy()), name or path
    if got.shape != ref.shape:
        raise MedsslError(f"{name}: ONNX output has shape {list(got.shape)}, PyTorch {list(ref.shape)}")
    diff, scale = float(np.abs(got - ref).max()), float(np.abs(ref).max())
    if not diff <= RTOL * max(1.0, scale):  # also catches NaN
        raise MedsslError(f"{name}: ONNX output differs from PyTorch by up to {diff:.3g} (allowed "
                          f"{RTOL:g} * max(1, {scale:.3g}))")
    return diff, scale


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime's output for float32 ``x`` on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


# --------------------------------------------------------------------------- embed


def embed(encoder_path: str | Path, data: str | Path, out: str | Path, *, batch_size: int = 256,
          device: str = "auto", size: int | None = None) -> Path:
    """Write the features ``[N, num_features]`` (float32 ``.npy``) of every image of ``data`` to ``out``
    and what each row is to ``out`` with ``.json`` (rows: split/index/label, file, or file/label/group).

    Args:
        data: a MedMNIST flag (all splits: train, val, test), a MedMNIST-style ``.npz``, a folder of
            images or NIfTI volumes (natural file order) or a label CSV ``path,label[,patient_id]``
            (CSV order; patient ids appear only as their pseudonym, ``group``).
        size: side the images are resized to (default the encoder's ``config.size``).
        device: ``auto | cpu | cuda | cuda:N | mps``; features are computed in fp32.
    """
    out = _check_out(Path(out))
    encoder = load_encoder(encoder_path)
    size = size or encoder.config.size
    images, rows, source = read_embed_data(data, encoder, size)
    feats = features(encoder, images, size, batch_size, device)
    meta = {"data": source, "size": size, "num_features": encoder.num_features,
            "encoder": dataclasses.asdict(encoder.config), "medssl_version": __version__, "rows": rows}
    text = json.dumps(meta, indent=1) + "\n"
    atomic_write(out, lambda tmp: _save_npy(tmp, feats))
    atomic_write(out.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))
    return out


def _check_out(out: Path) -> Path:
    if out.is_dir():
        raise MedsslError(f"{out}: is a directory; --out must be a .npy file")
    if out.suffix.lower() != ".npy":
        raise MedsslError(f"{out}: unknown extension '{out.suffix}'; --out must be a .npy file")
    check_writable_dir(out.parent, "--out")
    return out


def _save_npy(tmp: str, array: np.ndarray) -> None:
    with open(tmp, "wb") as f:  # np.save(str) would append ".npy" to the temporary name
        np.save(f, array)


def features(encoder: Encoder, images: torch.Tensor, size: int, batch_size: int = 256,
             device: str = "auto") -> np.ndarray:
    """uint8 ``[N, C, *S]`` -> float32 features ``[N, num_features]`` (resized to ``size``, fp32)."""
    dev = resolve_device(device)
    encoder = encoder.to(dev).float().eval()
    out = []
    with torch.inference_mode():
        for chunk in images.split(batch_size):
            x = resize_batch(chunk, size).to(dev).float() / 255
            out.append(encoder(x).float().cpu())
    return torch.cat(out).numpy()


def read_embed_data(data: str | Path, encoder: Encoder, size: int
                    ) -> tuple[torch.Tensor, list[dict[str, Any]], str]:
    """(uint8 images ``[N, C, *S]``, one dict per row, a description of the source) for :func:`embed`."""
    path = Path(data)
    cfg = encoder.config
    if path.is_dir():
        images, rows = _read_folder_rows(path, cfg.spatial_dims, size)
    elif path.is_file() and path.suffix.lower() == ".npz":
        images, rows = _read_npz(path, cfg.spatial_dims)
    elif path.is_file() and path.suffix.lower() == ".csv":
        images, rows = _read_csv(path, cfg.spatial_dims, size)
    elif path.exists():
        raise MedsslError(f"{path}: unknown kind of data '{path.suffix}'; expected a folder, an .npz, "
                          "a .csv label file or a MedMNIST flag")
    elif isinstance(data, Path) or "/" in str(data) or "\\" in str(data) or path.suffix:
        raise MedsslError(f"{path}: data not found")
    else:
        images, rows = _read_flag(str(data), size)
    if images.dim() - 2 != cfg.spatial_dims or images.shape[1] != cfg.in_channels:
        raise MedsslError(f"{data}: images are {images.dim() - 2}D with {images.shape[1]} channel(s); the "
                          f"encoder takes {cfg.spatial_dims}D with {cfg.in_channels}")
    return images, rows, str(data)


def _read_folder_rows(folder: Path, dims: int, size: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    files = list_files(folder, NIFTI_SUFFIXES + IMAGE_SUFFIXES + DICOM_SUFFIXES, recursive=True)
    if spatial_kind(files) != dims:
        raise MedsslError(f"{folder}: holds {spatial_kind(files)}D images; the encoder is {dims}D")
    rows = [{"file": p.relative_to(folder).as_posix()} for p in files]  # the pool's order
    return folder_pool(folder, size, storage="memory").images, rows


def _read_csv(csv_path: Path, dims: int, size: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    if dims != 2:
        raise MedsslError(f"{csv_path}: a label CSV lists 2D images; the encoder is {dims}D")
    rows = read_label_csv(csv_path)
    images = np.stack([resize_uint8(read_any_image(r.path), size) for r in rows])[:, None]
    meta = [{"file": r.path.relative_to(csv_path.parent).as_posix(), "label": r.label, "group": r.group}
            for r in rows]  # group: the patient id's pseudonym (or the file stem), never the id
    return torch.from_numpy(images), meta


def _read_flag(flag: str, size: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """All splits of a MedMNIST dataset, at the published size nearest above ``size`` (else the largest)."""
    from medssl.data.medmnist import available_sizes, load_medmnist

    sizes = available_sizes(flag)  # an unknown flag: "unknown dataset ... (did you mean ...)"
    data = load_medmnist(flag, next((s for s in sizes if s >= size), sizes[-1]))
    return _splits_rows({s: (data.split(s).images, data.split(s).labels.numpy()) for s in SPLITS})


def _read_npz(path: Path, dims: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """A MedMNIST-style ``.npz`` (``{train,val,test}_{images,labels}``, uint8 images ``[N, *S]`` or
    2D ``[N, H, W, C]``) of any flag or size."""
    from medssl.data.medmnist import _read_arrays  # its one-line errors for corrupt or pickled files

    arrays = _read_arrays(path)
    splits = {}
    for s in SPLITS:
        images, labels = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        if images.dtype != np.uint8 or images.ndim not in ((3, 4) if dims == 2 else (4,)):
            raise MedsslError(f"{path}: {s}_images must be uint8 [N, {'D, ' * (dims == 3)}H, W"
                              f"{', C' * (dims == 2)}], got {images.dtype} {list(images.shape)}")
        images = images[:, None] if images.ndim == dims + 1 else np.moveaxis(images, -1, 1)
        if len(labels) != len(images):
            raise MedsslError(f"{path}: {len(labels)} {s}_labels for {len(images)} {s}_images")
        splits[s] = (torch.from_numpy(np.ascontiguousarray(images)), labels)
    return _splits_rows(splits)


def _splits_rows(splits: dict[str, tuple[torch.Tensor, np.ndarray]]
                 ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Concatenate splits (in SPLITS order); rows carry split, index within it and label."""
    rows = [{"split": s, "index": i, "label": _label(y)}
            for s, (_, labels) in splits.items() for i, y in enumerate(labels)]
    return torch.cat([images for images, _ in splits.values()]), rows


def _label(y: np.ndarray | int) -> int | list[int]:
    """An int for single-label rows (also ``[1]``-shaped), a list of ints for multi-label rows."""
    y = np.asarray(y).reshape(-1)
    return int(y[0]) if y.size == 1 else [int(v) for v in y]


# --------------------------------------------------------------------------- foreign weights


def load_foreign_weights(encoder: nn.Module, state_dict: dict[str, torch.Tensor],
                         strict: bool = False) -> tuple[list[str], list[str]]:
    """Load another tool's state dict into ``encoder`` (an :class:`~medssl.api.Encoder`: its backbone).

    Each key loses leading ``module.``, ``backbone.``, ``encoder.``, ``model.`` until it names one of the
    encoder's keys (or no such prefix is left). A summary (counts and the first names) is printed.

    Returns:
        (missing: encoder keys not in ``state_dict``, unexpected: ``state_dict`` keys, as given, that
        match none). With ``strict=True`` either list non-empty is a MedsslError (nothing loaded).
    """
    target = encoder.backbone if isinstance(encoder, Encoder) else encoder
    own = target.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state_dict.items():
        name = _strip(key, own)
        if name not in own:
            unexpected.append(key)
        elif name in mapped:
            raise MedsslError(f"two weights map to '{name}' after removing prefixes (one is '{key}')")
        elif tuple(value.shape) != tuple(own[name].shape):
            raise MedsslError(f"weight '{key}' has shape {list(value.shape)}, the encoder's '{name}' "
                              f"{list(own[name].shape)}")
        else:
            mapped[name] = value
    missing = [k for k in own if k not in mapped]
    summary = key_summary(missing, unexpected)
    if strict and (missing or unexpected):
        raise MedsslError(f"weights do not fit the encoder: {summary}")
    target.load_state_dict(mapped, strict=False)
    print(f"medssl: loaded {len(mapped)} of {len(own)} weights; {summary}")
    return missing, unexpected


def _strip(key: str, own: dict[str, Any]) -> str:
    while key not in own:
        prefix = next((p for p in FOREIGN_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            break
        key = key[len(prefix):]
    return key


def key_summary(missing: list[str], unexpected: list[str]) -> str:
    """``"2 missing (a, b), 1 unexpected (c)"``, showing at most the first few names of each."""
    def part(names: list[str], what: str) -> str:
        shown = ", ".join(names[:_SHOW]) + (f", ... {len(names) - _SHOW} more" if len(names) > _SHOW else "")
        return f"{len(names)} {what}" + (f" ({shown})" if names else "")

    return f"{part(missing, 'missing')}, {part(unexpected, 'unexpected')}"
