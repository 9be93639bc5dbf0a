"""The layout's rules (ARCHITECTURE.md), checked on the source: bad-input errors share one base class, the
CLI does not hide import bugs."""

from __future__ import annotations

import ast
import pathlib
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
