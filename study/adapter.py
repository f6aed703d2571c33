"""The one place that reaches into another library's private internals, each pinned by tests
against the installed version (test_layout: the version; the golden sbatch files and
test_slurm_fake: what each function returns).

- submitit has no public way to render the sbatch script a job would get without submitting
  it; `study` shows it to users (`sbatch_text`) and pins it with golden files. The AutoExecutor
  keeps its SlurmExecutor in `_executor`, whose `_make_submission_file_text` writes the script
  and whose `max_num_timeout` is the requeue budget (`requeue_budget`).

Optuna needs no entry here: the harness holds the storage it opened and uses BaseStorage's
public methods (see storage.trial_id).
"""

from __future__ import annotations

from typing import Any

import submitit

__all__ = ["SUBMITIT_TESTED", "requeue_budget", "sbatch_text"]

# The submitit releases whose internals this module was checked against (tests pin them).
SUBMITIT_TESTED = ("1.5",)


def sbatch_text(executor: submitit.AutoExecutor, command: str) -> str:
    """The sbatch script `executor` (cluster="slurm", parameters set) would submit."""
    inner: Any = executor._executor
    return str(inner._make_submission_file_text(command, "UID"))


def requeue_budget(executor: submitit.AutoExecutor) -> int:
    """How many timeouts a job of `executor` may be requeued after (slurm_max_num_timeout)."""
    inner: Any = executor._executor
    return int(inner.max_num_timeout)
