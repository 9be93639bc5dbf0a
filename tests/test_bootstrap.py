"""The set-up cannot pass by accident: every program and file `mdiff data build` reads comes from a Debian
package that scripts/bootstrap.sh installs (asked of dpkg, so a machine with extra packages hides nothing)."""

from __future__ import annotations

import ast
import os
import pathlib
import shutil
import subprocess

import pytest

from mdiff.data import sources
from mdiff.data.sources import MissingPackageError, Requirement

ROOT = pathlib.Path(__file__).resolve().parent.parent
BOOTSTRAP = ROOT / "scripts" / "bootstrap.sh"
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian system")


def bootstrap_packages() -> set[str]:
    """APT_PACKAGES as bash itself reads it from scripts/bootstrap.sh (the one home of the list)."""
    line = next(l for l in BOOTSTRAP.read_text().splitlines() if l.startswith("APT_PACKAGES=("))
    out = subprocess.run(["bash", "-c", f'{line}\nprintf "%s\\n" "${{APT_PACKAGES[@]}}"'], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def owners(path: str) -> set[str]:
    """The Debian packages `dpkg -S` names for `path` (trying its /usr-merged spellings too)."""
    real = os.path.realpath(path)
    candidates = [path, real] + [p.replace("/usr/", "/", 1) for p in (path, real) if p.startswith("/usr/")]
    for candidate in dict.fromkeys(candidates):
        proc = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        found = {
            pkg.strip().split(":")[0]  # "pkg:amd64" -> "pkg"
            for line in proc.stdout.splitlines()
            if line.rpartition(": ")[2] == candidate
            for pkg in line.rpartition(": ")[0].split(",")
        }
        if found:
            return found
    return set()


def files_read(name: str, requirement: Requirement) -> list[str]:
    """What the build opens for a requirement: the program, the file, or each file of a directory it reads."""
    files = [requirement.resolve()]
    if name == "fortunes":
        files += sources.fortune_files()
    return files


def test_bootstrap_list_parses():
    packages = bootstrap_packages()
    assert {"bible-kjv", "espeak-ng", "fortunes"} <= packages and all(p and " " not in p for p in packages)


@needs_dpkg
@pytest.mark.parametrize("name", sorted(sources.requirements()))
def test_every_data_build_requirement_comes_from_a_bootstrap_package(name):
    requirement = sources.requirements()[name]
    listed = bootstrap_packages()
    for path in files_read(name, requirement):
        found = owners(path)
        assert found, f"{path} ({name}) belongs to no Debian package: the bootstrap cannot provide it"
        assert found & listed, f"{path} ({name}) comes from {sorted(found)}, none of which scripts/bootstrap.sh installs"
    # The error message for a missing requirement names the package that really ships it.
    assert requirement.package in owners(requirement.resolve()), (name, requirement.package, owners(requirement.resolve()))
    assert requirement.package in listed


def test_missing_requirement_names_its_package(monkeypatch):
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    with pytest.raises(MissingPackageError, match=r"^bible not found: install .*`sudo apt-get install bible-kjv`$"):
        sources.bible_chapters()
    with pytest.raises(MissingPackageError, match="apt-get install pocketsphinx-testdata"):
        Requirement("pocketsphinx-testdata", path="/nonexistent/data").resolve()


def _literal_paths_and_programs() -> tuple[set[str], set[str]]:
    """Absolute system paths written in mdiff/data/*.py, and programs named first in a subprocess call."""
    paths, programs = set(), set()
    for file in (ROOT / "mdiff" / "data").glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(("/usr/", "/etc/", "/opt/")):
                paths.add(node.value)
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("run", "Popen", "check_output", "call")
                    and node.args and isinstance(node.args[0], ast.List) and node.args[0].elts
                    and isinstance(node.args[0].elts[0], ast.Constant)):  # fmt: skip
                programs.add(node.args[0].elts[0].value)
    return paths, programs


def test_the_requirements_table_is_complete():
    """Every system path and program the data package names goes through `sources.requirements()`."""
    paths, programs = _literal_paths_and_programs()
    table = sources.requirements().values()
    assert paths <= {r.path for r in table}, paths - {r.path for r in table}
    assert programs <= {r.command for r in table}, programs - {r.command for r in table}


def test_a_build_missing_packages_names_them_all_and_touches_nothing(tmp_path, monkeypatch):
    from mdiff.data.build import build_dataset

    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    monkeypatch.setattr(sources, "FORTUNES_DIR", str(tmp_path / "no-fortunes"))
    with pytest.raises(MissingPackageError) as info:
        build_dataset(str(tmp_path / "data"), scale="tiny", progress=False)
    message = str(info.value)
    assert message.endswith("install with `sudo apt-get install bible-kjv fortunes espeak-ng`") and "\n" not in message
    assert not (tmp_path / "data").exists()
