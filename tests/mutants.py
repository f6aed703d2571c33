"""A mutation sample: small bugs that would silently change every number, one at a time, against
the fast tests (`-m "not slow"`) most relevant to each. Not a test module (pytest collects
test_*.py only): run it by hand.

    python tests/mutants.py                      # before and after, the table and kill rates
    python tests/mutants.py --phase before       # the existing tests only
    python tests/mutants.py --only M01,M08 --phase after
    python tests/mutants.py --check              # every pattern occurs exactly once, compiles
    python tests/mutants.py --phase before --json before.json
    python tests/mutants.py --reuse before.json --json both.json   # then only "after" runs

Each mutant is a text replacement in one file of `study/`. The harness copies this checkout's
`study/` and `tests/` (and pyproject.toml, with links to search_spaces/, slurm/ and data/) into
a temporary folder, checks the mutant's pattern occurs exactly once there (a refactor that
moved it is reported, not silently skipped), applies it, runs the mutant's test files with
PYTHONPATH=<that folder> and `-x` (the first failure kills it), and restores the file.

"before" runs each mutant's existing test files; "after" the same plus the test files added
for the issue "answers a researcher can trust and read" (item 9), those first, so the table
says which test kills it. A mutant with no added files has the same selection in both phases
and is run once. First, each phase runs its whole selection unmutated: a test failing there
(someone's work in progress) is deselected from the mutant runs and listed.

M01-M09 are the survivors the issue reports, M10-M24 more of the same kinds; the added tests
were written against those. M25-M34 (HELD_OUT) were written afterwards, with no test written
or changed for them: their kill rate is the one to quote for bugs the tests have not seen.
Merging two --json files (same "mutants" order) and passing the result to --reuse prints the
whole table without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTEST = ["-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", "-rfE",
          "--durations=0"]


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str          # under the checkout's root
    old: str           # must occur exactly once
    new: str
    what: str
    existing: tuple[str, ...]        # the fast tests most relevant to it, before the issue
    added: tuple[str, ...] = ()      # the files added for item 9 that target it


LOSSES = ("tests/test_losses.py",)
# the tests that train through train.fit and make_optimizer (test_pipeline.py and
# test_progress.py whole take ~6 minutes on a loaded 2-core box: these are their fit tests;
# the checkpoint-damage ones, 3 more fits each, test the file, not the numbers)
TRAIN = ("tests/test_pipeline.py::test_interrupted_stage_resumes_to_the_same_weights",
         "tests/test_progress.py::test_fit_records_and_progress_calls_are_backward_compatible")
KEYS = ("tests/test_stage_keys.py",)
FUSION = ("tests/test_fusion.py",)
LAUNCH_RETRY = ("tests/test_launch.py::test_vanished_worker_is_retried_with_the_same_params",
                "tests/test_launch.py::test_trial_out_of_requeues_is_retried_and_completes",
                "tests/test_faults_kills.py", "tests/test_slurm_fake.py")

MUTANTS = [
    # ---- the nine survivors of the sample the issue reports
    Mutant("M01", "study/losses.py",
           't_input = b.clean if teacher_input == "clean" else b.degraded',
           't_input = b.degraded if teacher_input == "clean" else b.clean',
           "distill_objective: teacher_input clean and degraded swapped",
           LOSSES, ("tests/test_oracles.py",)),
    Mutant("M02", "study/losses.py",
           "return (ce_weight * cross_entropy(logits, b.labels)\n"
           "                + feature_weight * cosine_feature_loss(feats, t_feats, layers))",
           "return (feature_weight * cross_entropy(logits, b.labels)\n"
           "                + ce_weight * cosine_feature_loss(feats, t_feats, layers))",
           "expert_objective: ce_weight and feature_weight swapped",
           LOSSES, ("tests/test_oracles.py",)),
    Mutant("M03", "study/train.py",
           "return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)",
           "return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)",
           "make_optimizer: adamw builds Adam (coupled L2)",
           TRAIN, ("tests/test_oracles.py",)),
    Mutant("M04", "study/stages.py",
           'if d.classes is not None or d.dataset == "imagefolder":   # kept classes',
           'if d.classes is not None and d.dataset != "imagefolder":   # kept classes',
           "stage keys: data.classes dropped for an image folder",
           KEYS, ("tests/test_key_configs.py",)),
    Mutant("M05", "study/stages.py",
           '"level": level, "seed": cfg.eval.seed}',
           '"level": level}',
           "degraded-copy bank key ignores eval.seed",
           (*KEYS, "tests/test_pipeline.py::"
            "test_evaluation_reuses_degraded_copies_and_results_across_trials"),
           ("tests/test_key_configs.py",)),
    Mutant("M06", "study/device_degrade.py",
           "torch.randint(d.lo, d.hi + 1, (n,), generator=generator",
           "torch.randint(d.lo, d.hi, (n,), generator=generator",
           "device path: level draw never reaches the top level",
           ("tests/test_device_degrade.py",
            "tests/test_degradations.py::test_random_levels_cover_both_ends"),
           ("tests/test_level_draws.py",)),
    Mutant("M07", "study/space/kinds.py",
           'v = trial.suggest_float(self.name, s["low"], s["high"], step=s["step"], '
           'log=s["log"])',
           'v = trial.suggest_float(self.name, s["low"], s["high"], step=s["step"])',
           "float space: `log: true` not passed to Optuna",
           ("tests/test_space.py",), ("tests/test_log_uniform.py",)),
    Mutant("M08", "study/launcher.py",
           'self.fail(t, reason, "infrastructure", retry=attempt <= self.retries)',
           'self.fail(t, reason, "infrastructure", retry=attempt < self.retries)',
           "launcher: vanished-worker retries off by one",
           LAUNCH_RETRY, ("tests/test_retries.py",)),
    Mutant("M09", "study/results.py",
           '"study_version": "string"', '"version": "string"',
           "Parquet: column study_version renamed (and left empty)",
           ("tests/test_results_schema.py",
            "tests/test_launch.py::test_trial_out_of_requeues_is_retried_and_completes"),
           ("tests/test_results_columns.py",)),
    # ---- fifteen more of the same kinds
    Mutant("M10", "study/losses.py",
           "(1.0 - F.cosine_similarity(s, t, dim=1)).mean()",
           "(1.0 + F.cosine_similarity(s, t, dim=1)).mean()",
           "cosine feature loss: sign flip", LOSSES, ("tests/test_oracles.py",)),
    Mutant("M11", "study/losses.py",
           "return alpha * temperature**2 * kl + (1.0 - alpha) * ce",
           "return alpha * temperature * kl + (1.0 - alpha) * ce",
           "logit distillation: T instead of T^2", LOSSES, ("tests/test_oracles.py",)),
    Mutant("M12", "study/losses.py",
           "{k: v[rows] for k, v in feats.items()}",
           "{k: v[:rows.stop - rows.start] for k, v in feats.items()}",
           "distill_objective: every expert compared with the first chunk's student rows",
           LOSSES, ("tests/test_oracles.py",)),
    Mutant("M13", "study/train.py",
           "torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)",
           "torch.optim.SGD(params, lr=lr, momentum=weight_decay, weight_decay=momentum)",
           "make_optimizer: SGD momentum and weight decay swapped",
           TRAIN, ("tests/test_oracles.py",)),
    Mutant("M14", "study/train.py",
           "(best_val is None or val > best_val",
           "(best_val is None or val >= best_val",
           "fit: best_val ties go to the later epoch under holdout",
           (*TRAIN,
            "tests/test_faithful.py::test_resumed_stage_scores_its_epochs_on_the_same_redraws",
            "tests/test_faithful.py::test_fixed_validation_draw_is_the_same_every_epoch"),
           ("tests/test_fit_oracles.py",)),
    Mutant("M15", "study/train.py",
           "MultiStepLR(optimizer, list(milestones), gamma)",
           "MultiStepLR(optimizer, [m + 1 for m in milestones], gamma)",
           "multistep schedule: milestones one epoch late", TRAIN, ("tests/test_fit_oracles.py",)),
    Mutant("M16", "study/fusion/task_arithmetic.py",
           "li * (e - base)", "li * (base - e)",
           "task arithmetic: task vectors negated", FUSION),
    Mutant("M17", "study/fusion/ties.py",
           "kthvalue(numel - n_keep + 1, dim=1)", "kthvalue(numel - n_keep, dim=1)",
           "TIES trim: keeps one entry too many", FUSION),
    Mutant("M18", "study/fusion/dare.py",
           "keep_scale = 1.0 / (1.0 - drop_rate)", "keep_scale = 1.0",
           "DARE: survivors not rescaled", FUSION),
    Mutant("M19", "study/fusion/merge.py",
           "    ref = experts[0]\n    generator", "    ref = experts[-1]\n    generator",
           "fusion copy_first: BN statistics of the last expert", FUSION),
    Mutant("M20", "study/evaluation.py",
           "torch.where(top.sum(1) > 1, summed.argmax(1), votes.argmax(1))",
           "torch.where(top.sum(1) > 2, summed.argmax(1), votes.argmax(1))",
           "ensemble vote: a two-way tie is not a tie",
           ("tests/test_faithful.py::"
            "test_vote_tie_takes_the_argmax_of_summed_logits_over_all_classes",
            "tests/test_faithful.py::test_vote_tie_rules_disagree_on_simulated_experts",
            "tests/test_pipeline.py::test_vote_breaks_ties_by_summed_logits")),
    Mutant("M21", "study/results.py",
           "return float(per.mean()) if len(per) else math.nan",
           'return float(part[part.degradation != "clean"].accuracy.mean()) if len(per) '
           "else math.nan",
           "objective avg: pooled over levels, not the mean of the degradations' means",
           ("tests/test_pipeline.py::test_table_means_over_levels",
            "tests/test_results_schema.py", "tests/test_wrong_numbers.py"),
           ("tests/test_objective_oracle.py",)),
    Mutant("M22", "study/augment.py",
           "    in_y = (ys >= cy - length // 2) & (ys < cy + length - length // 2)\n"
           "    in_x = (xs >= cx - length // 2) & (xs < cx + length - length // 2)\n"
           "    hole = in_y",
           "    in_y = (ys >= cy - length // 2) & (ys <= cy + length - length // 2)\n"
           "    in_x = (xs >= cx - length // 2) & (xs < cx + length - length // 2)\n"
           "    hole = in_y",
           "Cutout (CPU path): hole one row too tall",
           ("tests/test_pipeline.py::test_pad_crop_and_cutout_geometry",
            "tests/test_device_degrade.py::test_device_stream_equals_reference_on_the_same_draws",
            "tests/test_faithful.py::test_reference_shares_cutout_masks_between_jpeg_and_blur")),
    Mutant("M23", "study/stages.py",
           '        out["device"] = env.device_type\n', "",
           "stage keys: the device type dropped from the device path's keys",
           (*KEYS, "tests/test_pipeline.py::test_device_data_path_keys_and_auto_resolution"),
           ("tests/test_key_configs.py",)),
    Mutant("M24", "study/worker.py",
           'trial.set_user_attr("retried", attempt <= ld.sf.executor.retries)',
           'trial.set_user_attr("retried", attempt < ld.sf.executor.retries)',
           "worker: reported (timeout) failures retried once too few",
           ("tests/test_launch.py::test_trial_out_of_requeues_is_retried_and_completes",
            "tests/test_faults_kills.py"), ("tests/test_retries.py",)),
    # ---- ten more of the same kinds, written after the tests above (held out: no test was
    # written or changed for them), to measure the kill rate on mutants the tests did not see
    Mutant("M25", "study/stages.py",
           'out |= {"data.seed": d.seed, "data.synthetic_test": d.synthetic_test}',
           'out |= {"data.seed": d.seed}',
           "evaluation and copy keys: the synthetic test set's size dropped",
           KEYS, ("tests/test_key_configs.py",)),
    Mutant("M26", "study/losses.py",
           "return alpha * temperature**2 * kl + (1.0 - alpha) * ce",
           "return (1.0 - alpha) * temperature**2 * kl + alpha * ce",
           "logit distillation: alpha and 1 - alpha swapped", LOSSES, ("tests/test_oracles.py",)),
    Mutant("M27", "study/losses.py",
           "        logits, feats = model(b.degraded)\n        with torch.no_grad():",
           "        logits, feats = model(b.clean)\n        with torch.no_grad():",
           "expert_objective: the student sees the clean image", LOSSES,
           ("tests/test_oracles.py",)),
    Mutant("M28", "study/losses.py",
           "total = total + ce_weight * cross_entropy(logits, b.labels)",
           "total = total + feature_weight * cross_entropy(logits, b.labels)",
           "distill_objective: CE weighted by feature_weight", LOSSES, ("tests/test_oracles.py",)),
    Mutant("M29", "study/train.py",
           "return torch.optim.RAdam(params, lr=lr, weight_decay=weight_decay)",
           "return torch.optim.RAdam(params, lr=lr, weight_decay=weight_decay, "
           "decoupled_weight_decay=True)",
           "make_optimizer: RAdam with decoupled decay", TRAIN, ("tests/test_oracles.py",)),
    Mutant("M30", "study/train.py",
           "CosineAnnealingLR(optimizer, t_max or epochs)", "CosineAnnealingLR(optimizer, epochs)",
           "cosine schedule: t_max ignored", TRAIN, ("tests/test_fit_oracles.py",)),
    Mutant("M31", "study/space/kinds.py",
           'step=s["step"], log=s["log"]))', 'step=s["step"]))',
           "int space: `log: true` not passed to Optuna",
           ("tests/test_space.py",), ("tests/test_log_uniform.py",)),
    Mutant("M32", "study/results.py",
           '("level", "Int64")', '("level", "Float64")',
           "Parquet: column level retyped to float",
           ("tests/test_results_schema.py",
            "tests/test_launch.py::test_trial_out_of_requeues_is_retried_and_completes"),
           ("tests/test_results_columns.py",)),
    Mutant("M33", "study/device_degrade.py",
           "key=lambda i: (-abs(qs[i] - lv), qs[i])", "key=lambda i: (-abs(qs[i] - lv), -qs[i])",
           "device JPEG bank: a level between two banked qualities takes the lower",
           ("tests/test_device_degrade.py",), ("tests/test_level_draws.py",)),
    Mutant("M34", "study/launcher.py",
           '"attempt": int(t.user_attrs.get("attempt", 1)) + 1, "retry_of"',
           '"attempt": int(t.user_attrs.get("attempt", 1)) + 2, "retry_of"',
           "launcher: a retry counts two attempts", LAUNCH_RETRY, ("tests/test_retries.py",)),
]


# the mutants written after the tests, to measure them on bugs they were not written against
HELD_OUT = [m.id for m in MUTANTS if int(m.id[1:]) >= 25]


def selection(m: Mutant, phase: str) -> list[str]:
    return [*m.added, *m.existing] if phase == "after" else list(m.existing)


# ---------------------------------------------------------------- the copy
def make_copy() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="study-mutants-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("study", "tests"):
        shutil.copytree(ROOT / d, tmp / d, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    for d in ("search_spaces", "slurm", "data"):
        if (ROOT / d).exists():
            (tmp / d).symlink_to(ROOT / d)
    return tmp


def env_for(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"}


def check(tmp: Path, mutants: list[Mutant]) -> list[str]:
    """Problems: a pattern that does not occur exactly once, a mutant that does not compile."""
    problems = []
    for m in mutants:
        text = (tmp / m.file).read_text()
        n = text.count(m.old)
        if n != 1:
            problems.append(f"{m.id}: pattern occurs {n} times in {m.file}")
            continue
        try:
            compile(text.replace(m.old, m.new), m.file, "exec")
        except SyntaxError as e:
            problems.append(f"{m.id}: does not compile: {e}")
        for t in (*m.existing, *m.added):
            if not (tmp / t.split("::")[0]).exists():
                problems.append(f"{m.id}: no test file {t}")
    return problems


# ---------------------------------------------------------------- running pytest
@dataclass
class Run:
    rc: int | None     # None: timed out
    seconds: float
    failed: list[str]  # node ids reported FAILED or ERROR
    tail: str


def pytest(tmp: Path, tests: list[str], deselect: list[str], timeout: float,
           first_failure: bool) -> Run:
    args = [sys.executable, *PYTEST, *(["-x"] if first_failure else []), *tests]
    for node in deselect:
        args += ["--deselect", node]
    t0 = time.monotonic()
    try:
        p = subprocess.run(args, cwd=tmp, env=env_for(tmp), capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return Run(None, time.monotonic() - t0, [], out[-2000:])
    out = p.stdout + p.stderr
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.M)
    return Run(p.returncode, time.monotonic() - t0, failed, out[-2000:])


def baseline(tmp: Path, tests: list[str], timeout: float) -> Run:
    """The selection unmutated: what fails here fails without any mutant."""
    return pytest(tmp, tests, [], timeout, first_failure=False)


def verdict(run: Run) -> str:
    if run.rc is None:
        return "killed (timeout)"
    if run.rc == 0:
        return "survived"
    if run.rc == 5:
        return "no tests ran"
    return "killed"


def run_phase(tmp: Path, phase: str, mutants: list[Mutant], timeout: float,
              earlier: dict[str, dict[str, object]], log) -> dict[str, dict[str, object]]:
    union = list(dict.fromkeys(t for m in mutants for t in selection(m, phase)))
    log(f"[{phase}] baseline: {len(union)} test selections, unmutated")
    base = baseline(tmp, union, timeout * 3)
    if base.rc not in (0, 1):
        raise SystemExit(f"[{phase}] the unmutated baseline did not run (rc {base.rc}):\n"
                         f"{base.tail}")
    broken = sorted(set(base.failed))
    log(f"[{phase}] baseline {base.seconds:.0f}s, failing without a mutant (deselected): "
        f"{broken or 'none'}")
    out: dict[str, dict[str, object]] = {"_baseline": {"seconds": round(base.seconds, 1),
                                                       "deselected": broken}}
    for m in mutants:
        if phase == "after" and not m.added and m.id in earlier:
            out[m.id] = {**earlier[m.id], "reused": True}
            log(f"[{phase}] {m.id} {out[m.id]['verdict']} (same selection as before)")
            continue
        path = tmp / m.file
        original = path.read_text()
        assert original.count(m.old) == 1, f"{m.id}: pattern not found exactly once"
        path.write_text(original.replace(m.old, m.new))
        try:
            run = pytest(tmp, selection(m, phase), broken, timeout, first_failure=True)
        finally:
            path.write_text(original)
        out[m.id] = {"verdict": verdict(run), "seconds": round(run.seconds, 1),
                     "killed_by": run.failed[0] if run.failed else "",
                     "tests": selection(m, phase)}
        log(f"[{phase}] {m.id} {out[m.id]['verdict']:<17} {run.seconds:6.1f}s "
            f"{out[m.id]['killed_by']}")
        if out[m.id]["verdict"] == "no tests ran":
            log(run.tail)
    return out


def table(mutants: list[Mutant], res: dict[str, dict[str, dict[str, object]]]) -> str:
    phases = [p for p in ("before", "after") if p in res]
    lines = ["| id | file | mutant | " + " | ".join(phases) + " | killed by (last phase) |",
             "|---|---|---|" + "---|" * len(phases) + "---|"]
    for m in mutants:
        cells = [str(res[p].get(m.id, {}).get("verdict", "-")) for p in phases]
        by = str(res[phases[-1]].get(m.id, {}).get("killed_by", ""))
        lines.append(f"| {m.id} | {m.file.removeprefix('study/')} | {m.what} | "
                     + " | ".join(cells) + f" | {by.removeprefix('tests/')} |")
    groups = [("", mutants)]
    held = [m for m in mutants if m.id in HELD_OUT]
    if held and len(held) < len(mutants):
        groups = [("", mutants), (" (M01-M24)", [m for m in mutants if m.id not in HELD_OUT]),
                  (" (held out, M25-)", held)]
    for p in phases:
        for label, group in groups:
            killed = sum(str(res[p][m.id]["verdict"]).startswith("killed") for m in group
                         if m.id in res[p])
            n = sum(m.id in res[p] for m in group)
            lines.append(f"{'' if label else chr(10)}{p}{label}: {killed}/{n} killed "
                         f"({100 * killed / max(n, 1):.0f}%)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", choices=["before", "after", "both"], default="both")
    ap.add_argument("--only", help="comma-separated mutant ids")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant run")
    ap.add_argument("--check", action="store_true", help="check the patterns and stop")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--reuse", type=Path,
                    help="a --json file of an earlier run: its phases are not run again")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.id in args.only.split(",")]

    def log(msg: str) -> None:
        print(msg, flush=True)

    tmp = make_copy()
    try:
        problems = check(tmp, chosen)
        if problems:
            for p in problems:
                log(p)
            return 1
        if args.check:
            log(f"{len(chosen)} mutants: every pattern occurs once and compiles")
            return 0
        where = subprocess.run([sys.executable, "-c", "import study; print(study.__file__)"],
                               cwd=tmp, env=env_for(tmp), capture_output=True, text=True)
        assert where.stdout.strip().startswith(str(tmp)), where.stdout + where.stderr
        t0 = time.monotonic()
        res: dict[str, dict[str, dict[str, object]]] = (
            json.loads(args.reuse.read_text())["results"] if args.reuse else {})
        for phase in (["before", "after"] if args.phase == "both" else [args.phase]):
            if phase in res:
                log(f"[{phase}] from {args.reuse}")
                continue
            res[phase] = run_phase(tmp, phase, chosen, args.timeout, res.get("before", {}),
                                   log)
        log("\n" + table(chosen, res))
        log(f"\ntotal {time.monotonic() - t0:.0f}s")
        if args.json:
            args.json.write_text(json.dumps({"mutants": [asdict(m) for m in chosen],
                                             "results": res}, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
