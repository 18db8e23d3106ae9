"""MedMNIST v2 / MedMNIST+ ``.npz`` files: locate, download (MD5-checked), validate, load.

Files are looked up in this order (see :func:`find_file`):

1. an explicit ``path`` (the file itself, or a directory holding ``<file>`` or
   ``<flag>/<file>``);
2. ``$MEDSSL_DATA_DIR/<file>`` and ``$MEDSSL_DATA_DIR/<flag>/<file>``;
3. the user cache ``$XDG_CACHE_HOME/medssl/<file>`` (default ``~/.cache/medssl``).

Downloads go to the cache directory and are verified against the official MD5 from
:mod:`medssl.data.medmnist_info`. Local files are *not* required to match the official MD5
(re-saved copies are accepted) but they are fully validated on load.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from medssl.data.cache import cache_key, cached_array, choose_storage, drop_pages
from medssl.data.medmnist_info import INFO
from medssl.data.types import SPLITS, ClassificationData, Split
from medssl.errors import MedsslError

DATA_DIR_ENV = "MEDSSL_DATA_DIR"
REQUIRED_KEYS = tuple(f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels"))
_DOWNLOAD_TIMEOUT_S = 60


# --------------------------------------------------------------------------- info helpers


def known_flags() -> list[str]:
    """All MedMNIST flags, 2D first, in the official order."""
    return list(INFO)


def dataset_info(flag: str) -> dict:
    """Return a copy of the INFO entry for ``flag`` (case-insensitive)."""
    key = str(flag).lower()
    if key not in INFO:
        close = difflib.get_close_matches(key, known_flags(), n=1, cutoff=0.75)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; known: {', '.join(known_flags())}"
        raise MedsslError(f"unknown dataset '{flag}'{hint}")
    entry = INFO[key]
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in entry.items()}


def is_multi_label(info: dict) -> bool:
    """Whether an INFO entry describes a multi-label task."""
    return str(info["task"]).startswith("multi-label")


def available_sizes(flag: str) -> list[int]:
    """Image sizes officially published for ``flag`` (28 plus the MedMNIST+ sizes)."""
    info = dataset_info(flag)
    return [28, *sorted(int(k[4:]) for k in info if k.startswith("url_"))]


def _suffix(size: int) -> str:
    return "" if size == 28 else f"_{size}"


def _check_size(flag: str, size: int) -> None:
    sizes = available_sizes(flag)
    if size not in sizes:
        raise MedsslError(
            f"dataset '{flag}' has no size {size}; available: {', '.join(map(str, sizes))}"
        )


def file_name(flag: str, size: int = 28) -> str:
    """Official file name, e.g. ``breastmnist.npz`` or ``adrenalmnist3d_64.npz``."""
    _check_size(flag, size)
    return f"{flag.lower()}{_suffix(size)}.npz"


def official_md5(flag: str, size: int = 28) -> str | None:
    """Official MD5 of the file for (flag, size), or None if MedMNIST lists none."""
    _check_size(flag, size)
    return dataset_info(flag).get(f"MD5{_suffix(size)}")


def official_url(flag: str, size: int = 28) -> str | None:
    """Official download URL for (flag, size), or None if MedMNIST lists none."""
    _check_size(flag, size)
    return dataset_info(flag).get(f"url{_suffix(size)}")


def md5sum(path: str | os.PathLike) -> str:
    """Hex MD5 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- resolution


def cache_dir() -> Path:
    """User cache directory for downloads: ``$XDG_CACHE_HOME/medssl`` or ``~/.cache/medssl``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "medssl"


def search_locations(
    flag: str, size: int = 28, path: str | os.PathLike | None = None
) -> list[Path]:
    """Candidate file locations for (flag, size), in resolution order.

    An explicit ``path`` that is an existing file is returned alone. A missing explicit
    path raises MedsslError rather than silently falling back to other locations.
    """
    name = file_name(flag, size)
    key = flag.lower()
    out: list[Path] = []
    if path is not None:
        explicit = Path(os.path.expandvars(str(path))).expanduser()  # "$MEDSSL_DATA_DIR/..." works
        if explicit.is_file():
            return [explicit]
        if not explicit.is_dir():
            raise MedsslError(f"{explicit}: no such file or directory (given for '{key}')")
        out += [explicit / name, explicit / key / name]
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        root = Path(env).expanduser()
        out += [root / name, root / key / name]
    out.append(cache_dir() / name)
    return out


def find_file(flag: str, size: int = 28, path: str | os.PathLike | None = None) -> Path | None:
    """First existing file among :func:`search_locations`, or None."""
    for candidate in search_locations(flag, size, path):
        if candidate.is_file():
            return candidate
    return None


def _missing_message(flag: str, size: int, path: str | os.PathLike | None, why: str) -> str:
    """One short line: the file, why it is missing, where to get it and where to place it."""
    name = file_name(flag, size)
    env = os.environ.get(DATA_DIR_ENV)
    if path is not None:
        where = str(Path(path).expanduser() / name)
    elif env:
        where = f"{Path(env).expanduser() / name} (${DATA_DIR_ENV})"
    else:
        where = f"{cache_dir() / name} (or set ${DATA_DIR_ENV} to its folder)"
    return f"{name} not found ({why}); get it from {official_url(flag, size)} and place it at {where}"


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` (monkeypatched in tests)."""
    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp, open(dest, "wb") as fh:
        shutil.copyfileobj(resp, fh, length=1 << 20)


def download_file(flag: str, size: int = 28, dest_dir: Path | None = None) -> Path:
    """Download the official file into ``dest_dir`` (default: cache) and verify its MD5.

    The file is written to a temporary name in the same directory and moved into place
    with ``os.replace`` only after the MD5 matches; on mismatch the temporary file is
    deleted and MedsslError is raised.
    """
    name = file_name(flag, size)
    url, expected = official_url(flag, size), official_md5(flag, size)
    if url is None or expected is None:
        raise MedsslError(f"{name}: no official URL/MD5 known, cannot download")
    dest_dir = cache_dir() if dest_dir is None else Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        print(f"medssl: downloading {url} -> {dest_dir / name}")  # progress; stderr is for errors
        _fetch(url, tmp)
        got = md5sum(tmp)
        if got != expected:
            raise MedsslError(f"downloaded {name} has MD5 {got}, expected {expected}; deleted it")
        os.replace(tmp, dest_dir / name)
    finally:
        tmp.unlink(missing_ok=True)
    return dest_dir / name


def resolve(
    flag: str, size: int = 28, path: str | os.PathLike | None = None, download: bool = True
) -> Path:
    """Locate the file for (flag, size); download it into the cache if missing and allowed."""
    found = find_file(flag, size, path)
    if found is not None:
        return found
    if not download:
        raise MedsslError(_missing_message(flag, size, path, "download disabled"))
    try:
        return download_file(flag, size)
    except MedsslError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        why = f"download failed: {_one_line(exc)[:80]}"
        raise MedsslError(_missing_message(flag, size, path, why)) from exc


# --------------------------------------------------------------------------- loading


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_arrays(path: Path, images: bool = True) -> dict[str, np.ndarray]:
    """Read the six required arrays (``images=False``: the labels only), turning every kind of file
    damage into MedsslError."""
    try:
        obj = np.load(path, allow_pickle=False)
        if not isinstance(obj, np.lib.npyio.NpzFile):
            raise MedsslError(f"{path}: not an .npz archive (numpy read a single array)")
        with obj as npz:
            missing = [k for k in REQUIRED_KEYS if k not in npz.files]
            if missing:
                raise MedsslError(
                    f"{path}: missing keys {', '.join(missing)} "
                    f"(found: {', '.join(sorted(npz.files)) or 'none'})"
                )
            return {k: npz[k] for k in REQUIRED_KEYS if images or not k.endswith("_images")}
    except MedsslError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc):  # never relay numpy's hint to load pickles unsafely
            raise MedsslError(f"{path}: not a valid .npz file (not a zip of .npy arrays; "
                              "pickled data is never loaded)") from exc
        raise MedsslError(f"{path}: not a valid .npz file (truncated or corrupt?): "
                          f"{_one_line(exc)[:120]}") from exc
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as exc:
        raise MedsslError(
            f"{path}: not a valid .npz file (truncated or corrupt?): {_one_line(exc)}"
        ) from exc


def _images_to_tensor(arr: np.ndarray, where: str, info: dict, size: int) -> torch.Tensor:
    """Validate one image array and return it channel-first, uint8, contiguous."""
    return torch.from_numpy(np.ascontiguousarray(_channel_first(arr, where, info, size)))


def _channel_first(arr: np.ndarray, where: str, info: dict, size: int) -> np.ndarray:
    """Validate one image array; return a channel-first view ``[N, C, *S]``."""
    dims = int(info["spatial_dims"])
    if arr.dtype != np.uint8:
        raise MedsslError(f"{where} has dtype {arr.dtype}, expected uint8")
    if dims == 2 and arr.ndim == 3:
        arr = arr[:, None]
    elif dims == 2 and arr.ndim == 4:
        arr = np.moveaxis(arr, -1, 1)
    elif dims == 3 and arr.ndim == 4:
        arr = arr[:, None]
    else:
        expected = "[N, H, W] or [N, H, W, C]" if dims == 2 else "[N, D, H, W]"
        raise MedsslError(
            f"{where} has shape {arr.shape}, expected {expected} for a {dims}D dataset"
        )
    if arr.shape[0] == 0:
        raise MedsslError(f"{where} is empty")
    spatial = tuple(arr.shape[2:])
    if any(s != size for s in spatial):
        got, want = "x".join(map(str, spatial)), "x".join([str(size)] * dims)
        raise MedsslError(f"{where} has spatial size {got}, expected {want}")
    if arr.shape[1] != info["n_channels"]:
        raise MedsslError(f"{where} has {arr.shape[1]} channel(s), expected {info['n_channels']}")
    return arr


def _header(fh) -> tuple[tuple[int, ...], np.dtype, bool]:
    """(shape, dtype, Fortran order) from an open ``.npy`` stream, which is left at the data."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)


def _image_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as fh:
        shape, fortran, dtype = _header(fh)
    return tuple(shape), dtype, fortran


def _stream_images(path: Path, key: str, where: str, info: dict, size: int) -> torch.Tensor:
    """Images of ``key`` copied from the zip member in chunks into the disk cache (never whole in RAM)."""
    shape, dtype, _ = _image_header(path, key)
    fake = np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape))
    out_shape = _channel_first(fake, where, info, size).shape  # validates shape, dtype, size, channels
    item = int(np.prod(shape[1:]))

    def fill(out: np.ndarray) -> None:
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as fh:
            _header(fh)
            step = max(1, (64 << 20) // item)  # 64 MiB at a time
            for start in range(0, shape[0], step):
                n = min(step, shape[0] - start)
                rows = np.frombuffer(fh.read(n * item), np.uint8)
                if rows.size != n * item:
                    raise MedsslError(f"{where}: truncated at image {start + rows.size // item}")
                out[start:start + n] = _channel_first(rows.reshape(n, *shape[1:]), where, info, size)
                drop_pages(out)

    name = cache_key([path], kind="medmnist", member=key, size=size, version=1)
    return cached_array(name, out_shape, fill, storage="disk")


def _labels_to_tensor(arr: np.ndarray, where: str, info: dict, n: int) -> torch.Tensor:
    """Validate one label array and return int64 ``[N]`` (or ``[N, L]`` for multi-label)."""
    n_classes = len(info["label"])
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise MedsslError(f"{where} has dtype {arr.dtype}, expected integers")
    if arr.shape[:1] != (n,):
        raise MedsslError(f"{where} has {arr.shape[0] if arr.ndim else 0} labels for {n} images")
    if is_multi_label(info):
        if arr.shape != (n, n_classes):
            raise MedsslError(f"{where} has shape {arr.shape}, expected ({n}, {n_classes})")
        high = 1
    else:
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise MedsslError(f"{where} has shape {arr.shape}, expected ({n},) or ({n}, 1)")
        high = n_classes - 1
    values = arr.astype(np.int64)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi > high:
        raise MedsslError(f"{where} has values in [{lo}, {hi}], expected [0, {high}]")
    return torch.from_numpy(np.ascontiguousarray(values))


def load_npz(path: str | os.PathLike, flag: str, size: int,
             storage: str = "memory") -> tuple[Split, Split, Split]:
    """Load and validate a MedMNIST ``.npz``; return the (train, val, test) splits.

    ``storage`` (``medssl.data.cache``): ``disk`` streams the images into a memory-mapped cache
    file, chunk by chunk, so a MedMNIST+ file larger than RAM can be used; ``auto`` chooses by the
    images' size, read from the array headers.

    Raises:
        MedsslError: one line naming the file and the problem (corrupt/truncated file,
            missing keys, wrong shape, spatial size, channel count, label count or range).
    """
    path = Path(path)
    info = dataset_info(flag)
    arrays = _read_arrays(path, images=storage == "memory")  # the archive and its keys are checked
    if storage != "memory":
        headers = [_image_header(path, f"{n}_images") for n in SPLITS]
        streamable = all(h[1] == np.uint8 and not h[2] for h in headers)  # else: read whole, as before
        nbytes = sum(int(np.prod(h[0])) for h in headers)
        storage = choose_storage(storage, nbytes) if streamable else "memory"
        if storage == "memory":
            arrays = _read_arrays(path)
    splits = []
    for name in SPLITS:
        where = f"{path}: {name}_images"
        images = (_stream_images(path, f"{name}_images", where, info, size) if storage == "disk"
                  else _images_to_tensor(arrays[f"{name}_images"], where, info, size))
        labels = _labels_to_tensor(
            arrays[f"{name}_labels"], f"{path}: {name}_labels", info, images.shape[0]
        )
        splits.append(Split(images=images, labels=labels))
    return splits[0], splits[1], splits[2]


def load_medmnist(
    flag: str, size: int = 28, path: str | os.PathLike | None = None, download: bool = True,
    storage: str = "memory",
) -> ClassificationData:
    """Resolve (and if needed download) then load and validate a MedMNIST dataset (``storage``:
    see :func:`load_npz`)."""
    info = dataset_info(flag)
    key = flag.lower()
    file = resolve(key, size, path, download)
    train, val, test = load_npz(file, key, size, storage)
    names = tuple(info["label"][str(i)] for i in range(len(info["label"])))
    dims, channels = int(info["spatial_dims"]), int(info["n_channels"])
    return ClassificationData(key, dims, channels, size, str(info["task"]), names, file, train, val, test)
