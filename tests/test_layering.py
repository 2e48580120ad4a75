"""The layers of docs/architecture.md, read from the source with ``ast``: imports point
down only, there are no import cycles, and an import inside a function body counts like
any other (hiding one there does not make a cycle go away). The pipeline knows no learner
by name: it imports none of their modules and compares no chain with a literal; it asks
the learners (``learners.registry``, ``learners.aids``) instead."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from learners import registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hpo", "learners", "pipeline", "compressflow")

# Lower ranks never import higher ones. The longest matching prefix decides a module's rank.
RANKS = {
    "hpo": 0,
    "learners.formats": 1,
    "learners": 2,
    "pipeline.records": 3,
    "pipeline.measure": 3,
    "pipeline.sources": 4,
    "pipeline.spec": 5,
    "pipeline.job": 6,
    "pipeline.runners": 7,
    "pipeline.flows": 8,
    "pipeline.cli": 9,
    "pipeline.__main__": 10,
    "pipeline": 0,  # the package's __init__: imports nothing
    "compressflow": 11,  # the Python API: a facade over everything below
}


def module_files() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def rank(module: str) -> int:
    best = max((p for p in RANKS if module == p or module.startswith(p + ".")), key=len)
    return RANKS[best]


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in ``path`` (module level, functions, classes)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from pkg import mod` imports the module pkg.mod when there is one.
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names
            ]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def graph() -> dict[str, set[str]]:
    modules = module_files()
    return {m: imports_of(f, modules) & set(modules) for m, f in modules.items()}


def upward(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {t}" for m, ts in edges.items() for t in ts if rank(t) > rank(m))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for module in module_files():
        assert any(module == p or module.startswith(p + ".") for p in RANKS), module


def test_imports_only_point_down():
    assert upward(graph()) == []


def test_there_are_no_import_cycles():
    assert cycles(graph()) == []


def test_hpo_imports_nothing_of_learners_or_pipeline():
    edges = graph()
    assert not {t for m, ts in edges.items() if m.startswith("hpo") for t in ts if t[:3] != "hpo"}


@pytest.mark.parametrize(
    ("source", "expect_upward", "expect_cycle"),
    [
        # The checks themselves can fail: an upward import hidden in a function body...
        ("def f():\n    from pipeline.cli.errors import UserError\n", True, False),
        # ...and a cycle through a function-level import.
        ("def f():\n    from learners.chain import apply_chain\n", False, True),
    ],
)
def test_the_checks_catch_hidden_imports(source, expect_upward, expect_cycle, tmp_path):
    modules = module_files()
    fake = tmp_path / "fake.py"
    fake.write_text(source)
    edges = graph()
    # Pretend learners/registry.py also had these lines (learners.chain uses the registry).
    edges["learners.registry"] = edges["learners.registry"] | imports_of(fake, modules)
    edges["learners.chain"] = edges["learners.chain"] | {"learners.registry"}
    edges["pipeline.cli.errors"] = set()
    assert bool(upward(edges)) == expect_upward
    assert bool(cycles(edges)) == expect_cycle


def learner_modules() -> set[str]:
    """The built-in learners' own modules (a learner that is a package counts whole)."""
    here = ROOT / "learners"
    return {
        f"learners.{name}"
        for name in registry.known()
        if (here / name).is_dir() or (here / f"{name}.py").is_file()
    }


def names_a_learner(module: str, learners: set[str]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in learners)


def pipeline_imports_of_learners(edges: dict[str, set[str]]) -> list[str]:
    learners = learner_modules()
    return sorted(
        f"{m} -> {t}"
        for m, ts in edges.items()
        if m.startswith("pipeline")
        for t in ts
        if names_a_learner(t, learners)
    )


def _literal(node: ast.AST) -> bool:
    return isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Constant))


def _chain(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "learners"


def chain_literals(source: str) -> list[int]:
    """Lines comparing a chain (``x.learners``) with a literal: ``== ["channel"]``,
    ``"channel" in spec.learners`` and the like."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        if any(_chain(a) for a in sides) and any(_literal(b) for b in sides):
            lines.append(node.lineno)
    return lines


def test_the_pipeline_imports_no_particular_learner():
    assert learner_modules() >= {"learners.channel", "learners.int8", "learners.lowrank"}
    assert pipeline_imports_of_learners(graph()) == []


def test_no_code_compares_a_chain_with_a_literal():
    found = {
        str(path.relative_to(ROOT)): lines
        for path in module_files().values()
        if (lines := chain_literals(path.read_text()))
    }
    assert found == {}


@pytest.mark.parametrize(
    "source",
    [
        "from learners.channel import ChannelPruning\n",
        "from learners.channel.latency_table import build_table\n",
        "from learners import lowrank\n",
        "def f():\n    import learners.int8\n",
    ],
)
def test_a_planted_learner_import_under_pipeline_is_caught(source, tmp_path):
    modules = module_files()
    fake = tmp_path / "planted.py"
    fake.write_text(source)
    edges = graph()
    edges["pipeline.job.planted"] = imports_of(fake, modules) & set(modules)
    assert pipeline_imports_of_learners(edges) == [
        f"pipeline.job.planted -> {t}" for t in sorted(edges["pipeline.job.planted"])
    ]
    assert pipeline_imports_of_learners(edges)


@pytest.mark.parametrize(
    "source",
    [
        'if spec.learners == ["channel"]:\n    pass\n',
        'ok = "channel" in spec.learners\n',
        'ok = spec.learners != ("lowrank", "int8")\n',
    ],
)
def test_a_planted_chain_literal_is_caught(source):
    assert chain_literals(source) == [1]
    assert chain_literals("ok = spec.learners == other.learners\n") == []
