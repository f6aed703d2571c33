"""The shipped study files and SLURM presets are package data: `--space smoke` works from any
directory, in the editable install and from a built wheel.

search_spaces/ and slurm/presets/ stay at the top of the checkout; pyproject.toml maps them to
the packages study.search_spaces and study.slurm_presets. The wheel is built offline (no build
isolation: the venv's setuptools) from a copy of the checkout, so nothing is written into it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from study import studyfile
from study.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted(p.name for p in (ROOT / "search_spaces").glob("*.yaml"))
SLURM_PRESETS = sorted(p.name for p in (ROOT / "slurm" / "presets").glob("*.yaml"))
# What a wheel is built from: the package and the folders pyproject.toml maps into it.
SOURCES = ("pyproject.toml", "README.md", "study", "search_spaces", "slurm/presets")
# Offline and quiet: every requirement is installed already (--no-deps, no build isolation).
PIP_ENV = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _can_build_wheels() -> bool:
    # setuptools >= 70.1 builds wheels itself; older ones need the `wheel` package
    return any(importlib.util.find_spec(m) is not None
               for m in ("setuptools.command.bdist_wheel", "wheel"))


def _pip(*args: str, cwd: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=PIP_ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


@pytest.mark.skipif(not _can_build_wheels(), reason="setuptools cannot build wheels here "
                    "(needs setuptools >= 70.1 or the wheel package)")
def test_the_wheel_ships_the_spaces_and_presets_and_finds_them_anywhere(
        tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), ".",
         cwd=src)
    (wheel,) = (tmp_path / "dist").glob("study-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, files in (("search_spaces", SPACES), ("slurm_presets", SLURM_PRESETS)):
        assert {f"study/{folder}/{f}" for f in files} <= names, sorted(names)
    assert {"study/presets/paper.yaml", "study/presets/smoke.yaml"} <= names
    # pyproject.toml lists the packages: a package under study/ left out would be missing
    modules = {p.relative_to(src).as_posix() for p in (src / "study").rglob("*.py")}
    assert modules <= names, f"not in the wheel (add the package to pyproject.toml): " \
                             f"{sorted(modules - names)}"

    site = tmp_path / "site"
    _pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("from study import studyfile\n"
             "for name in ('smoke', 'smoke.yaml'):\n"
             "    print(studyfile.load(name).source)\n"
             "print(studyfile.slurm_presets()['gpu'])\n")
    r = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr[-2000:]
    found = r.stdout.split()
    # the wheel's own copies, not the checkout's (the editable install is on the path too)
    assert found == [str(site / "study" / "search_spaces" / "smoke.yaml")] * 2 + [
        str(site / "study" / "slurm_presets" / "gpu.yaml")], r.stdout


def test_the_editable_install_finds_them_from_any_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("smoke", "smoke.yaml"):
        assert studyfile.load(name).source == str(ROOT / "search_spaces" / "smoke.yaml")
    assert sorted(studyfile.slurm_presets()) == [Path(f).stem for f in SLURM_PRESETS]
    with pytest.raises(ConfigError) as e:
        studyfile.load("smok")
    assert "no such study file" in str(e.value) and str(SPACES) in str(e.value)
    # a path that exists is read as given, even where a shipped file has its name
    (tmp_path / "smoke").write_text("study: {name: mine}\npipeline: {preset: smoke}\n")
    assert studyfile.load("smoke").sf.study.name == "mine"
