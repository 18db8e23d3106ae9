"""Overlay PNGs: image | ground truth | prediction, one row per slice (3D: three orthogonal slices
through the centre of the ground-truth structure; 2D: the image itself)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medssl.io import atomic_write


def centre_index(target: np.ndarray, image_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Centre of mass of the foreground (rounded), or the volume centre when there is none."""
    fg = np.argwhere(target > 0)
    if len(fg) == 0:
        return tuple(n // 2 for n in image_shape)
    return tuple(int(c) for c in np.rint(fg.mean(0)))


def overlay_slices(image: np.ndarray, target: np.ndarray,
                   pred: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(title, image, target, pred) 2D slices: the image for 2D, the mid-structure slices for 3D."""
    if image.ndim == 2:
        return [("", image, target, pred)]
    centre = centre_index(target, image.shape)
    out = []
    for axis in range(3):
        idx = [slice(None)] * 3
        idx[axis] = centre[axis]
        sl = tuple(idx)
        out.append((f"axis {axis} = {centre[axis]}", image[sl], target[sl], pred[sl]))
    return out


def save_overlay(image: np.ndarray, target: np.ndarray, pred: np.ndarray, path: Path,
                 num_classes: int, title: str = "") -> Path:
    """Write a PNG with columns image | ground truth | prediction (labels coloured, 50% alpha).

    Args:
        image: uint8 ``[*S]`` (2D or 3D); target, pred: integer class maps ``[*S]``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colours = ListedColormap(["none", "tab:red", "tab:cyan", "tab:green", "tab:orange",
                              "tab:purple"][:max(2, num_classes)])
    rows = overlay_slices(image, target, pred)
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), squeeze=False)
    for r, (label, img, gt, pr) in enumerate(rows):
        for c, (name, mask) in enumerate((("image", None), ("ground truth", gt), ("prediction", pr))):
            ax = axes[r, c]
            ax.imshow(img.T if image.ndim == 3 else img, cmap="gray", vmin=0, vmax=255)
            if mask is not None:
                m = np.ma.masked_equal(mask.T if image.ndim == 3 else mask, 0)
                ax.imshow(m, cmap=colours, vmin=0, vmax=max(1, num_classes - 1), alpha=0.5,
                          interpolation="nearest")
            ax.set_title(f"{name} {label}".strip(), fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path
