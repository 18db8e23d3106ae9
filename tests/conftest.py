"""Shared fixtures. Real-data tests read $MEDSSL_DATA_DIR and fail loudly when it is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one thread each
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fp32_and_seeded():
    """Tests run in fp32 with a fixed torch seed; bf16 is exercised explicitly where it matters."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def data_dir() -> Path:
    """The shared real-data folder; CI sets MEDSSL_DATA_DIR=../shared/data. Never skip."""
    value = os.environ.get("MEDSSL_DATA_DIR")
    assert value, "MEDSSL_DATA_DIR is not set: point it at ../shared/data (make test does)"
    path = Path(value)
    assert (path / "breastmnist" / "breastmnist.npz").is_file(), f"real data missing under {path}"
    return path


@pytest.fixture
def compiled_parts(monkeypatch) -> list[str]:
    """``engine.compile`` through dynamo's eager backend (traced, not inductor-compiled: fast):
    the class names of the models whose parts ``fit`` compiled, in order."""
    import medssl.engine.trainer as trainer

    names: list[str] = []
    real = trainer.compile_parts

    def record(model):
        names.append(type(model).__name__)
        return real(model, backend="eager")

    torch._dynamo.reset()
    monkeypatch.setattr(trainer, "compile_parts", record)
    return names
