"""Batch sources for the engine (its contract is ``medssl.engine.trainer.Batches``).

``TensorBatches`` serves in-memory uint8 data (MedMNIST, volumes padded to one shape); a streaming
source implements the same few members.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


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
    is a permutation seeded by ``seed * 100_003 + e``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, batch_size: int, seed: int,
                 drop_last: bool = True, device: torch.device | str = "cpu",
                 channels_last: bool = False) -> None:
        self.images, self.labels, self.num_items = images, labels, len(images)
        self.batch_size, self.seed, self.drop_last = batch_size, seed, drop_last
        self.device = torch.device(device)
        self.channels_last = channels_last and images.dim() == 4  # a 2D-only memory format

    def __len__(self) -> int:
        return steps_per_epoch(len(self.images), self.batch_size, self.drop_last)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for idx in batch_indices(len(self.images), self.batch_size, self.seed * 100_003 + epoch,
                                 self.drop_last)[start:]:
            yield self.batch(idx)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self._to_device(self.images[idx]).float().div_(255)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = {"image": x}
        if self.labels is not None:
            out["label"] = self._to_device(self.labels[idx])
        return out

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)
