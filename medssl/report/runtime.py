"""What a study trained on, for the Compute sections of both reports."""

from __future__ import annotations

from typing import Any


def runtime_text(rows: list[dict[str, Any]]) -> str:
    """The device and precision the study trained in, from its rows ("" when no row records them)."""
    ran = sorted({f"{r['device']} in {r['precision']}" for r in rows if "precision" in r})
    if not ran:
        return ""
    mixed = " (a study resumed on another set-up: each row records its own)" if len(ran) > 1 else ""
    return f"Trained on {' and '.join(ran)}{mixed}."
