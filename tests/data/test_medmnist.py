"""MedMNIST data layer: INFO facts, resolution order, download, validation, real files."""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from medssl.data import medmnist as mm
from medssl.data.cli_data import data_list, print_data_info
from medssl.data.medmnist import (
    DATA_DIR_ENV,
    dataset_info,
    file_name,
    find_file,
    known_flags,
    load_medmnist,
    load_npz,
    md5sum,
    resolve,
)
from medssl.data.medmnist_info import INFO
from medssl.data.subsets import label_fraction_indices
from medssl.data.types import ClassificationData, PretrainData
from medssl.errors import MedsslError

FLAGS_2D = [
    "pathmnist",
    "chestmnist",
    "dermamnist",
    "octmnist",
    "pneumoniamnist",
    "retinamnist",
    "breastmnist",
    "bloodmnist",
    "tissuemnist",
    "organamnist",
    "organcmnist",
    "organsmnist",
]
FLAGS_3D = [
    "organmnist3d",
    "nodulemnist3d",
    "adrenalmnist3d",
    "fracturemnist3d",
    "vesselmnist3d",
    "synapsemnist3d",
]
COUNTS = (6, 3, 4)


# --------------------------------------------------------------------------- helpers


def make_arrays(
    image_tail: tuple[int, ...], n_classes: int, multi_label: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random uint8 images of shape [N, *image_tail] and MedMNIST-style [N, 1] labels."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in zip(("train", "val", "test"), COUNTS, strict=True):
        out[f"{split}_images"] = rng.integers(0, 256, size=(n, *image_tail), dtype=np.uint8)
        if multi_label:
            out[f"{split}_labels"] = rng.integers(0, 2, size=(n, n_classes), dtype=np.uint8)
        else:
            labels = np.arange(n, dtype=np.uint8) % n_classes
            out[f"{split}_labels"] = labels.reshape(n, 1)
    return out


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def tiny_file(directory: Path, flag: str = "breastmnist", size: int = 28) -> Path:
    """A valid tiny file for ``flag`` named like the official one."""
    info = INFO[flag]
    if info["spatial_dims"] == 3:
        tail = (size, size, size)
    elif info["n_channels"] == 1:
        tail = (size, size)
    else:
        tail = (size, size, info["n_channels"])
    multi = info["task"].startswith("multi-label")
    arrays = make_arrays(tail, len(info["label"]), multi_label=multi)
    return write_npz(directory / file_name(flag, size), arrays)


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """No $MEDSSL_DATA_DIR, cache in tmp, and no real network access."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    def no_network(url: str, dest: Path) -> None:
        raise AssertionError(f"unexpected download of {url}")

    monkeypatch.setattr(mm, "_fetch", no_network)
    return {"cache": tmp_path / "xdg" / "medssl", "root": tmp_path}


def assert_one_line_error(exc: pytest.ExceptionInfo, *needles: str) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


# --------------------------------------------------------------------------- INFO facts


def test_info_lists_all_18_official_datasets():
    assert known_flags() == FLAGS_2D + FLAGS_3D
    for flag in FLAGS_2D:
        assert INFO[flag]["spatial_dims"] == 2
    for flag in FLAGS_3D:
        assert INFO[flag]["spatial_dims"] == 3


@pytest.mark.parametrize("flag", FLAGS_2D + FLAGS_3D)
def test_info_entry_is_complete(flag: str):
    info = INFO[flag]
    for key in ("python_class", "description", "task", "label", "n_channels", "n_samples"):
        assert key in info
    assert info["python_class"].lower() == flag
    assert "\n" not in info["description"]
    assert list(info["label"]) == [str(i) for i in range(len(info["label"]))]
    assert info["n_channels"] in (1, 3)
    assert set(info["n_samples"]) == {"train", "val", "test"}
    assert info["license"].startswith("CC BY")
    sizes = [28, 64, 128, 224] if info["spatial_dims"] == 2 else [28, 64]
    assert mm.available_sizes(flag) == sizes
    for size in sizes:
        suffix = "" if size == 28 else f"_{size}"
        assert re.fullmatch(r"[0-9a-f]{32}", info[f"MD5{suffix}"])
        assert info[f"url{suffix}"].endswith(f"/{flag}{suffix}.npz?download=1")
    assert "url_256" not in info and "MD5_128" not in INFO["adrenalmnist3d"]


def test_info_known_checksums_and_facts():
    assert INFO["breastmnist"]["MD5"] == "750601b1f35ba3300ea97c75c52ff8f6"
    assert INFO["retinamnist"]["MD5"] == "bd4c0672f1bba3e3a89f0e4e876791e4"
    assert INFO["adrenalmnist3d"]["MD5"] == "bbd3c5a5576322bc4cdfea780653b1ce"
    assert INFO["adrenalmnist3d"]["MD5_64"] == "17721accfe9fb005146a47d33bc54b2f"
    assert INFO["chestmnist"]["task"] == "multi-label, binary-class"
    assert INFO["retinamnist"]["task"] == "ordinal-regression"
    assert len(INFO["chestmnist"]["label"]) == 14
    assert INFO["breastmnist"]["n_samples"] == {"train": 546, "val": 78, "test": 156}


def test_dataset_info_unknown_flag_and_copy():
    with pytest.raises(MedsslError) as exc:
        dataset_info("nosuchmnist")
    assert_one_line_error(exc, "unknown dataset 'nosuchmnist'", "known:", "breastmnist")
    with pytest.raises(MedsslError) as exc:
        dataset_info("breastmnis")
    assert_one_line_error(exc, "unknown dataset 'breastmnis' (did you mean 'breastmnist'?)")
    info = dataset_info("BreastMNIST")
    info["label"]["0"] = "changed"
    assert INFO["breastmnist"]["label"]["0"] == "malignant"


def test_load_medmnist_unknown_flag():
    with pytest.raises(MedsslError, match="unknown dataset 'foo'"):
        load_medmnist("foo", download=False)


def test_file_names():
    assert file_name("breastmnist") == "breastmnist.npz"
    assert file_name("adrenalmnist3d", 64) == "adrenalmnist3d_64.npz"
    assert file_name("pathmnist", 224) == "pathmnist_224.npz"
    with pytest.raises(MedsslError, match="no size 128; available: 28, 64"):
        file_name("adrenalmnist3d", 128)


# --------------------------------------------------------------------------- loading tiny files


def test_load_grey_2d(isolated):
    path = tiny_file(isolated["root"], "breastmnist")
    ds = load_medmnist("breastmnist", path=path, download=False)
    raw = np.load(path)
    assert ds.path == path
    assert (ds.spatial_dims, ds.in_channels, ds.num_classes) == (2, 1, 2)
    assert ds.task == "binary-class" and not ds.multi_label
    for name, n in zip(("train", "val", "test"), COUNTS, strict=True):
        split = ds.split(name)
        assert split is getattr(ds, name)
        assert len(split) == n
        assert split.images.shape == (n, 1, 28, 28) and split.images.dtype == torch.uint8
        assert split.images.is_contiguous()
        assert split.labels.shape == (n,) and split.labels.dtype == torch.int64
        assert np.array_equal(split.images[:, 0].numpy(), raw[f"{name}_images"])
        assert np.array_equal(split.labels.numpy(), raw[f"{name}_labels"][:, 0])
    with pytest.raises(MedsslError, match="unknown split 'bogus'"):
        ds.split("bogus")


def test_load_rgb_2d_moves_channels_first(isolated):
    path = tiny_file(isolated["root"], "retinamnist")
    raw = np.load(path)["train_images"]  # [N, H, W, 3]
    raw_copy = raw.copy()
    train, _, _ = load_npz(path, "retinamnist", 28)
    assert train.images.shape == (6, 3, 28, 28)
    assert train.images.is_contiguous()
    assert np.array_equal(train.images.permute(0, 2, 3, 1).numpy(), raw_copy)
    assert np.array_equal(train.images[2, 1].numpy(), raw_copy[2, :, :, 1])


def test_load_3d_adds_channel_axis(isolated):
    path = tiny_file(isolated["root"], "adrenalmnist3d", size=28)
    raw = np.load(path)["val_images"]  # [N, D, H, W]
    ds = load_medmnist("adrenalmnist3d", 28, path=path, download=False)
    assert ds.spatial_dims == 3
    assert ds.val.images.shape == (3, 1, 28, 28, 28) and ds.val.images.dtype == torch.uint8
    assert np.array_equal(ds.val.images[:, 0].numpy(), raw)


@pytest.mark.parametrize("flag, names, geometry", [
    ("breastmnist", ("malignant", "normal, benign"), (2, 1)),
    ("adrenalmnist3d", ("normal", "hyperplasia"), (3, 1)),
])
def test_declared_type_and_train_only_pool(isolated, flag, names, geometry):
    """The loader returns the declared type; its pretraining pool is the train split only."""
    ds = load_medmnist(flag, path=tiny_file(isolated["root"], flag), download=False)
    assert type(ds) is ClassificationData and ds.name == flag and ds.class_names == names
    pool = ds.pretrain_data()
    assert type(pool) is PretrainData and pool.images is ds.train.images
    assert (pool.spatial_dims, pool.in_channels, pool.size, len(pool)) == (*geometry, 28, COUNTS[0])


def test_load_multi_label(isolated):
    path = tiny_file(isolated["root"], "chestmnist")
    ds = load_medmnist("chestmnist", path=path, download=False)
    assert ds.multi_label and ds.num_classes == 14
    assert ds.train.labels.shape == (6, 14) and ds.train.labels.dtype == torch.int64


def test_flat_labels_are_accepted(isolated):
    arrays = make_arrays((28, 28), 2)
    arrays = {k: (v[:, 0] if k.endswith("labels") else v) for k, v in arrays.items()}
    path = write_npz(isolated["root"] / "resaved.npz", arrays)
    train, _, _ = load_npz(path, "breastmnist", 28)
    assert train.labels.shape == (6,)


# --------------------------------------------------------------------------- validation errors


def _bad(tmp: Path, mutate, flag: str = "breastmnist", tail=(28, 28), n_classes: int = 2) -> Path:
    arrays = make_arrays(tail, n_classes)
    mutate(arrays)
    return write_npz(tmp / "bad.npz", arrays)


def test_truncated_npz(tmp_path: Path):
    path = tiny_file(tmp_path, "breastmnist")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MedsslError) as exc:
        load_npz(path, "breastmnist", 28)
    assert_one_line_error(exc, str(path), "not a valid .npz")


def test_corrupt_payload(tmp_path: Path):
    path = tiny_file(tmp_path, "breastmnist")
    data = bytearray(path.read_bytes())
    mid = len(data) // 3
    data[mid : mid + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(MedsslError) as exc:
        load_npz(path, "breastmnist", 28)
    assert_one_line_error(exc, str(path))


def test_garbage_bytes(tmp_path: Path):
    path = tmp_path / "breastmnist.npz"
    path.write_bytes(b"this is not a zip file at all" * 10)
    with pytest.raises(MedsslError) as exc:
        load_npz(path, "breastmnist", 28)
    assert_one_line_error(exc, str(path), "not a valid .npz")


def test_empty_file(tmp_path: Path):
    path = tmp_path / "breastmnist.npz"
    path.write_bytes(b"")
    with pytest.raises(MedsslError) as exc:
        load_npz(path, "breastmnist", 28)
    assert_one_line_error(exc, str(path))


def test_npy_instead_of_npz(tmp_path: Path):
    path = tmp_path / "breastmnist.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.zeros((3, 28, 28), dtype=np.uint8))
    with pytest.raises(MedsslError) as exc:
        load_npz(path, "breastmnist", 28)
    assert_one_line_error(exc, str(path), "not an .npz archive")


def test_missing_keys_are_listed(tmp_path: Path):
    def drop(a):
        del a["test_labels"], a["val_images"]

    path = _bad(tmp_path, drop)
    with pytest.raises(MedsslError) as exc:
        load_npz(path, "breastmnist", 28)
    msg = assert_one_line_error(exc, str(path), "missing keys")
    assert msg.split("missing keys ")[1].split(" (found")[0] == "val_images, test_labels"


def test_wrong_ndim_2d(tmp_path: Path):
    path = _bad(tmp_path, lambda a: a.update(train_images=np.zeros((6, 1, 28, 28, 1), np.uint8)))
    with pytest.raises(MedsslError) as exc:
        load_npz(path, "breastmnist", 28)
    assert_one_line_error(exc, str(path), "train_images", "[N, H, W] or [N, H, W, C]")


def test_wrong_ndim_3d(tmp_path: Path):
    path = tiny_file(tmp_path, "breastmnist")  # 2D images given for a 3D dataset
    with pytest.raises(MedsslError) as exc:
        load_npz(path, "adrenalmnist3d", 28)
    assert_one_line_error(exc, str(path), "[N, D, H, W]", "3D dataset")


def test_wrong_spatial_size(tmp_path: Path):
    path = _bad(tmp_path, lambda a: None, tail=(32, 32))
    with pytest.raises(MedsslError) as exc:
        load_npz(path, "breastmnist", 28)
    assert_one_line_error(exc, str(path), "spatial size 32x32, expected 28x28")
    path3d = tiny_file(tmp_path, "adrenalmnist3d", 28)
    with pytest.raises(MedsslError) as exc:
        load_npz(path3d, "adrenalmnist3d", 64)
    assert_one_line_error(exc, str(path3d), "expected 64x64x64")


def test_wrong_channel_count(tmp_path: Path):
    grey = tiny_file(tmp_path, "breastmnist")
    with pytest.raises(MedsslError) as exc:
        load_npz(grey, "retinamnist", 28)
    assert_one_line_error(exc, str(grey), "1 channel(s), expected 3")
    rgb = _bad(tmp_path, lambda a: None, tail=(28, 28, 3))
    with pytest.raises(MedsslError) as exc:
        load_npz(rgb, "breastmnist", 28)
    assert_one_line_error(exc, str(rgb), "3 channel(s), expected 1")


def test_wrong_image_dtype(tmp_path: Path):
    def to_float(a):
        a["val_images"] = a["val_images"].astype(np.float32) / 255

    path = _bad(tmp_path, to_float)
    with pytest.raises(MedsslError) as exc:
        load_npz(path, "breastmnist", 28)
    assert_one_line_error(exc, str(path), "val_images", "float32", "uint8")


def test_label_count_mismatch(tmp_path: Path):
    path = _bad(tmp_path, lambda a: a.update(test_labels=a["test_labels"][:-1]))
    with pytest.raises(MedsslError) as exc:
        load_npz(path, "breastmnist", 28)
    assert_one_line_error(exc, str(path), "test_labels", "3 labels for 4 images")


@pytest.mark.parametrize("bad_value", [2, -1])
def test_label_out_of_range(tmp_path: Path, bad_value: int):
    def poison(a):
        labels = a["train_labels"].astype(np.int16)
        labels[3, 0] = bad_value
        a["train_labels"] = labels

    path = _bad(tmp_path, poison)
    with pytest.raises(MedsslError) as exc:
        load_npz(path, "breastmnist", 28)
    assert_one_line_error(exc, str(path), "train_labels", "expected [0, 1]")


def test_multi_label_value_out_of_range(tmp_path: Path):
    arrays = make_arrays((28, 28), 14, multi_label=True)
    arrays["val_labels"][0, 5] = 2
    path = write_npz(tmp_path / "chest.npz", arrays)
    with pytest.raises(MedsslError) as exc:
        load_npz(path, "chestmnist", 28)
    assert_one_line_error(exc, str(path), "val_labels", "expected [0, 1]")


# --------------------------------------------------------------------------- resolution order


def test_explicit_path_beats_env_beats_cache(isolated, monkeypatch):
    root = isolated["root"]
    explicit = tiny_file(root / "explicit", "breastmnist")
    env_file = tiny_file(root / "env", "breastmnist")
    cache_file = tiny_file(isolated["cache"], "breastmnist")
    monkeypatch.setenv(DATA_DIR_ENV, str(root / "env"))
    assert find_file("breastmnist", 28, path=explicit) == explicit
    assert find_file("breastmnist", 28, path=root / "explicit") == explicit
    assert find_file("breastmnist") == env_file
    assert resolve("breastmnist", download=False) == env_file
    env_file.unlink()
    assert find_file("breastmnist") == cache_file
    monkeypatch.delenv(DATA_DIR_ENV)
    assert resolve("breastmnist", download=False) == cache_file


def test_flag_subdirectory_layout(isolated, monkeypatch):
    root = isolated["root"]
    nested = tiny_file(root / "data" / "adrenalmnist3d", "adrenalmnist3d", 64)
    monkeypatch.setenv(DATA_DIR_ENV, str(root / "data"))
    assert find_file("adrenalmnist3d", 64) == nested
    assert find_file("adrenalmnist3d", 64, path=root / "data") == nested
    assert find_file("adrenalmnist3d", 28) is None


def test_explicit_dir_without_file_falls_back_to_env(isolated, monkeypatch):
    root = isolated["root"]
    (root / "empty").mkdir()
    env_file = tiny_file(root / "env", "breastmnist")
    monkeypatch.setenv(DATA_DIR_ENV, str(root / "env"))
    assert find_file("breastmnist", path=root / "empty") == env_file


def test_explicit_missing_path_is_an_error(isolated):
    missing = isolated["root"] / "nope" / "breastmnist.npz"
    with pytest.raises(MedsslError) as exc:
        find_file("breastmnist", path=missing)
    assert_one_line_error(exc, str(missing), "no such file")


def test_cache_defaults_to_home(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert mm.cache_dir() == tmp_path / ".cache" / "medssl"
    cached = tiny_file(tmp_path / ".cache" / "medssl", "retinamnist")
    assert find_file("retinamnist") == cached


def test_missing_without_download_names_file_and_env(isolated):
    with pytest.raises(MedsslError) as exc:
        resolve("breastmnist", download=False)
    assert_one_line_error(exc, "breastmnist.npz", DATA_DIR_ENV, str(isolated["cache"]))
    with pytest.raises(MedsslError) as exc:
        load_medmnist("adrenalmnist3d", 64, download=False)
    assert_one_line_error(exc, "adrenalmnist3d_64.npz", DATA_DIR_ENV)


def test_local_file_does_not_download(isolated, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(isolated["root"]))
    path = tiny_file(isolated["root"], "breastmnist")
    assert resolve("breastmnist", download=True) == path  # _fetch would raise


# --------------------------------------------------------------------------- download (no network)


def test_download_good_md5_lands_file(isolated, monkeypatch):
    payload = tiny_file(isolated["root"] / "src", "breastmnist").read_bytes()
    monkeypatch.setitem(INFO["breastmnist"], "MD5", hashlib.md5(payload).hexdigest())
    seen = []

    def fake_fetch(url: str, dest: Path) -> None:
        seen.append((url, dest))
        assert dest.parent == isolated["cache"] and dest.name != "breastmnist.npz"
        dest.write_bytes(payload)

    monkeypatch.setattr(mm, "_fetch", fake_fetch)
    ds = load_medmnist("breastmnist", download=True)
    final = isolated["cache"] / "breastmnist.npz"
    assert ds.path == final and final.read_bytes() == payload
    assert seen[0][0] == INFO["breastmnist"]["url"]
    assert not seen[0][1].exists()
    assert sorted(p.name for p in isolated["cache"].iterdir()) == ["breastmnist.npz"]
    assert len(ds.train) == COUNTS[0]


def test_download_md5_mismatch_deletes_temp(isolated, monkeypatch):
    seen = []

    def fake_fetch(url: str, dest: Path) -> None:
        seen.append(dest)
        dest.write_bytes(b"<html>not the dataset</html>")

    monkeypatch.setattr(mm, "_fetch", fake_fetch)
    with pytest.raises(MedsslError) as exc:
        resolve("breastmnist", download=True)
    assert_one_line_error(exc, "breastmnist.npz", "MD5", INFO["breastmnist"]["MD5"])
    assert len(seen) == 1 and not seen[0].exists()
    assert list(isolated["cache"].iterdir()) == []


def test_download_offline_is_a_clear_error(isolated, monkeypatch):
    def offline(url: str, dest: Path) -> None:
        dest.write_bytes(b"partial")
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(mm, "_fetch", offline)
    with pytest.raises(MedsslError) as exc:
        resolve("retinamnist", download=True)
    assert_one_line_error(exc, "retinamnist.npz", DATA_DIR_ENV, "download failed", "URLError")
    assert list(isolated["cache"].iterdir()) == []


# --------------------------------------------------------------------------- CLI helpers


def test_cli_list_and_info(isolated, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(isolated["root"]))
    tiny_file(isolated["root"], "breastmnist")
    text = data_list()
    for flag in known_flags():
        assert flag in text
    row = next(line for line in text.splitlines() if "breastmnist" in line)
    assert "28" in row.split("│")[-2] and "546" in row
    from rich.console import Console

    console = Console(record=True, width=1000, color_system=None)  # long tmp paths under xdist
    print_data_info(console, "breastmnist")
    out = console.export_text()
    assert str(isolated["root"] / "breastmnist.npz") in out
    assert "differs from official" in out  # tiny file is not the official one
    assert "not found" in out  # sizes 64/128/224 are absent
    assert INFO["breastmnist"]["MD5_224"] in out


# --------------------------------------------------------------------------- real data


def real_data_dir() -> Path:
    """$MEDSSL_DATA_DIR; these tests fail (never skip) when it is unset or incomplete."""
    value = os.environ.get(DATA_DIR_ENV)
    assert value, (
        f"{DATA_DIR_ENV} is not set: real-data tests need the staged MedMNIST files "
        "(CI: ../shared/data, this sandbox: /work/shared/data)"
    )
    root = Path(value)
    assert root.is_dir(), f"{DATA_DIR_ENV}={value} is not a directory"
    return root


def real_file(flag: str, size: int) -> Path:
    root = real_data_dir()
    path = find_file(flag, size, path=root)
    assert path is not None and path.is_relative_to(root), (
        f"{file_name(flag, size)} not found under {DATA_DIR_ENV}={root}"
    )
    return path


REAL = [
    ("breastmnist", 28, (1, 28, 28), 2),
    ("retinamnist", 28, (3, 28, 28), 5),
    ("adrenalmnist3d", 28, (1, 28, 28, 28), 2),
    ("adrenalmnist3d", 64, (1, 64, 64, 64), 2),
]


@pytest.mark.parametrize(("flag", "size", "tail", "n_classes"), REAL)
def test_real_file_md5_is_official(flag, size, tail, n_classes):
    suffix = "" if size == 28 else f"_{size}"
    assert md5sum(real_file(flag, size)) == INFO[flag][f"MD5{suffix}"]


@pytest.mark.parametrize(("flag", "size", "tail", "n_classes"), REAL)
def test_real_file_loads(flag, size, tail, n_classes):
    path = real_file(flag, size)
    ds = load_medmnist(flag, size, path=real_data_dir(), download=False)
    assert ds.path == path
    assert ds.num_classes == n_classes
    for name in ("train", "val", "test"):
        split = ds.split(name)
        assert len(split) == INFO[flag]["n_samples"][name]
        assert tuple(split.images.shape) == (len(split), *tail)
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.labels.shape == (len(split),)
    assert set(ds.train.labels.unique().tolist()) == set(range(n_classes))


def test_real_breastmnist_class_counts_and_subset():
    ds = load_medmnist("breastmnist", path=real_data_dir(), download=False)
    assert torch.bincount(ds.train.labels).tolist() == [147, 399]
    assert torch.bincount(ds.test.labels).tolist() == [42, 114]
    idx = label_fraction_indices(ds.train.labels, 0.1, seed=0)
    assert np.bincount(ds.train.labels.numpy()[idx]).tolist() == [15, 40]


def test_real_adrenal_28_and_64_share_labels():
    small = load_medmnist("adrenalmnist3d", 28, path=real_data_dir(), download=False)
    large = load_medmnist("adrenalmnist3d", 64, path=real_data_dir(), download=False)
    assert torch.equal(small.train.labels, large.train.labels)
    assert torch.bincount(small.train.labels).tolist() == [929, 259]


def test_real_reassembled_pneumonia_loads_by_explicit_file():
    path = real_data_dir() / "pneumoniamnist_reassembled" / "pneumoniamnist_reassembled.npz"
    assert path.is_file(), f"{path} missing"
    ds = load_medmnist("pneumoniamnist", path=path, download=False)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4708, 524, 624)
    assert ds.train.images.shape[1:] == (1, 28, 28)
    assert md5sum(path) != INFO["pneumoniamnist"]["MD5"]  # re-assembled, not official bytes
