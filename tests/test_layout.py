"""The layout rules a newcomer relies on, checked on the source: no import cycle in study/
(imports inside functions count), nothing imports the CLI, private attributes of other
libraries only in study/adapter.py (pinned here against the installed versions), no list of
stage names outside the stage registry; and parts that never reach past each other: building
blocks below the loader and the harness, the harness driving stages rather than tensors, no
torch for results, status and the report, no SLURM outside its executor, one Driver, one job
shape, one atomic write path, shared-stage planning from the registry."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import submitit

from study import adapter, stages

PACKAGE = Path(__file__).resolve().parents[1] / "study"
MODULES = {
    ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
    for p in PACKAGE.rglob("*.py")
}


def _imports(path: Path) -> set[str]:
    """study modules that `path` imports anywhere (module level or inside a function)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("study")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("study"):
            for a in node.names:   # `from study import x` imports module study.x if there is one
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
    return {m for m in out if m in MODULES}


def test_no_import_cycle_in_the_package() -> None:
    graph = {m: _imports(p) - {m} for m, p in MODULES.items()}
    # a package imports its own submodules through __init__; that is not a cycle of parts
    for m in graph:
        graph[m] = {d for d in graph[m] if not m.startswith(d + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            assert state.get(d) != 1, "import cycle: " + " -> ".join([*path, d])
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert len(graph) > 20 and state and all(v == 2 for v in state.values())


def test_nothing_imports_the_cli() -> None:
    importers = [m for m, p in MODULES.items() if "study.cli" in _imports(p) and m != "study.cli"]
    assert importers == []


def test_private_attributes_of_other_libraries_only_in_the_adapter() -> None:
    """`x._name` where x is not self/cls/this package's own module: another library's private
    attribute. Only adapter.py may do that."""
    own = {m.rsplit(".", 1)[-1] for m in MODULES}
    found = []
    for m, p in MODULES.items():
        if m == "study.adapter":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                base = node.value
                name = base.id if isinstance(base, ast.Name) else None
                if name in ("self", "cls") or name in own:
                    continue
                found.append(f"{m}:{node.lineno} .{node.attr}")
    assert found == []


def test_adapter_pins_submitit_internals() -> None:
    """The one private path adapter.sbatch_text takes exists in the installed submitit, with
    the signature it is called with; a new submitit release gets checked before it is used."""
    assert submitit.__version__.startswith(adapter.SUBMITIT_TESTED), submitit.__version__
    make = submitit.slurm.slurm.SlurmExecutor._make_submission_file_text
    assert list(inspect.signature(make).parameters) == ["self", "command", "uid"]
    source = inspect.getsource(submitit.auto.auto.AutoExecutor.__init__)
    assert "self._executor" in source


def test_no_stage_name_list_outside_the_registry() -> None:
    """A list or tuple literal naming two or more stages, one of them base or an expert, is a
    copy of the registry (the drift the registry replaced)."""
    names = set(stages.instance_names())
    copies = []
    for m, p in MODULES.items():
        if m == "study.stages":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
                items = {e.value for e in node.elts
                         if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                hit = items & names
                if len(hit) >= 2 and any(h == "base" or h.startswith("expert_") for h in hit):
                    copies.append(f"{m}:{node.lineno} {sorted(hit)}")
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys
                        if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                if len(keys & names) >= 2 and "base" in keys:
                    copies.append(f"{m}:{node.lineno} {sorted(keys & names)}")
    assert copies == []


# ---------------------------------------------------------------- parts never reach past each other
BUILDING_BLOCKS = ("study.data", "study.degradations", "study.device_degrade", "study.augment",
                   "study.models", "study.losses", "study.fusion", "study.train",
                   "study.evaluation", "study.cache", "study.registry")
# what a building block may never import: the loader and its schema, the stages, the harness,
# the results, the commands
ABOVE_BUILDING_BLOCKS = ("study.config", "study.schema", "study.studyfile", "study.space",
                         "study.stages", "study.pipeline", "study.launcher", "study.worker",
                         "study.executors", "study.storage", "study.results", "study.report",
                         "study.status", "study.jobs", "study.failures", "study.bench",
                         "study.compare",
                         "study.adapter", "study.cli", "study.commands")
HARNESS = ("study.launcher", "study.worker", "study.executors", "study.storage", "study.status",
           "study.results", "study.jobs", "study.failures", "study.report", "study.compare")
TENSOR_CODE = ("study.data", "study.degradations", "study.device_degrade", "study.augment",
               "study.models", "study.losses", "study.fusion.merge", "study.train",
               "study.evaluation")


def _under(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)


def test_building_blocks_never_import_the_loader_the_stages_or_the_harness() -> None:
    found = {m: sorted(d for d in _imports(p) if _under(d, ABOVE_BUILDING_BLOCKS))
             for m, p in MODULES.items() if _under(m, BUILDING_BLOCKS)}
    assert len(found) >= 10 and {m: d for m, d in found.items() if d} == {}


def test_the_harness_drives_stages_not_tensors() -> None:
    """The launcher, worker, executors, storage, status, results and report reach training and
    evaluation only through the pipeline and the stage registry."""
    found = {m: sorted(d for d in _imports(p) if _under(d, TENSOR_CODE))
             for m, p in MODULES.items() if _under(m, HARNESS)}
    assert len(found) >= 10 and {m: d for m, d in found.items() if d} == {}


def test_results_status_and_report_never_import_torch() -> None:
    """They run on a login node, where nothing trains: torch's import (~1.3 s, ~300 MB) is for
    workers (the executors and the cache import it only where a trial or a network runs). A
    fresh interpreter: this one imported torch long ago."""
    code = ("import sys, study.results, study.report, study.stages, study.fusion, "
            "study.studyfile, study.status, study.confirm, study.conclusions, study.compare, "
            "study.executors, study.cache; print(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'torch', 'torchvision'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_help_imports_nothing_heavy() -> None:
    """`study --help` and `study <cmd> --help` parse with argparse and this package's settings
    only: under 0.5 s here, where the imports below took 3-4 s before the CLI dispatched."""
    code = ("import sys\nfrom study import cli\nfor argv in (['--help'], ['launch', '--help'], "
            "['report', '--help'], ['bench', '--help']):\n    try:\n        "
            "cli.build_parser().parse_args(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'plotly', "
            "'optuna_dashboard', 'scipy', 'optuna', 'pandas', 'numpy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_only_the_slurm_executor_names_slurm() -> None:
    """Every SLURM fact (job states, handles, requeues, KillWait, the allotted CPUs) lives in
    executors/slurm.py (and the pinned internals in adapter.py): the launcher, the worker,
    status and the commands ask the executor."""
    words = ("slurm", "submitit", "sacct", "scancel", "sbatch", "killwait")
    found = []
    for m in ("study.launcher", "study.worker", "study.status", "study.jobs", "study.failures",
              "study.storage", "study.results", "study.cli", "study.executors.base",
              *[x for x in MODULES if x.startswith("study.commands")]):
        tree = ast.parse(MODULES[m].read_text())   # names, not comments or messages
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                  for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        found += [f"{m}: {x}" for x in sorted(names) if any(w in x.lower() for w in words)]
    assert found == []
    importers = []
    for m, p in MODULES.items():
        for n in ast.walk(ast.parse(p.read_text())):
            mods = ([a.name for a in n.names] if isinstance(n, ast.Import)
                    else [n.module or ""] if isinstance(n, ast.ImportFrom) else [])
            if any(x.split(".")[0] == "submitit" for x in mods):
                importers.append(m)
    assert sorted(set(importers)) == ["study.adapter", "study.executors.slurm"]


def test_one_driver_and_one_job_shape() -> None:
    classes: dict[str, list[str]] = {}
    for m, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef) and node.name in ("Driver", "Job", "LaunchRequest"):
                classes.setdefault(node.name, []).append(m)
    assert classes == {"Driver": ["study.executors.base"], "Job": ["study.jobs"],
                       "LaunchRequest": ["study.jobs"]}


def test_shared_stage_planning_comes_from_the_stage_registry() -> None:
    """The launcher asks stages.shared_instances which networks to build ahead, and reads no
    parameter's YAML options (`.spec`) to find out."""
    tree = ast.parse(MODULES["study.launcher"].read_text())
    calls = {f"{n.func.value.id}.{n.func.attr}" for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name)}
    assert "stages.shared_instances" in calls
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "spec"]


def test_one_atomic_write_path() -> None:
    """Durable files are written through atomic.py only (temp file, fsync, rename): nobody
    else renames a file into place."""
    found = []
    for m, p in MODULES.items():
        if m == "study.atomic":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("replace", "rename")
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "os"):
                found.append(f"{m}:{node.lineno} os.{node.func.attr}")
    assert found == []
