"""The layout rules a newcomer relies on, checked on the source: no import cycle in study/
(imports inside functions count), nothing imports the CLI, private attributes of other
libraries only in study/adapter.py (pinned here against the installed versions), and no list
of stage names outside the stage registry."""

from __future__ import annotations

import ast
import inspect
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
