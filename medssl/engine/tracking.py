"""Optional experiment tracking (``engine.tracking``): the rows ``fit`` writes to ``log.jsonl``,
mirrored to TensorBoard (``run_dir/tensorboard``). ``log.jsonl`` stays the source of truth.

Step rows go under ``train/<key>``, per-epoch rows (``on_epoch_end`` metrics) under ``val/<key>``;
every numeric key but ``step`` (the x axis; ``epoch`` too in per-epoch rows) is one scalar.
MLflow is accepted by the config but not supported yet (the ``mlflow`` package pulls in some
sixty dependencies: pandas, pyarrow, SQLAlchemy, a web server).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from medssl.errors import MedsslError

KINDS = ("tensorboard", "mlflow")
INSTALL = "pip install 'medssl[tracking]'"


class Tracker(Protocol):
    def log(self, row: dict[str, Any], step: int, split: str = "train") -> None: ...

    def close(self) -> None: ...


class NoTracker:
    """Tracking off (no kinds, or a rank other than 0)."""

    def log(self, row: dict[str, Any], step: int, split: str = "train") -> None:
        pass

    def close(self) -> None:
        pass


def scalars(row: dict[str, Any], split: str = "train") -> dict[str, float]:
    """``{"<split>/<key>": value}`` for the numeric keys of ``row`` but the step (and the epoch
    of a per-epoch row, which is its index rather than a metric)."""
    skip = {"step"} if split == "train" else {"step", "epoch"}
    return {f"{split}/{k}": float(v) for k, v in row.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardTracker:
    """Scalars to ``run_dir/tensorboard`` (``tensorboard --logdir <run or study dir>``)."""

    def __init__(self, run_dir: Path, run_name: str, config: dict[str, Any] | None = None,
                 start_step: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise MedsslError("engine.tracking=tensorboard needs the tensorboard package: "
                              f"{INSTALL}") from err
        # a resumed run hides the events after its checkpoint's step, as log.jsonl drops their rows
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"),
                                    purge_step=start_step + 1 if start_step else None)
        if config and not start_step:
            text = json.dumps(config, indent=2, default=str)
            self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))
        self.run_name = run_name

    def log(self, row: dict[str, Any], step: int, split: str = "train") -> None:
        for tag, value in scalars(row, split).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # on disk with its log.jsonl row (a killed run loses neither)

    def close(self) -> None:
        self.writer.close()


class Trackers:
    """Several trackers as one."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)

    def log(self, row: dict[str, Any], step: int, split: str = "train") -> None:
        for t in self.trackers:
            t.log(row, step, split)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


def check_kinds(kinds: Sequence[str]) -> None:
    """One-line errors for unknown or unsupported tracker names, before any file is written."""
    for kind in kinds:
        if kind not in KINDS:
            raise MedsslError(f"engine.tracking: unknown tracker {kind!r} (known: {', '.join(KINDS)})")
        if kind == "mlflow":
            raise MedsslError("engine.tracking=mlflow is not supported yet; "
                              "use engine.tracking=[tensorboard]")


def make_tracker(kinds: Sequence[str], run_dir: Path | None, run_name: str,
                 config: dict[str, Any] | None = None, start_step: int = 0) -> Tracker:
    """A tracker for ``kinds`` (``engine.tracking``) writing under ``run_dir``; a no-op when
    ``kinds`` is empty or ``run_dir`` is None (ranks other than 0). ``start_step`` > 0: a resumed
    run, whose earlier events past that step are hidden."""
    check_kinds(kinds)
    if not kinds or run_dir is None:
        return NoTracker()
    made: list[Tracker] = []
    for kind in dict.fromkeys(kinds):  # each once, in order
        if kind == "tensorboard":
            made.append(TensorBoardTracker(run_dir, run_name, config, start_step))
    return made[0] if len(made) == 1 else Trackers(made)
