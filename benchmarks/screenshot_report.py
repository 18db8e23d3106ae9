"""Screenshot a self-contained HTML report with the system's headless Chromium, offline.

    python benchmarks/screenshot_report.py REPORT.html OUT.png [--width 1280] [--height 6000]

The browser is ``$CHROMIUM`` or the first of chromium / chromium-browser / google-chrome on the
PATH (Debian: ``apt-get install chromium``); none found: exit 2. The page gets no network (every
host resolves to nothing), so what shows is what the file itself holds. The window is
``--width`` x ``--height`` px, so give a height above the page's; the PNG is then cropped below
the lowest non-white row (plus a margin). It is checked: more than 1% of its pixels not white,
else exit 1. It prints the size and that share, with a warning when content reaches the
window's bottom edge (the page is probably cut: raise ``--height``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MIN_INK = 0.01  # share of non-white pixels below which the shot counts as blank
WHITE = 250  # a pixel with every channel at or above this counts as white
OFFLINE_FLAGS = (
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--mute-audio",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)


def find_browser() -> str | None:
    """``$CHROMIUM`` if set (a path or a name on the PATH), else the first of ``BROWSERS`` found."""
    env = os.environ.get("CHROMIUM")
    if env:
        return shutil.which(env)
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(browser: str, html: Path, out: Path, width: int, height: int, timeout: float) -> None:
    """Render ``html`` in a ``width`` x ``height`` headless window and write the PNG to ``out``."""
    with tempfile.TemporaryDirectory(prefix="medssl-chromium-") as profile:
        cmd = [
            browser,
            "--headless=new",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            *OFFLINE_FLAGS,
            "--virtual-time-budget=5000",
            f"--window-size={width},{height}",
            f"--screenshot={out}",
            html.resolve().as_uri(),
        ]
        out.unlink(missing_ok=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-5:])
        raise RuntimeError(f"{browser} exited {proc.returncode} without {out}:\n{tail}")


def crop_and_measure(png: Path, margin: int = 16) -> tuple[tuple[int, int], float, bool]:
    """Crop ``png`` below its lowest non-white row (+ ``margin``) in place; return the cropped size,
    its share of non-white pixels and whether content touched the window's bottom edge."""
    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"))
    mask = (rgb < WHITE).any(axis=2)
    rows = np.flatnonzero(mask.any(axis=1))
    height = rgb.shape[0]
    if rows.size == 0:
        return (rgb.shape[1], height), 0.0, False
    keep = min(height, int(rows[-1]) + 1 + margin)
    if keep < height:
        Image.fromarray(rgb[:keep]).save(png)
    return (rgb.shape[1], keep), float(mask[:keep].mean()), int(rows[-1]) >= height - 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path, help="self-contained HTML file")
    p.add_argument("out", type=Path, help="PNG to write")
    p.add_argument("--width", type=int, default=1280, help="window width in px (default 1280)")
    p.add_argument("--height", type=int, default=6000, help="window height in px (default 6000)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for Chromium (default 120)")
    args = p.parse_args(argv)

    if not args.report.is_file():
        print(f"screenshot_report: no such file: {args.report}", file=sys.stderr)
        return 2
    browser = find_browser()
    if browser is None:
        print(
            "screenshot_report: no Chromium found ($CHROMIUM, "
            + ", ".join(BROWSERS)
            + "); install one, e.g. apt-get install chromium",
            file=sys.stderr,
        )
        return 2
    try:
        screenshot(browser, args.report, args.out, args.width, args.height, args.timeout)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        print(f"screenshot_report: {err}", file=sys.stderr)
        return 1

    (w, h), share, cut = crop_and_measure(args.out)
    print(f"{args.out}: {w}x{h} px, {share:.1%} non-white")
    if share <= MIN_INK:
        print(f"screenshot_report: blank page (non-white {share:.2%} <= {MIN_INK:.0%})", file=sys.stderr)
        return 1
    if cut:
        print(
            f"warning: content reaches the window's bottom edge; the page may be cut (try --height {2 * h})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
