"""`study report` runs where nothing trains (a login node with the results and the storage):
importing the report must not import torch (650 MB resident on its own, measured here, against
210 MB for the whole report), and the names callers use (`report.build_report`,
`report.OPTIMISTIC`, ...) stay importable from the package.

Checked in a fresh interpreter: this pytest process has imported torch already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What a torch import pulled in, if anything: the study modules loaded in import order, so a
# failure names the chain to cut (the first study module before torch is usually the culprit).
PROBE = """
import json, sys
import study.report
print(json.dumps({"torch": "torch" in sys.modules,
                  "study": [m for m in sys.modules if m.startswith("study")]}))
"""


def test_importing_the_report_imports_no_torch() -> None:
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = json.loads(r.stdout.splitlines()[-1])
    assert not loaded["torch"], ("importing study.report imported torch; study modules loaded, "
                                 f"in order: {loaded['study']} (python -X importtime -c "
                                 "'import study.report' shows who imported it)")


def test_the_public_names_of_the_report_are_importable() -> None:
    from study import report

    assert set(report.__all__) <= set(dir(report))
    # study/commands/report.py calls build_report; OPTIMISTIC is study.published's, re-exported
    assert callable(report.build_report) and "optimistic" in report.OPTIMISTIC
