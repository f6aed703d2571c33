"""A property-based fuzzer over study files and command lines: every outcome is exit 0 or 2,
never a traceback, a hang or memory beyond a bound, and a refused command writes nothing.

Each case runs `study.cli.main` in a forked child of this process (the package is imported
once: a fresh interpreter costs ~4 s of CPU for torch, a fork ~10 ms), with a per-case alarm
(the hang bound) and an address-space limit (the memory bound: a read of /dev/zero or a YAML
bomb fails inside the limit instead of swapping the machine). Hypothesis draws the cases with
a fixed seed (derandomize), so CI runs the same budget every time; the figures land in
test-artifacts/fuzz_cli.json.

Commands that would train (`run`, a `launch` without --dry-run on a valid file) are out of
scope here: the fuzzer asks every other command, and `launch --dry-run`, which runs every
check a launch runs.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from study import cli

ROOT = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
ARTIFACT = ROOT / "test-artifacts" / "fuzz_cli.json"
CASES = 120            # ~0.3 s each on 2 cores: well under a minute of CI
CASE_TIMEOUT_S = 30    # a dry run of the largest shipped space takes ~1 s; 30 s means a hang
MEMORY_BOUND = 2 << 30   # address space a case may add to this process's (torch maps ~3 GB)
FIGURES: dict[str, Any] = {"cases": 0, "exit": {}, "max_case_s": 0.0, "max_rss_mb": 0.0,
                           "tracebacks": 0, "hangs": 0, "over_memory": 0, "written": 0}

# --set keys a user touches, and values YAML and argparse turn into every type
KEYS = ["study.n_trials", "study.seed", "study.name", "study.objectives", "study.sampler",
        "study.storage", "study.replicates", "study.stop_after_failures", "executor.parallel",
        "executor.backend", "executor.retries", "executor.slurm.trials_per_job",
        "executor.slurm.time_min", "executor.gpus", "pipeline.device", "pipeline.seed",
        "data.seed", "data.val_size", "data.dataset", "data.root", "distill.epochs",
        "distill.temperature", "distill.alpha", "distill.lr", "fusion.method",
        "fusion.lambdas", "degradations", "methods", "eval.seed", "base.epochs",
        "expert.epochs", "eval.test_level_step", "space.distill.lr", "space.fusion.method",
        "space.study.seed", "space.executor.parallel", "nope", "distill.nope"]
VALUES = st.sampled_from([
    "on", "yes", "true", "null", "~", "-1", "0", "1", "4294967296", "-4294967297", "1e309",
    "nan", "inf", "[]", "{}", "[jpeg]", "[jpeg, jpeg]", "cuda", "cpu", "cache", "..", "/",
    "/dev/zero", "sqlite:///:memory:", "sqlite://", "postgresql://u:p@ss@127.0.0.1:1/db",
    "{type: float, low: 0, high: 1, step: 5}", "{type: categorical, choices: [1, true]}",
    "{type: int, low: 0, high: 1000000000}", "'x' * 3", "\u00e9t\u00e9", "a\nb", "0x10",
    "1_000", "[1, [2, [3]]]", "&a [*a]", "!!python/object:os.system ls"]) | st.text(
    st.characters(blacklist_categories=("Cs",)), max_size=20)
PORTS = st.sampled_from(["0", "-1", "70000", "65536", "80", "x", "1e3", "8080"])
HOSTS = st.sampled_from(["127.0.0.1", "no such host!", "", "::1", "999.1.1.1", "-h"])
NUMBERS = st.sampled_from(["0", "-3", "1", "2", "1000000000000", "x", "1.5", "nan"])


def _space_source(draw: st.DrawFn, d: Path) -> str:
    """The --space argument: a file of some kind (regular or not), or a mutated smoke file."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "dev_zero", "fifo", "dir",
                                 "missing", "binary", "empty", "big", "symlink_zero",
                                 "shipped", "not_yaml", "yaml_list"]))
    target = d / "space.yaml"
    if kind == "mutated":
        tree = json.loads(json.dumps(SMOKE))
        for _ in range(draw(st.integers(0, 3))):
            section = draw(st.sampled_from(["study", "executor", "pipeline", "space"]))
            key = draw(st.sampled_from(KEYS)).split(".")[-1]
            value = draw(VALUES)
            if draw(st.booleans()):   # also as what YAML makes of it (a list, a bool...)
                try:
                    value = yaml.safe_load(value.replace("!!", ""))
                except yaml.YAMLError:
                    pass
            if draw(st.booleans()) and isinstance(tree.get(section), dict):
                tree[section][key] = value
            else:
                tree[section] = value
        target.write_text(yaml.safe_dump(tree, allow_unicode=True))
    elif kind == "dev_zero":
        return "/dev/zero"
    elif kind == "fifo":
        os.mkfifo(target)   # nobody ever writes: a plain open() blocks forever
    elif kind == "dir":
        target.mkdir()
    elif kind == "missing":
        return str(d / "nowhere" / "space.yaml")
    elif kind == "binary":
        target.write_bytes(bytes(range(256)) * 8)
    elif kind == "empty":
        target.write_text("")
    elif kind == "big":
        target.write_text("# " + "x" * 1_200_000 + "\n")
    elif kind == "symlink_zero":
        target.symlink_to("/dev/zero")
    elif kind == "shipped":
        return str(ROOT / "search_spaces" / draw(st.sampled_from(
            sorted(p.name for p in (ROOT / "search_spaces").glob("*.yaml")))))
    elif kind == "not_yaml":
        target.write_text("study: [unclosed\n  - : :\n")
    else:
        target.write_text("- 1\n- 2\n")
    return str(target)


@st.composite
def command_lines(draw: st.DrawFn, d: Path) -> list[str]:
    command = draw(st.sampled_from(["launch", "launch", "launch", "status", "cancel", "report",
                                    "dashboard"]))
    argv = [command, "--space", _space_source(draw, d)]
    if command == "launch":
        argv.append("--dry-run")   # every check of a launch; never trains (see the docstring)
    results = draw(st.sampled_from(["res", "res", "file", "/proc/nope", "deep"]))
    if results == "file":
        (d / "afile").write_text("x")
        argv += ["--results", str(d / "afile")]
    elif results == "deep":
        argv += ["--results", str(d / "a" / "b" / "c")]
    elif results == "res":
        argv += ["--results", str(d / "res")]
    else:
        argv += ["--results", results]
    for _ in range(draw(st.integers(0, 3))):
        argv += ["--set", f"{draw(st.sampled_from(KEYS))}={draw(VALUES)}"]
    if command == "launch" and draw(st.booleans()):
        argv += [draw(st.sampled_from(["--parallel", "--n-trials"])), draw(NUMBERS)]
    if command == "launch" and draw(st.booleans()):
        argv += ["--executor", draw(st.sampled_from(["debug", "local", "slurm", "k8s"]))]
    if command == "dashboard":
        argv += ["--port", draw(PORTS), "--host", draw(HOSTS)]
    if command == "status" and draw(st.booleans()):
        argv += ["--n-trials", draw(NUMBERS)]
    return argv


def _run_forked(argv: list[str], cwd: Path) -> dict[str, Any]:
    """`study ARGV` in a forked child: its exit code, output, wall time and peak RSS."""
    out, err = cwd / ".stdout", cwd / ".stderr"
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        vm_now = int(f.read().split()[0]) * resource.getpagesize()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:   # the child: never returns into pytest
        code = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(CASE_TIMEOUT_S)
            resource.setrlimit(resource.RLIMIT_AS, (vm_now + MEMORY_BOUND, hard))
            os.chdir(cwd)
            sys.stdout = open(out, "w")   # noqa: SIM115 - the child exits right after
            sys.stderr = open(err, "w")   # noqa: SIM115
            try:
                code = cli.main(argv)
            except SystemExit as e:      # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 2
            except BaseException:        # noqa: BLE001 - exactly what the fuzzer looks for
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - t0
    signalled = os.WIFSIGNALED(status)
    return {"rc": os.WEXITSTATUS(status) if not signalled else -os.WTERMSIG(status),
            "hang": signalled and os.WTERMSIG(status) == signal.SIGALRM,
            "err": err.read_text(errors="replace") if err.exists() else "",
            "wall_s": wall, "rss_mb": usage.ru_maxrss / 1024}


def _listing(d: Path) -> set[str]:
    """Every path under d (rglob lists FIFOs and dangling links without opening them)."""
    return {str(p.relative_to(d)) for p in d.rglob("*")} - {".stdout", ".stderr"}


@settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzzed_command_lines_exit_0_or_2(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        argv = data.draw(command_lines(d), label="argv")
        before = _listing(d)
        r = _run_forked(argv, d)
        FIGURES["cases"] += 1
        FIGURES["exit"][str(r["rc"])] = FIGURES["exit"].get(str(r["rc"]), 0) + 1
        FIGURES["max_case_s"] = round(max(FIGURES["max_case_s"], r["wall_s"]), 2)
        FIGURES["max_rss_mb"] = round(max(FIGURES["max_rss_mb"], r["rss_mb"]), 1)
        FIGURES["tracebacks"] += "Traceback" in r["err"]
        FIGURES["hangs"] += r["hang"]
        FIGURES["over_memory"] += "MemoryError" in r["err"]
        left = sorted(_listing(d) - before)
        FIGURES["written"] += bool(left)
        assert not r["hang"], f"hang (> {CASE_TIMEOUT_S} s): study {argv}"
        assert r["rc"] in (0, 2) and "Traceback" not in r["err"], \
            f"exit {r['rc']}: study {argv}\n{r['err'][-2000:]}"
        assert not left, f"study {argv} (exit {r['rc']}) left {left}"
        if r["rc"] == 2:
            assert r["err"].startswith("study: error:") or "usage:" in r["err"], r["err"][-800:]


@pytest.fixture(scope="module", autouse=True)
def _record_figures() -> Any:
    yield
    if FIGURES["cases"]:
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        ARTIFACT.write_text(json.dumps(FIGURES, indent=1, sort_keys=True))
        print(f"fuzz: {FIGURES}")
