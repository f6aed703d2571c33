"""The one loader of study files, used by the CLI, the launcher, the worker and the report.

    YAML (bounded, safe) -> preset merged under `pipeline` -> `--set key=value` overrides ->
    validated StudyFile (study/config.py) + SearchSpace (study/space/) = LoadedStudy

Every error names the file and the dotted key, all errors of a file are reported together, and
nothing is written. A worker gets the resolved tree in its job file and calls `from_tree`, so it
runs exactly what the launcher validated even if the file is edited meanwhile.
"""

from __future__ import annotations

import copy
import difflib
import errno
import importlib.resources
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from study import registry, schema
from study import space as search_space
from study.config import StudyFile, set_path
from study.errors import ConfigError

__all__ = ["LoadedStudy", "check_trials", "deep_merge", "from_tree", "load", "load_preset",
           "parse_override", "probe_counts", "read_bounded", "read_yaml", "resolve_space_path",
           "resolve_tree", "safe_yaml", "shipped_files", "slurm_presets", "validate"]

PRESET_DIR = Path(__file__).parent / "presets"
# A preset's block of values per data.dataset (the paper's weight decay and Cutout differ by
# dataset); the loader merges the chosen dataset's under the study file, never validates it as
# a pipeline key.
PER_DATASET = "per_dataset"
# The study files and SLURM site presets that ship with `study`: the checkout's top-level
# search_spaces/ and slurm/presets/, installed as these packages (pyproject.toml's package-dir),
# so an editable install reads the checkout's files and a wheel its own copies, from any working
# directory. Each name is also looked up in the same folder under the working directory.
SEARCH_SPACE_PACKAGE, SEARCH_SPACE_FOLDER = "study.search_spaces", "search_spaces"
SLURM_PRESET_PACKAGE, SLURM_PRESET_FOLDER = "study.slurm_presets", "slurm/presets"
# A YAML bomb (billion laughs) expands aliases into gigabytes; no real study file comes near this.
MAX_FILE_BYTES = 1_000_000
MAX_YAML_NODES = 200_000
# A real study file nests about 6 deep; PyYAML's composer recurses per level and hits Python's
# recursion limit a few hundred levels down.
MAX_YAML_DEPTH = 50
# check_trials validates at most this many corner samples plus this many seeded random draws,
# each as a whole trial (apply + validate: about 0.25 ms on a 2-core box). It runs at every
# load but those with check_space=False (a job file's tree, which the launcher checked; status
# and report, which start no trial). Measured on that box: fusion.yaml, the largest shipped
# space (11 parameters, 33 corners, 333 distinct samples), 86 ms; smoke.yaml 69 ms;
# ablation_fusion_grid 9 ms (36 distinct points); a 500-item subset plus 4 other parameters,
# 0.34 s. Where corners cannot cover a space, the draws find a combination that 1% of its
# trials break with probability 1 - 0.99**300 = 95%.
TRIAL_DRAWS = 300
TRIAL_CORNER_LIMIT = 300
TRIAL_DRAW_SEED = 0
# A sample also costs about 0.8 us per raw value it draws (a subset flag, a simplex coordinate:
# draw, apply, validate, dedup), so 600 samples of a 20,000-item subset took 10 s. Past
# TRIAL_RAW_VALUES raw values in all, both counts shrink in proportion (probe_counts); a space
# up to 1,666 raw values wide keeps all 600. check_trials of a subset plus one float, on that
# box: 4,000 items 4.9 s before (12.9 s on a busy box), 0.6 s now; 20,000 items (a 250 KB file)
# ended in a MemoryError after 46 s in 4 GB (its corners were built up front: 4 x 20,000**2
# flags), 0.9 s now (48 samples).
TRIAL_RAW_VALUES = 1_000_000


@dataclass(frozen=True)
class LoadedStudy:
    """A study file, loaded: the validated tree, the raw resolved tree (what job files carry
    and the fingerprint hashes), the search space, and where it came from."""

    sf: StudyFile
    tree: dict[str, Any]
    space: search_space.SearchSpace
    source: str

    def trial_config(self, values: Mapping[str, Any]) -> StudyFile:
        """The study file with a trial's sampled values set at their paths, validated."""
        return validate(self.space.apply(self.tree, values), self.source)


def load(path: str | Path, overrides: Iterable[str] = (), *,
         check_space: bool = True) -> LoadedStudy:
    """The study file at `path` (or the shipped one of that name, see resolve_space_path),
    with `overrides` (`--set key=value`) applied, validated. check_space=False skips the
    whole-space check (check_trials) for a command that runs no new trial, such as `status`
    and `report`: each parameter is still checked at its own path."""
    p = resolve_space_path(path).resolve()   # workers may run in another cwd
    return from_tree(resolve_tree(read_yaml(p), str(p), overrides), str(p),
                     check_space=check_space)


def from_tree(tree: dict[str, Any], source: str, *, check_space: bool = True) -> LoadedStudy:
    """check_space=False: the tree of a job file, whose whole space the launcher already
    checked (~70-90 ms a load for the shipped spaces, once per worker otherwise)."""
    sf = validate(tree, source)
    space = search_space.parse_space(tree.get("space") or {}, tree, source)
    if check_space:
        check_trials(tree, space, source)
    return LoadedStudy(sf, tree, space, source)


def check_trials(tree: dict[str, Any], space: search_space.SearchSpace, source: str) -> None:
    """Refuse a space that can produce an invalid trial, before anything is written.

    parse_space checks each parameter at its own path; the rules across settings (an objective's
    method must be run, 'weighted' fusion needs a weight per fused expert, a dataset on disk
    needs a root...) only see whole trials. So each of the space's probe samples (every
    categorical choice, range end and subset item left out or alone, then seeded random draws)
    is validated as the complete trial it would run. The first invalid one is reduced to the
    values that cause its error and reported."""
    # a trial's own `space` is never read (every value is set by then), and copying it for
    # each sample would cost more than the rest
    bare = {k: v for k, v in tree.items() if k != "space"}
    corners, draws = probe_counts(space)
    for values in space.probe_samples(draws, TRIAL_DRAW_SEED, corners):
        try:
            StudyFile.model_validate(space.apply(bare, values))
        except ValidationError as e:
            raise ConfigError(_invalid_trial(bare, space, source, values, e)) from None


def probe_counts(space: search_space.SearchSpace) -> tuple[int, int]:
    """(corner limit, random draws) of check_trials for `space`: TRIAL_CORNER_LIMIT and
    TRIAL_DRAWS, cut in proportion so that they draw at most TRIAL_RAW_VALUES raw values, but
    never below the two first corners (every item of a subset, none) and two draws."""
    width = max(space.raw_width(), 1)
    share = min(1.0, TRIAL_RAW_VALUES / (width * (TRIAL_CORNER_LIMIT + TRIAL_DRAWS)))
    return max(2, int(TRIAL_CORNER_LIMIT * share)), max(2, int(TRIAL_DRAWS * share))


def _invalid_trial(tree: dict[str, Any], space: search_space.SearchSpace, source: str,
                   values: dict[str, Any], e: ValidationError) -> str:
    """The message for a sample whose trial is invalid: values the error persists without
    (back at the file's own setting) are left out, dependents before what they depend on, and
    a value another shown value's `when` or `over` reads is kept."""
    sig = _signature(e)
    kept = dict(values)
    for p in reversed(space.params):
        needed = any(p.name in (*q.when, *q.inputs) for q in space.params
                     if q.name in kept and q.name != p.name)
        if p.name not in kept or needed:
            continue
        fewer = {k: v for k, v in kept.items() if k != p.name}
        try:
            StudyFile.model_validate(space.apply(tree, fewer))
        except ValidationError as e2:
            if _signature(e2) == sig:
                kept, e = fewer, e2
    combo = ", ".join(f"{k}={_show(v)}" for k, v in kept.items()) or "the fixed pipeline"
    keys = ", ".join(f"'space.{k}'" for k in kept)
    errors = "; ".join(line.strip().removeprefix("- ")
                       for line in format_errors(e, source).splitlines()[1:])
    return (f"{source}: the space can produce an invalid trial: {combo} gives {errors}. Every "
            f"trial must be valid: narrow the space ({keys}) or add a `when`, so that no trial "
            "takes these values")


def _signature(e: ValidationError) -> tuple[Any, ...]:
    """The first error of `e` without the values in its message: the same rule, broken."""
    err = e.errors()[0]
    msg = re.sub(r"\[[^\]]*\]|\{[^}]*\}|'[^']*'|-?\d[\d.eE+-]*", "_", err["msg"])
    return tuple(err["loc"]), err["type"], msg


def _show(v: Any) -> str:
    """A sampled value for a message: floats to 4 significant digits (simplex weights)."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k!r}: {_show(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return repr(v)


def resolve_space_path(path: str | Path) -> Path:
    """A path that exists, as given; else a shipped study file of that name (`--space smoke`
    and `--space smoke.yaml` find search_spaces/smoke.yaml from any directory), else one in the
    working directory's search_spaces/."""
    p = Path(path)
    if p.exists():
        return p
    names = [p.name] if p.suffix == ".yaml" else [p.name, f"{p.name}.yaml"]
    shipped = shipped_files(SEARCH_SPACE_PACKAGE)
    local = Path.cwd() / SEARCH_SPACE_FOLDER
    for name in names:
        for candidate in (shipped.get(name), local / name):
            if candidate is not None and candidate.exists():
                return candidate
    raise ConfigError(
        f"{path}: no such study file (also looked among the shipped ones and in {local}); "
        f"shipped files: {sorted(shipped) or _NOT_INSTALLED}"
    )


def shipped_files(package: str) -> dict[str, Path]:
    """File name -> path of each YAML file of a package of shipped files ({} where this
    install lacks it). pip installs wheels unpacked, so each is a file on disk."""
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        return {}
    return {f.name: Path(str(f)) for f in root.iterdir() if f.name.endswith(".yaml")}


# The shipped packages are missing from an editable install made before they existed.
_NOT_INSTALLED = "none installed (an editable install older than them: pip install -e . again)"


def read_yaml(path: Path) -> Any:
    data = read_bounded(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    try:
        return safe_yaml(text, str(path))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def read_bounded(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES. Anything else is refused before
    it is read: /dev/zero would be read forever, a FIFO would block until a writer comes, a
    directory cannot be read."""
    chunks: list[bytes] = []
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{path}: cannot read the file ({os.strerror(errno.EISDIR)}); "
                              "a study file is a regular file")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: cannot read the file (not a regular file but "
                              f"{_file_kind(st.st_mode)}); a study file is a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: file is {st.st_size} bytes; a study file is at most "
                              f"{MAX_FILE_BYTES} bytes")
        # O_NONBLOCK: if the path became a FIFO since the stat, open does not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"{path}: cannot read the file (it changed into something "
                                  "else than a regular file while being opened)")
            left = MAX_FILE_BYTES + 1   # one byte more tells a file that grew since the stat
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the file ({e.strerror})") from None
    data = b"".join(chunks)
    if len(data) > MAX_FILE_BYTES:   # it grew after the stat
        raise ConfigError(f"{path}: file is over {MAX_FILE_BYTES} bytes; a study file is at "
                          f"most {MAX_FILE_BYTES} bytes")
    return data


def _file_kind(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "a special file"


def safe_yaml(text: str, where: str) -> Any:
    """yaml.safe_load after checking the node graph: size, depth, repeated keys."""
    loader = yaml.SafeLoader(text)   # parsed once: composed, checked, then constructed
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(f"{where}: the YAML is nested too deep (over {MAX_YAML_DEPTH} "
                              "levels); refused") from None
        if node is None:
            return None
        _check_size(node, where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_size(node: Any, where: str) -> None:
    """Count nodes with aliases expanded, so a YAML bomb is refused before it is built; refuse
    deep nesting and a key written twice in one mapping (PyYAML keeps the last one silently:
    a second `space:` would replace the first)."""
    count = 0
    stack: list[tuple[Any, tuple[str, ...], int]] = [(node, (), 0)] if node is not None else []
    while stack:
        n, prefix, depth = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            raise ConfigError(f"{where}: the YAML expands to over {MAX_YAML_NODES} nodes "
                              "(aliases nested too deep?); refused")
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{where}: the YAML is nested over {MAX_YAML_DEPTH} levels deep; "
                              "refused")
        if isinstance(n, yaml.SequenceNode):
            stack.extend((v, prefix, depth + 1) for v in n.value)
        elif isinstance(n, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode) and k.value != "<<":
                    line = k.start_mark.line + 1
                    if k.value in seen:
                        key = ".".join((*prefix, k.value))
                        raise ConfigError(
                            f"{where}: key '{key}' appears twice in one mapping (line "
                            f"{seen[k.value]} and line {line}); YAML would silently keep the "
                            "second: delete or merge one")
                    seen[k.value] = line
                    sub = (*prefix, k.value)
                else:
                    sub = prefix
                stack.extend(((k, prefix, depth + 1), (v, sub, depth + 1)))


def load_preset(name: str, _seen: tuple[str, ...] = (), *, dataset: str | None = None
                ) -> dict[str, Any]:
    """A preset's pipeline tree, the presets it `extends` merged under it. A preset's
    `per_dataset` block (dataset -> values) holds what the setting changes with the dataset
    (the paper's weight decay and Cutout): the block of `dataset` is merged over that preset's
    own values, under the presets that extend it; with no dataset no block applies."""
    path = PRESET_DIR / f"{name}.yaml"
    # a plain name only: `../x` would read any YAML file on the machine as a preset
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)) or not path.exists() or name in _seen:
        valid = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset '{name}'; allowed: {valid}")
    tree = read_yaml(path) or {}
    parent = tree.pop("extends", None)
    blocks = tree.pop(PER_DATASET, None) or {}
    installed = registry.names(registry.DATASETS)
    unknown = sorted(set(blocks) - set(installed))
    if unknown:   # a misspelt dataset's values would never apply
        raise ConfigError(f"{path}: key '{PER_DATASET}': unknown dataset(s) {unknown}; "
                          f"allowed: {list(installed)}")
    if isinstance(dataset, str) and blocks.get(dataset):
        tree = deep_merge(tree, blocks[dataset])
    return (deep_merge(load_preset(parent, (*_seen, name), dataset=dataset), tree) if parent
            else tree)


def _dataset(preset: str, pipe: dict[str, Any],
             parsed: list[tuple[list[str], Any]]) -> str | None:
    """The dataset a pipeline will run on: the last --set of it, else the study file's, else
    the preset's. It chooses the preset's per-dataset values."""
    tree = deep_merge(load_preset(preset), pipe)
    for path, value in parsed:
        if path[0] == "pipeline" and path[1:2] == ["data"]:
            set_path(tree, path[1:], value)
    data = tree.get("data")
    dataset = data.get("dataset") if isinstance(data, dict) else None
    return dataset if isinstance(dataset, str) else None


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """`distill.temperature=4` -> (['pipeline', 'distill', 'temperature'], 4.0).

    Values are parsed as YAML scalars/lists; a path that does not start with a section name is
    taken to be under `pipeline`, the section people override most.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. distill.temperature=4")
    try:
        value = safe_yaml(raw, f"--set {key.strip()}") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, list)) and not raw.lstrip().startswith(("{", "[", "-")):
        # `sqlite:///:memory:` reads as the mapping {'sqlite:///:memory': None}: a value
        # that does not look like a mapping or list is meant as the string it is
        value = raw
    path = key.strip().split(".")
    if path[0] not in StudyFile.model_fields:
        path = ["pipeline", *path]
    return path, value


def resolve_tree(raw: Any, source: str, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The raw study tree with the pipeline preset expanded and overrides applied."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with keys "
                          f"{list(StudyFile.model_fields)}")
    tree = copy.deepcopy(raw)
    pipe = tree.get("pipeline") or {}
    if not isinstance(pipe, dict):
        raise ConfigError(f"{source}: key 'pipeline' must be a mapping")
    parsed = [parse_override(item) for item in overrides]
    preset = pipe.pop("preset", None)
    for path, value in parsed:   # `--set pipeline.preset=x` picks the preset, as in the file
        if path == ["pipeline", "preset"]:
            preset = value
    try:
        # the preset's per-dataset values lie under the file's own values and the overrides
        tree["pipeline"] = deep_merge(load_preset(preset, dataset=_dataset(preset, pipe, parsed)),
                                      pipe) if preset else pipe
    except ConfigError as e:
        raise ConfigError(f"{source}: key 'pipeline.preset': {e}") from None
    for path, value in parsed:
        if path == ["pipeline", "preset"]:
            continue
        if path[0] == "space" and len(path) > 1:
            _set_space(tree, path[1:], value)
        else:
            set_path(tree, path, value)
    slurm = (tree.get("executor") or {}).get("slurm") if isinstance(tree.get("executor"),
                                                                      dict) else None
    if isinstance(slurm, dict) and slurm.get("preset"):
        name = slurm["preset"]
        presets = slurm_presets()
        preset_file = presets.get(name) if isinstance(name, str) else None
        if preset_file is None:
            raise ConfigError(f"{source}: key 'executor.slurm.preset': unknown preset '{name}'; "
                              f"allowed: {sorted(presets) or _NOT_INSTALLED}")
        try:
            preset = read_yaml(preset_file) or {}
        except ConfigError as e:
            raise ConfigError(f"{source}: key 'executor.slurm.preset': {e}") from None
        tree["executor"]["slurm"] = deep_merge(preset, slurm)
    return tree


def _set_space(tree: dict[str, Any], rest: list[str], value: Any) -> None:
    """Space keys are dotted names themselves: `--set space.distill.lr.low=1e-4` sets option
    `low` of parameter 'distill.lr', `--set space.seed={type: int, ...}` adds one."""
    if not isinstance(tree.get("space"), dict):
        tree["space"] = {}
    space = tree["space"]
    for i in range(len(rest), 0, -1):
        name = ".".join(rest[:i])
        if name in space and (i == len(rest) or isinstance(space[name], dict)):
            break
    else:
        name, i = ".".join(rest), len(rest)
    if i == len(rest):
        space[name] = value
    else:
        set_path(space[name], rest[i:], value)


def slurm_presets() -> dict[str, Path]:
    """Preset name -> its file: the shipped presets, and those in the working directory's
    slurm/presets/ (a shipped one wins a name both have). A name is a file stem, never a path:
    `../x` names no preset."""
    local = Path.cwd() / SLURM_PRESET_FOLDER
    found = {p.name: p for p in local.glob("*.yaml")} if local.is_dir() else {}
    found.update(shipped_files(SLURM_PRESET_PACKAGE))
    return {name.removesuffix(".yaml"): path for name, path in found.items()}


def validate(tree: dict[str, Any], source: str) -> StudyFile:
    try:
        return StudyFile.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source)) from None


def format_errors(e: ValidationError, source: str) -> str:
    lines = [f"{source}: {e.error_count()} error(s) in the study file:"]
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        key = key.replace(".literal[", "[")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent_loc = [p for p in err["loc"][:-1] if isinstance(p, str)]
            allowed = schema.allowed_keys(StudyFile, parent_loc)
            near = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
            msg = "unknown key" + (f" (did you mean '{near[0]}'?)" if near else "")
            msg += f"; allowed keys here: {allowed}"
        elif "input" in err and err["type"] not in ("missing",) and not (
                isinstance(err["input"], Mapping) and schema.allowed_keys(
                    StudyFile, [p for p in err["loc"] if isinstance(p, str)
                                and not p.startswith("function-")])):
            # a rule across a whole section names the values it is about; the section itself
            # would be 200 characters of noise
            got = repr(err["input"])
            if key == "study.storage":   # a URL may hold a password: never echoed
                got = "a value not shown: it may hold a password"
            msg += f" (got {got if len(got) <= 200 else got[:200] + '...'})"
        lines.append(f"  - key '{key or '<top>'}': {msg}")
    return "\n".join(lines)
