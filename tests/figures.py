"""Timings the suite measures are recorded, not asserted: a loaded CI box makes a wall-clock
bound flaky, and the targets live in the benchmarks (`study bench`, docs/benchmarks.md). Each
figure lands in test-artifacts/figures.json and in the test's output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ARTIFACT = Path(__file__).resolve().parents[1] / "test-artifacts" / "figures.json"


def record(test: str, **figures: Any) -> None:
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(ARTIFACT.read_text()) if ARTIFACT.exists() else {}
    old[test] = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
    ARTIFACT.write_text(json.dumps(old, indent=1, sort_keys=True))
    print(f"figures ({test}): " + ", ".join(f"{k} {v}" for k, v in old[test].items()))
