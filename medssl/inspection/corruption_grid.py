"""``medssl show-corruptions``: a PNG grid of what the pretext corruptions do to real images.

Rows are examples (evenly spaced test images; mid-slices for 3D), columns are the original and
each corruption applied to every sample; given a restorative run (Models Genesis, context
restoration, denoising, MAE, or a combination containing one), two more columns show that
method's own corrupted input and its restored output.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from medssl.config import StudyConfig, load_config
from medssl.engine.checkpoint import load_weights
from medssl.errors import MedsslError
from medssl.transforms import corruptions as C

Corruption = Callable[[torch.Tensor, torch.Generator], C.Corrupted]


def _mae_patch(size: int) -> int:
    """The smallest divisor of ``size`` that is at least size / 10 (4 px at 28, 8 px at 64)."""
    return next(p for p in range(1, size + 1) if size % p == 0 and p >= size / 10)


DISPLAY: dict[str, Corruption] = {  # every corruption forced on (p = 1) so each row shows it
    "nonlinear": lambda x, g: C.nonlinear_intensity(x, g, p=1.0),
    "local_shuffle": lambda x, g: C.local_pixel_shuffle(x, g, p=1.0),
    "inpaint": C.inpaint,
    "outpaint": C.outpaint,
    "genesis": lambda x, g: C.models_genesis(x, g, 1.0, 1.0, 1.0),
    "context_swap": C.context_swap,
    "noise": C.gaussian_noise,
    "blur": C.gaussian_blur,
    "mae_mask": lambda x, g: C.random_patch_mask(x, g, _mae_patch(x.shape[-1])),
}


def _display(x: torch.Tensor) -> torch.Tensor:
    """[B, C, *S] -> [B, H, W, C] floats in [0, 1]; 3D volumes give their middle slice."""
    if x.dim() == 5:
        x = x[:, :, x.shape[2] // 2]
    return x.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu()


def corruption_grid(images: torch.Tensor, names: list[str], out: Path, seed: int = 0,
                    restorer: nn.Module | None = None, label: str = "model") -> Path:
    """Write the grid for float ``images`` [N, C, *S] in [0, 1]; returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(seed)
    columns = [("original", images)] + [(n, DISPLAY[n](images, g).input) for n in names]
    if restorer is not None:
        with torch.no_grad():
            corrupted = restorer.corrupt(images)
            restored = restorer.restore(corrupted)
        columns += [(f"{label} input", corrupted.input), (f"{label} restored", restored)]
    panels = [(title, _display(x)) for title, x in columns]
    rows, cols = len(images), len(panels)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    for j, (title, pics) in enumerate(panels):
        axes[0, j].set_title(title, fontsize=8)
        for i in range(rows):
            pic = pics[i].squeeze(-1) if pics.shape[-1] == 1 else pics[i]
            axes[i, j].imshow(pic.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes[i, j].axis("off")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def find_run(path: Path) -> tuple[Path, Path]:
    """A run directory or checkpoint file -> (config.yaml, checkpoint.safetensors)."""
    if path.name == "encoder.safetensors":
        raise MedsslError(f"{path}: an encoder alone cannot restore; pass the run directory or its "
                          "checkpoint.safetensors (which holds the decoder too)")
    ckpt = path if path.is_file() else next((p for p in (path / "checkpoint.safetensors",
                                                         path / "pretrain" / "checkpoint.safetensors")
                                             if p.is_file()), None)
    if ckpt is None:
        raise MedsslError(f"{path}: no checkpoint.safetensors found (a pretrain or study run directory?)")
    config = next((p for p in (ckpt.parent / "config.yaml", ckpt.parent.parent / "config.yaml")
                   if p.is_file()), None)
    if config is None:
        raise MedsslError(f"{ckpt}: no config.yaml next to it or in the parent directory")
    return config, ckpt


def load_pretext(cfg: StudyConfig, ckpt: Path, spatial_dims: int, in_channels: int,
                 size: int) -> nn.Module:
    """The run's pretext module (``cfg.pretrain.method`` around its backbone) with ``ckpt``'s weights."""
    from medssl.methods import create_method
    from medssl.registry import create_backbone

    backbone = create_backbone(cfg.model.backbone, spatial_dims, in_channels, width=cfg.model.width,
                               img_size=size)
    model = create_method(cfg.pretrain.method, backbone, spatial_dims, size, cfg.pretrain.method_args)
    try:
        model.load_state_dict(load_weights(ckpt))
    except RuntimeError as err:
        raise MedsslError(f"{ckpt}: does not match {cfg.pretrain.method} on this dataset "
                          f"({str(err).splitlines()[0]})") from None
    return model


def load_restorer(cfg: StudyConfig, ckpt: Path, spatial_dims: int, in_channels: int,
                  size: int) -> tuple[nn.Module, str]:
    """The pretrained restorative module (or the restorative task of a combination) and its name."""
    model = load_pretext(cfg, ckpt, spatial_dims, in_channels, size)
    tasks = dict(getattr(model, "tasks", {}) or {cfg.pretrain.method: model})
    name = next((n for n, t in tasks.items() if hasattr(t, "restore")), None)
    if name is None:
        raise MedsslError(f"{ckpt}: method '{cfg.pretrain.method}' restores nothing to show")
    return tasks[name].eval(), name


def show_corruptions(config: str | None, overrides: list[str], out: Path, n: int = 4,
                     names: list[str] | None = None, checkpoint: str | None = None, seed: int = 0) -> Path:
    """The CLI entry: load data (and a restorative run), write the grid, return its path."""
    from medssl.data.medmnist import load_medmnist

    names = list(DISPLAY) if names is None else names
    unknown = [x for x in names if x not in DISPLAY]
    if unknown:
        raise MedsslError(f"unknown corruption '{unknown[0]}'; known: {', '.join(DISPLAY)}")
    run = find_run(Path(checkpoint)) if checkpoint else None
    cfg = load_config(config or (run[0] if run else None), overrides)
    data = load_medmnist(cfg.data.dataset, cfg.data.size, cfg.data.path)
    pick = torch.linspace(0, len(data.test) - 1, min(n, len(data.test))).long()
    images = data.test.images[pick].float() / 255
    torch.manual_seed(seed)  # the restorer's own corruption generator is seeded from it
    restorer, label = (load_restorer(cfg, run[1], data.spatial_dims, data.in_channels, data.size)
                       if run else (None, "model"))
    return corruption_grid(images, names, out, seed, restorer, label)
