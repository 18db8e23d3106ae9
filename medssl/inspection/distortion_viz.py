"""``medssl show-distortions``: what a distortion-localisation model sees, finds and restores.

For a pretrained ``distortion_maskrcnn`` or ``distortion_dense`` run, rows are examples (evenly
spaced images of the run's pretraining pool; middle slices for 3D) and columns are: the original,
the distorted input with the true regions (colour = distortion type), the prediction (detected
boxes with type and score, or the dense type map) and the restored image.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from medssl.config import StudyConfig, load_config
from medssl.errors import MedsslError
from medssl.inspection.corruption_grid import find_run, load_pretext
from medssl.transforms.corruptions.regions import DISTORTION_TYPES

COLOURS = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628"]  # one per type


def _pool(cfg: StudyConfig) -> torch.Tensor:
    """uint8 [N, C, *S]: the images the run was pretrained on."""
    if cfg.task == "segmentation":
        from medssl.studies.segmentation import load_checked

        return load_checked(cfg).pretrain_data().images
    from medssl.data.medmnist import load_medmnist

    return load_medmnist(cfg.data.dataset, cfg.data.size, cfg.data.path).test.images


def _mid(x: torch.Tensor) -> torch.Tensor:
    """[C, *S] -> [H, W] grey display image (first channel; middle slice of a volume)."""
    x = x[0]
    return x[x.shape[0] // 2] if x.dim() == 3 else x


def _paste(image: torch.Tensor, boxes: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Restored patches [n, C, M, M] pasted into a copy of image [C, H, W] at xyxy boxes (best on top)."""
    out = image.clone()
    for box, patch in reversed(list(zip(boxes.round().long().tolist(), patches, strict=True))):
        x0, y0 = max(box[0], 0), max(box[1], 0)
        x1, y1 = min(box[2], image.shape[-1]), min(box[3], image.shape[-2])
        if x1 > x0 and y1 > y0:
            out[:, y0:y1, x0:x1] = F.interpolate(patch[None], size=(y1 - y0, x1 - x0), mode="bilinear",
                                                 align_corners=False)[0]
    return out


def distortion_figure(model: torch.nn.Module, images: torch.Tensor, out: Path, seed: int = 0,
                      score_threshold: float = 0.5) -> Path:
    """Write the figure for float ``images`` [N, C, *S] in [0, 1]; returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    model.generator.manual_seed(seed)
    with torch.no_grad():
        d = model.distort(images)
        dense = not hasattr(model, "detector")
        if dense:
            logits, restored = model.predict(d.input)
            pred_map = logits.argmax(1)
        else:
            dets = model.predict(d.input)
            restored = torch.stack([_paste(d.input[i], r["boxes"][r["scores"] >= score_threshold],
                                           r["restored"][r["scores"] >= score_threshold])
                                    for i, r in enumerate(dets)])
    dims = images.dim() - 2
    types = ListedColormap(["none", *COLOURS])
    titles = ["original", "distorted + true regions", "predicted types", "restored"]
    fig, axes = plt.subplots(len(images), 4, figsize=(8, 2.1 * len(images)), squeeze=False)
    for i in range(len(images)):
        for j, pic in enumerate([images[i], d.input[i], d.input[i], restored[i]]):
            ax = axes[i, j]
            grey = _mid(pic).float().clamp(0, 1).numpy()
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.axis("off")
            if i == 0:
                ax.set_title(titles[j], fontsize=8)
        truth = zip(d.boxes[i].tolist(), d.labels[i].tolist(), d.valid[i].tolist(), strict=True)
        for box, label, ok in truth:
            if not ok:
                continue
            lo, hi = box[:dims][-2:], box[dims:][-2:]  # (y, x) of the last two axes
            if dims == 3 and not box[0] <= images.shape[2] // 2 < box[dims]:
                continue  # the region misses the middle slice
            axes[i, 1].add_patch(Rectangle((lo[1] - 0.5, lo[0] - 0.5), hi[1] - lo[1], hi[0] - lo[0],
                                           fill=False, edgecolor=COLOURS[label - 1], linewidth=1.5))
        if dense:
            m = _mid(pred_map[i][None].float()).numpy()
            axes[i, 2].imshow(m, cmap=types, vmin=0, vmax=len(DISTORTION_TYPES), alpha=(m > 0) * 0.55,
                              interpolation="nearest")
        else:
            r = dets[i]
            for box, label, score in zip(r["boxes"].tolist(), r["labels"].tolist(), r["scores"].tolist(),
                                         strict=True):
                if score < score_threshold:
                    continue
                c = COLOURS[label - 1]
                x0, y0, x1, y1 = box
                axes[i, 2].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                               edgecolor=c, linewidth=1.5))
                axes[i, 2].text(x0, y0, f"{DISTORTION_TYPES[label - 1]} {score:.2f}", color=c,
                                fontsize=5, va="bottom")
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in COLOURS]
    fig.legend(handles, DISTORTION_TYPES, loc="lower center", ncol=len(COLOURS), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def show_distortions(checkpoint: str, out: Path, n: int = 4, seed: int = 0,
                     overrides: list[str] | None = None) -> Path:
    """The CLI entry: load the run and its pretraining images, write the figure, return its path."""
    config, ckpt = find_run(Path(checkpoint))
    cfg = load_config(config, overrides or [])
    if cfg.pretrain.method not in ("distortion_dense", "distortion_maskrcnn"):
        raise MedsslError(f"{ckpt}: method '{cfg.pretrain.method}' is not a distortion-localisation method")
    pool = _pool(cfg)
    pick = torch.linspace(0, len(pool) - 1, min(n, len(pool))).long()
    images = pool[pick].float() / 255
    model = load_pretext(cfg, ckpt, images.dim() - 2, images.shape[1], cfg.data.size).eval()
    return distortion_figure(model, images, out, seed)
