"""No function in ``pipeline/`` or ``learners/`` is over 80 lines, read from the source with
``ast``: a function that long does several jobs, and each job belongs in a function (or a
module) whose name says which. The one exception is a table of argparse arguments, which
is long by nature and says one thing; such a table must be on ``PARSER_TABLES`` and must
really be one (mostly ``add_argument`` calls)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "learners")
LIMIT = 80

# "<file>:<function>" of argparse tables allowed past the limit.
PARSER_TABLES = {"pipeline/cli/run.py:add_job_arguments"}

Function = ast.FunctionDef | ast.AsyncFunctionDef


def functions() -> dict[str, Function]:
    """Every function and method, as ``"<file>:<name>"`` (nested ones too)."""
    found: dict[str, Function] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), filename=where)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    found[f"{where}:{node.name}"] = node
    return found


def length(node: Function) -> int:
    """Lines from the ``def`` (or its first decorator) to the last line of the body."""
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    return (node.end_lineno or node.lineno) - first + 1


def is_parser_table(node: Function) -> bool:
    """Most of its statements are ``<parser>.add_argument(...)``-style calls."""
    calls = 0
    for stmt in node.body:
        call = stmt.value if isinstance(stmt, ast.Expr | ast.Assign) else None
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
            calls += call.func.attr.startswith(("add_argument", "add_parser", "set_defaults"))
    return calls >= 0.6 * len(node.body)


def too_long() -> dict[str, int]:
    return {name: length(node) for name, node in functions().items() if length(node) > LIMIT}


def test_no_function_is_over_the_limit():
    over = {k: v for k, v in too_long().items() if k not in PARSER_TABLES}
    assert over == {}, f"functions over {LIMIT} lines (split them): {over}"


@pytest.mark.parametrize("name", sorted(PARSER_TABLES))
def test_the_exceptions_are_argparse_tables(name):
    node = functions().get(name)
    assert node is not None, f"{name} is gone: take it off PARSER_TABLES"
    assert is_parser_table(node), f"{name} is not an argparse table: split it"


def test_a_planted_long_function_is_found(tmp_path, monkeypatch):
    """Negative control: in a planted tree, an 81-line function is reported, an 80-line
    one and a long argparse table are not."""
    body = "\n".join(f"    x{i} = {i}" for i in range(79))
    table = "\n".join(f"    p.add_argument('--a{i}')" for i in range(90))
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "x.py").write_text(
        f"def f():\n{body}\n    return 0\n\n\ndef g():\n{body}\n\n\ndef t(p):\n{table}\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert too_long() == {"pipeline/x.py:f": LIMIT + 1, "pipeline/x.py:t": 91}
    found = functions()
    assert is_parser_table(found["pipeline/x.py:t"])
    assert not is_parser_table(found["pipeline/x.py:f"])
