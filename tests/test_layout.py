"""The layout's rules (ARCHITECTURE.md), checked on the source: bad-input errors share one base class, the
CLI does not hide import bugs."""

from __future__ import annotations

import ast
import pathlib
import re
import sys

import pytest

from mdiff import cli
from mdiff.errors import InputError

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.glob("mdiff/**/*.py"), *ROOT.glob("analysis/**/*.py")])


def _class_bases() -> dict[str, list[str]]:
    """Every class defined in mdiff/ and analysis/: "file:Name" -> the names of its bases."""
    out = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases]
                out[f"{path.relative_to(ROOT)}:{node.name}"] = bases
    return out


def test_bad_input_errors_derive_from_input_error_not_value_error():
    """Rule: a "your input is wrong" error subclasses mdiff.errors.InputError (which the CLI reports as one
    line, exit 2), never ValueError directly: then no list of error classes has to be kept by hand."""
    direct = [name for name, bases in _class_bases().items() if "ValueError" in bases and not name.endswith(":InputError")]
    assert direct == [], f"subclass mdiff.errors.InputError instead of ValueError: {direct}"


def test_an_input_error_from_any_subcommand_is_one_line_and_exit_2(monkeypatch, capsys):
    class NewKindOfBadInput(InputError):  # a class no list in cli.py names
        pass

    def run(args):
        raise NewKindOfBadInput("config.x=1: must be 2")

    parser_and_runners = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: (parser_and_runners[0], {**parser_and_runners[1], "data": run}))
    assert cli.main(["data", "info"]) == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err == "mdiff data: error: config.x=1: must be 2\n"


def test_an_import_error_in_a_subcommand_module_is_not_hidden(monkeypatch, tmp_path):
    """A subcommand module that fails to import is a bug: its ImportError reaches the caller."""
    (tmp_path / "broken_subcommand.py").write_text("import a_module_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.SUBCOMMANDS, "broken", ("a broken subcommand", "broken_subcommand", "configure", "run"))
    with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist"):
        cli.build_parser()
    sys.modules.pop("broken_subcommand", None)


# ---------------------------------------------------------------------------------------------
# Import rules (ARCHITECTURE.md, "Packages and what each may import")
# ---------------------------------------------------------------------------------------------
CORE = {"mdiff.errors", "mdiff.runtime", "mdiff.config", "mdiff.vocab", "mdiff.tensorboard", "mdiff.rundir"}
STACK = {"mdiff.parallel", "mdiff.optim", "mdiff.data", "mdiff.diffusion", "mdiff.model"}
SWEEPS = {"mdiff.sweeps"}
MAY_IMPORT = {
    "mdiff.errors": set(),
    "mdiff.runtime": set(),
    **{core: CORE for core in CORE - {"mdiff.errors", "mdiff.runtime"}},
    "mdiff.parallel": CORE,
    "mdiff.optim": CORE,
    "mdiff.data": CORE,
    "mdiff.diffusion": CORE,
    "mdiff.model": CORE | {"mdiff.parallel"},
    "mdiff.train": CORE | STACK,
    "mdiff.defaults": CORE | STACK | {"mdiff.train"},
    "mdiff.eval": CORE | STACK | {"mdiff.train", "mdiff.defaults"},
    "mdiff.symmetry": CORE,
    **{name: CORE | SWEEPS | {"mdiff.parallel", "mdiff.data", "mdiff.model", "mdiff.train", "mdiff.eval"} for name in SWEEPS},
    "analysis": CORE | {"mdiff.data", "mdiff.train", "mdiff.eval"},
    "sweeps": SWEEPS | {"mdiff.vocab"},
}
ANYTHING_BUT_CLI = {"mdiff.quickstart"}
ANYTHING = {"mdiff.cli", "mdiff.__main__"}
# Experiment configs build configs: the defaults, the vocabulary, a package's defaults module; no CLI module.
EXPERIMENT_MODULES = r"mdiff\.defaults|mdiff\.vocab|mdiff\.\w+\.(defaults|sampling_defaults)"


def _unit(name: str) -> str:
    """The package (or top-level module) an import or a file belongs to: mdiff.X, analysis, sweeps, ..."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "mdiff" and len(parts) > 1 else parts[0]


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) for every absolute import of the repository's own code in `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "mdiff":  # from mdiff import rundir -> mdiff.rundir
                out += [(node.lineno, f"mdiff.{alias.name}") for alias in node.names]
            else:
                out.append((node.lineno, node.module))
    return [(line, name) for line, name in out if name.split(".")[0] in ("mdiff", "analysis")]


def _violations() -> list[str]:
    files = [*SOURCES, *ROOT.glob("experiments/*.py"), *ROOT.glob("sweeps/*.py")]
    problems = []
    for path in files:
        rel = path.relative_to(ROOT)
        source = _unit(".".join(rel.with_suffix("").parts).removesuffix(".__init__"))
        for line, target in _imports(path):
            where, to = f"{rel}:{line} imports {target}", _unit(target)
            if to == source or source in ANYTHING:
                continue
            if source in ANYTHING_BUT_CLI:
                ok = to != "mdiff.cli"
            elif source == "experiments":
                ok = re.fullmatch(EXPERIMENT_MODULES, target) is not None
            elif source in MAY_IMPORT:
                ok = to in MAY_IMPORT[source]
            else:
                problems.append(f"{rel}: package {source} has no row in ARCHITECTURE.md / MAY_IMPORT")
                break
            if not ok:
                problems.append(where)
    return problems


def test_packages_import_only_what_architecture_md_allows():
    assert _violations() == []


def test_the_import_rule_check_catches_a_violation(tmp_path, monkeypatch):
    """The checker is not vacuous: a model module importing the data package is reported."""
    (tmp_path / "mdiff" / "model").mkdir(parents=True)
    (tmp_path / "mdiff" / "model" / "bad.py").write_text("def f():\n    from mdiff.data.layout import BATCH_KEYS\n")
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "bad.py").write_text("from mdiff.eval.commands import file_defaults\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "SOURCES", [tmp_path / "mdiff" / "model" / "bad.py"])
    assert _violations() == [
        "mdiff/model/bad.py:2 imports mdiff.data.layout",
        "experiments/bad.py:1 imports mdiff.eval.commands",
    ]
