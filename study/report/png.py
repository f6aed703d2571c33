"""`study report --png`: every figure as a PNG file, through kaleido and a system Chromium."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import plotly.io as pio

__all__ = ["CHROMIUM", "export_png"]

CHROMIUM = "/usr/bin/chromium"   # where Debian's and Ubuntu's chromium package puts it


def export_png(figures: Mapping[str, Any], out_dir: Path, log: Callable[[str], None]) -> int:
    """PNG files via kaleido, which drives a system Chromium; a note and no files when either
    is missing (kaleido is not a dependency: `pip install kaleido` adds it)."""
    try:
        import kaleido  # noqa: F401   optional, so imported only when --png asks for it
    except ImportError:
        log("--png: kaleido is not installed (pip install kaleido); no PNG files written")
        return 0
    browser = os.environ.get("BROWSER_PATH") or shutil.which("chromium") or (
        CHROMIUM if Path(CHROMIUM).exists() else None)
    if browser is None:
        log("--png: no chromium found (apt-get install chromium); no PNG files written")
        return 0
    os.environ.setdefault("BROWSER_PATH", browser)   # where kaleido >= 1 looks for a browser
    out_dir.mkdir(parents=True, exist_ok=True)
    # One browser for all figures: write_image per figure starts one each (~6 s apiece here).
    pio.write_images(list(figures.values()), [out_dir / f"{n}.png" for n in figures], width=1200)
    log(f"--png: {len(figures)} figures in {out_dir}")
    return len(figures)
