"""Batch sources for the engine (its contract is ``medssl.engine.trainer.Batches``).

``TensorBatches`` serves uint8 data indexed like a tensor: in memory (MedMNIST, volumes padded to
one shape) or a memory-mapped on-disk cache (``medssl.data.cache``). Under ``torchrun`` every rank
takes its share of each global batch: the same seeded permutation on all ranks, batch ``i`` split
into ``world`` equal parts, part ``rank`` here.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from medssl.data.cache import is_mapped, release
from medssl.errors import MedsslError
from medssl.losses.distributed import rank as current_rank
from medssl.losses.distributed import world_size as current_world


def batch_indices(n: int, batch_size: int, seed: int, drop_last: bool) -> list[torch.Tensor]:
    """Index batches of a seeded permutation; a trailing batch of 1 is always dropped (BatchNorm)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out = []
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if len(idx) < batch_size and (drop_last or len(idx) < 2):
            break
        out.append(idx)
    return out


def steps_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    full, rest = divmod(n, batch_size)
    return full + (0 if drop_last or rest < 2 else 1)


class TensorBatches:
    """Seeded batches of in-memory uint8 ``images`` ``[N, C, *S]`` (and ``labels`` ``[N, ...]``).

    Each batch is sliced on the CPU, moved to ``device`` as uint8 (4x fewer bytes than float; pinned
    and non-blocking on CUDA) and only then converted to float in [0, 1]. The order of epoch ``e``
    is a permutation seeded by ``seed * 100_003 + e``. ``batch_size`` is the global batch;
    ``rank``/``world`` (default: the running process group) pick this process's share; a trailing
    partial batch that cannot give every rank 2 samples is dropped on all ranks (BatchNorm).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, batch_size: int, seed: int,
                 drop_last: bool = True, device: torch.device | str = "cpu",
                 channels_last: bool = False, rank: int | None = None, world: int | None = None,
                 workers: int = 0) -> None:
        self.images, self.labels, self.num_items = images, labels, len(images)
        self.batch_size, self.seed, self.drop_last = batch_size, seed, drop_last
        self.device = torch.device(device)
        self.channels_last = channels_last and images.dim() == 4  # a 2D-only memory format
        self.workers = workers  # > 0: gather batches ahead in DataLoader workers (memory-mapped data)
        self.rank = current_rank() if rank is None else rank
        self.world = current_world() if world is None else world
        if batch_size % self.world:
            raise MedsslError(f"batch size {batch_size} is not a multiple of the {self.world} processes")

    def __len__(self) -> int:
        if self.world == 1:
            return steps_per_epoch(len(self.images), self.batch_size, self.drop_last)
        return len(self._batches(0))

    def _batches(self, epoch: int) -> list[torch.Tensor]:
        out = batch_indices(len(self.images), self.batch_size, self.seed * 100_003 + epoch, self.drop_last)
        if self.world > 1:  # each rank needs >= 2 samples of a trailing partial batch (BatchNorm)
            out = [idx.tensor_split(self.world)[self.rank] for idx in out if len(idx) >= 2 * self.world]
        return out

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        batches = self._batches(epoch)[start:]
        if not self.workers:
            mapped = is_mapped(self.images)
            for idx in batches:
                batch = self.batch(idx)
                if mapped:  # keep the resident set flat however large the file (see cache.release)
                    release(self.images)
                yield batch
            return
        loader = DataLoader(_Gather(self.images, self.labels), batch_size=None, sampler=batches,
                            num_workers=self.workers, prefetch_factor=4,
                            pin_memory=self.device.type == "cuda")
        for x, y in loader:
            yield self._finish(x, y)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._finish(self.images[idx], None if self.labels is None else self.labels[idx])

    def _finish(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        x = self._to_device(images).float().div_(255)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = {"image": x}
        if labels is not None:
            out["label"] = self._to_device(labels)
        return out

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return (t if t.is_pinned() else t.pin_memory()).to(self.device, non_blocking=True)
        return t.to(self.device)


class _Gather(Dataset):
    """``[idx] -> (images[idx], labels[idx] or None)``; a memory map is read in index order."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.images, self.labels = images, labels

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        ordered, back = idx.sort()  # ascending offsets: sequential pages of a memory-mapped file
        x = self.images[ordered][back.argsort()]
        release(self.images)  # a no-op for in-memory images
        return x, None if self.labels is None else self.labels[idx]
