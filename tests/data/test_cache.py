"""The lazy path: items preprocessed once (in DataLoader workers) into memory or a memory-mapped disk
cache, for folders (2D images, DICOM, NIfTI volumes), label CSVs and MedMNIST .npz files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from medical_fixtures import write_dicom, write_nifti, write_png
from test_medmnist import tiny_file

from medssl.data import cache
from medssl.data.cache import cache_key, cached_stack, choose_storage
from medssl.data.folder import load_csv_classification, read_any_image
from medssl.data.loaders import TensorBatches
from medssl.data.medmnist import load_medmnist
from medssl.data.pool import folder_pool
from medssl.data.volume import normalize_intensity, pad_or_crop, read_nifti, to_uint8
from medssl.errors import MedsslError


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSSL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def files_in(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_disk_and_memory_give_the_same_array_and_disk_is_built_once(cache_dir):
    calls = []

    def read(i):
        calls.append(i)
        return np.full((1, 3, 2), i, np.uint8)

    mem = cached_stack("k", 5, (1, 3, 2), read, storage="memory", workers=0)
    disk = cached_stack("k", 5, (1, 3, 2), read, storage="disk", workers=0)
    assert torch.equal(mem, disk) and disk[4, 0, 0, 0] == 4
    assert files_in(cache_dir) == ["k.npy"] and len(calls) == 10
    again = cached_stack("k", 5, (1, 3, 2), read, storage="disk", workers=0)
    assert torch.equal(again, mem) and len(calls) == 10  # reused, nothing read
    assert isinstance(np.load(cache_dir / "k.npy", mmap_mode="r"), np.memmap)


def test_a_failed_build_leaves_no_cache_file(cache_dir):
    def read(i):
        if i == 3:
            raise MedsslError("item 3 is broken")
        return np.zeros((2,), np.uint8)

    with pytest.raises(MedsslError, match="item 3 is broken"):
        cached_stack("bad", 5, (2,), read, storage="disk", workers=0)
    assert files_in(cache_dir) == []
    with pytest.raises(MedsslError, match=r"item 0: preprocessed to float64 \(2,\), expected uint8"):
        cached_stack("wrong", 2, (2,), lambda i: np.zeros(2), storage="disk", workers=0)


def test_the_key_follows_the_files_and_the_settings(tmp_path):
    f = write_png(tmp_path / "a.png", np.zeros((4, 4)))
    k = cache_key([f], size=8)
    assert cache_key([f], size=8) == k and cache_key([f], size=16) != k
    os.utime(f, ns=(1, 1))
    assert cache_key([f], size=8) != k  # a rewritten file is a new cache


def test_auto_takes_disk_above_half_the_available_memory(monkeypatch):
    monkeypatch.setattr(cache, "available_memory", lambda: 1000)
    assert choose_storage("auto", 500) == "memory" and choose_storage("auto", 501) == "disk"
    assert choose_storage("memory", 10**15) == "memory"
    with pytest.raises(MedsslError, match=r"data\.storage must be auto, memory or disk"):
        choose_storage("ram", 1)


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_a_folder_of_png_and_dicom_is_padded_to_the_largest_header_shape(tmp_path, storage):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    write_png(tmp_path / "img" / "a.png", rng.integers(0, 256, (5, 7)))
    write_png(tmp_path / "img" / "b.png", rng.integers(0, 256, (9, 4)))
    ct = rng.integers(0, 2000, (6, 6)).astype(np.uint16)
    write_dicom(tmp_path / "img" / "c.dcm", ct, intercept=-1024.0)
    pool = folder_pool(tmp_path / "img", storage=storage, workers=2)
    naive = np.stack([pad_or_crop(to_uint8(read_any_image(tmp_path / "img" / n)), (9, 7))
                      for n in ("a.png", "b.png", "c.dcm")])[:, None]
    assert pool.images.shape == (3, 1, 9, 7) and (pool.spatial_dims, pool.size) == (2, 7)
    assert np.array_equal(pool.images.numpy(), naive)


def test_a_folder_of_nifti_volumes_on_disk_equals_the_decoded_volumes(tmp_path, cache_dir):
    rng = np.random.default_rng(1)
    (tmp_path / "vols").mkdir()
    for i, shape in enumerate([(6, 5, 4), (4, 7, 3)]):
        write_nifti(tmp_path / "vols" / f"v{i}.nii.gz", rng.normal(size=shape).astype(np.float32))
    pool = folder_pool(tmp_path / "vols", storage="disk", workers=2)
    vols = [read_nifti(tmp_path / "vols" / f"v{i}.nii.gz")[0] for i in range(2)]
    decoded = [to_uint8(normalize_intensity(v)) for v in vols]
    naive = np.stack([pad_or_crop(v, (6, 7, 4)) for v in decoded])[:, None]
    assert np.array_equal(pool.images.numpy(), naive) and pool.spatial_dims == 3
    assert len(files_in(cache_dir)) == 1
    resized = folder_pool(tmp_path / "vols", 8, storage="disk", workers=0)
    assert resized.images.shape == (2, 1, 8, 8, 8) and len(files_in(cache_dir)) == 2


@pytest.mark.parametrize("flag", ["breastmnist", "bloodmnist", "adrenalmnist3d"])  # grey, RGB, 3D
def test_medmnist_streamed_to_disk_equals_the_in_memory_load(tmp_path, cache_dir, flag):
    path = tiny_file(tmp_path, flag)
    mem = load_medmnist(flag, path=path, download=False)
    disk = load_medmnist(flag, path=path, download=False, storage="disk")
    for split in ("train", "val", "test"):
        a, b = mem.split(split), disk.split(split)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert len(files_in(cache_dir)) == 3  # one memory-mapped file per split


def test_a_csv_on_disk_equals_memory_and_its_splits_are_views(tmp_path, cache_dir):
    rng = np.random.default_rng(2)
    (tmp_path / "img").mkdir()
    lines = ["path,label,patient_id"]
    for i in range(20):
        write_png(tmp_path / "img" / f"{i}.png", rng.integers(0, 256, (12, 10)))
        lines.append(f"img/{i}.png,{i % 2},p{i // 2}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    args = (tmp_path / "labels.csv", ["path", "label", "patient_id"], 8, "none", 5, 0, 0)
    mem = load_csv_classification(*args, storage="memory")
    disk = load_csv_classification(*args, storage="disk", workers=2)
    for split in ("train", "val", "test"):
        assert torch.equal(mem.split(split).images, disk.split(split).images)
        assert torch.equal(mem.split(split).labels, disk.split(split).labels)
    whole = np.load(next(cache_dir.iterdir()), mmap_mode="r")
    assert len(whole) == 20 and len(disk.train) + len(disk.val) + len(disk.test) == 20
    ptr = disk.train.images.data_ptr()  # the splits are consecutive slices of one mapped array
    assert disk.val.images.data_ptr() == ptr + len(disk.train) * 64
    assert disk.test.images.data_ptr() == ptr + (len(disk.train) + len(disk.val)) * 64


def test_batches_gathered_in_workers_equal_the_in_process_batches(tmp_path):
    x = cached_stack("b", 30, (1, 4, 4), lambda i: np.full((1, 4, 4), i, np.uint8), storage="disk", workers=0)
    y = torch.arange(30)
    plain = TensorBatches(x, y, 8, seed=4, drop_last=False)
    ahead = TensorBatches(x, y, 8, seed=4, drop_last=False, workers=2)
    for a, b in zip(plain.epoch(1), ahead.epoch(1, start=0), strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert [b["label"].tolist() for b in ahead.epoch(1, start=2)] == \
        [b["label"].tolist() for b in list(plain.epoch(1))[2:]]


def test_medssl_pretrain_on_an_unlabelled_folder_through_the_disk_cache(tmp_path, cache_dir, capsys):
    from medssl.cli import main

    rng = np.random.default_rng(3)
    (tmp_path / "pool").mkdir()
    for i in range(12):
        write_png(tmp_path / "pool" / f"{i}.png", rng.integers(0, 256, (20 + i, 24)))
    sets = [f"data.path={tmp_path / 'pool'}", "data.format=folder", "data.storage=disk", "data.size=16",
            "model.width=0.125", "pretrain.epochs=1", "pretrain.batch_size=4", "engine.precision=fp32",
            "engine.log_every=1",
            "pretrain.method_args={proj_hidden_dim: 16, proj_dim: 8}"]
    args = ["pretrain", "configs/demo.yaml", "--out", str(tmp_path / "run")]
    args += [x for s in sets for x in ("--set", s)]
    assert main(args) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "encoder.safetensors").is_file() and len(files_in(cache_dir)) == 1
    rows = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(rows) == 3  # 12 images, batch 4
    study = ["study", "configs/demo.yaml", "--set", "data.format=folder", "--set", f"output_dir={tmp_path}"]
    assert main(study) == 2
    assert "data.format=folder holds unlabelled images" in capsys.readouterr().err


def test_a_pool_folder_is_searched_recursively_in_natural_order(tmp_path):
    for sub, names in (("b", ["10.png", "2.png"]), ("a", ["1.png"])):
        (tmp_path / "pool" / sub).mkdir(parents=True)
        for i, n in enumerate(names):
            write_png(tmp_path / "pool" / sub / n, np.full((4, 4), 10 * (len(sub) + i) + ord(sub[0]) - 96))
    (tmp_path / "pool" / ".hidden").mkdir()
    write_png(tmp_path / "pool" / ".hidden" / "x.png", np.zeros((4, 4)))  # ignored, like hidden files
    pool = folder_pool(tmp_path / "pool", storage="memory", workers=0)
    assert pool.images[:, 0, 0, 0].tolist() == [11, 22, 12]  # a/1, b/2, b/10
    (tmp_path / "pool" / "b" / "notes.txt").write_text("x")
    with pytest.raises(MedsslError, match=r"notes\.txt: not an image file"):
        folder_pool(tmp_path / "pool")


def test_dicom_series_folders_are_volumes_sorted_along_the_normal(tmp_path):
    from medssl.data.volume import read_dicom_dir

    rng = np.random.default_rng(4)
    for s, n in (("s1", 3), ("s2", 5)):
        (tmp_path / "ct" / s).mkdir(parents=True)
        for k in range(n):  # written in reverse position order: the reader must sort them
            write_dicom(tmp_path / "ct" / s / f"{k}.dcm", rng.integers(0, 2000, (6, 4)).astype(np.uint16),
                        z=float(n - k), instance=k + 1)
    pool = folder_pool(tmp_path / "ct", storage="disk", workers=2, series=True)
    assert pool.spatial_dims == 3 and pool.images.shape == (2, 1, 5, 6, 4)
    for i, s in enumerate(("s1", "s2")):
        want = pad_or_crop(to_uint8(normalize_intensity(read_dicom_dir(tmp_path / "ct" / s)[0])), (5, 6, 4))
        assert np.array_equal(pool.images[i, 0].numpy(), want)


def _rss_kib() -> int:
    """Resident file-backed pages of this process (KiB; Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


def test_batches_from_a_disk_cache_give_their_pages_back(tmp_path):
    """A memory-mapped pool read batch by batch keeps the resident set flat: every page read counts
    in it until released (the release runs after each batch)."""
    from medssl.data.cache import is_mapped, release

    n, item = 256, (1, 64, 64, 64)  # 64 MiB on disk
    x = cached_stack("rss", n, item, lambda i: np.full(item, i % 251, np.uint8), storage="disk", workers=0)
    assert is_mapped(x) and is_mapped(x[10:20]) and not is_mapped(torch.zeros(3, dtype=torch.uint8))
    release(x)
    before = _rss_kib()
    assert int(x.sum()) > 0  # touches every page: +64 MiB resident
    assert _rss_kib() - before > 60 * 1024
    release(x)
    assert _rss_kib() - before < 8 * 1024
    seen = [b["image"][:, 0, 0, 0, 0].mul(255).round().int().tolist()
            for b in TensorBatches(x, None, 32, seed=0).epoch(0)]
    assert sorted(v for batch in seen for v in batch) == sorted(i % 251 for i in range(n))  # content intact
    assert _rss_kib() - before < 16 * 1024  # flat after a whole epoch
