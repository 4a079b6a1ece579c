"""The layering of src/spectraseg: imports flow one way, from data to the command line.

Read statically (nothing is imported): every ``import`` and ``from ... import`` in every
module, at any depth (function-level and ``TYPE_CHECKING`` imports included), must point
to the module's own unit or to a unit of a lower layer; there is no import cycle; and no
module imports a ``_private`` name from another unit.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("spectraseg", "spectraseg.errors", "spectraseg._moved"),
    ("spectraseg.runtime",),
    ("spectraseg.config",),
    ("spectraseg.parallel",),
    ("spectraseg.data",),
    ("spectraseg.align",),
    ("spectraseg.features",),
    ("spectraseg.models",),
    ("spectraseg.evaluation", "spectraseg.vectorize", "spectraseg.inference.tiling"),
    ("spectraseg.runs",),
    ("spectraseg.training", "spectraseg.inference", "spectraseg.bundle"),
    ("spectraseg.submission", "spectraseg.report", "spectraseg.crossval"),
    ("spectraseg.demo",),
    ("spectraseg.cli",),
    ("spectraseg.__main__",),
)
"""Units by layer, lowest first. A module belongs to the longest unit its name starts with
(the root package only to itself, so that a new module must be given its place here).
Units of one layer are siblings: neither imports the other (training and the inference
pipeline share only what lies below them)."""

DEPRECATED = {
    f"spectraseg.{name}"
    for name in (
        "io geometry inspection synth registration fusion normalization indices sampling "
        "model losses pixelmodel metrics train predict"
    ).split()
}
"""The 0.1 module paths: thin aliases that resolve names lazily, outside the layering."""


def modules(src: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under ``src``."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        name = ".".join(path.relative_to(src).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def unit_of(module: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> tuple[int, str]:
    """``(layer index, unit)`` of a module: the longest unit that is it or contains it."""
    best: tuple[int, str] | None = None
    for rank, units in enumerate(layers):
        for unit in units:
            inside = module.startswith(unit + ".") and unit != layers[0][0]
            if module == unit or inside:
                if best is None or len(unit) > len(best[1]):
                    best = (rank, unit)
    if best is None:
        raise AssertionError(f"module {module} is in no layer of the architecture")
    return best


def imports(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` for each import of the package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:  # "from pkg import module"
                    yield sub, "", node.lineno
                elif base in known:
                    yield base, alias.name, node.lineno


def violations(src: Path, layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    """Every import against the layering, every cycle and every private name crossing units."""
    mods = {m: p for m, p in modules(src).items() if m not in DEPRECATED}
    known = set(mods) | DEPRECATED
    found: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        rank, unit = unit_of(module, layers)
        for target, name, line in imports(module, path, known):
            where = f"{path.relative_to(src)}:{line}"
            if target in DEPRECATED:
                found.append(f"{where}: imports the deprecated path {target}")
                continue
            graph[module].add(target)
            t_rank, t_unit = unit_of(target, layers)
            if t_unit != unit and t_rank >= rank:
                kind = "a sibling" if t_rank == rank else "a higher layer"
                found.append(f"{where}: {unit} imports {t_unit}, {kind}")
            if t_unit != unit and name.startswith("_") and not name.startswith("__"):
                found.append(f"{where}: imports the private name {name} from {target}")
    found.extend(cycles(graph))
    return found


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """One line per import cycle between modules (depth-first search)."""
    state: dict[str, int] = {}
    out: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt not in graph:
                continue
            if state.get(nxt) == 1:
                out.append("import cycle: " + " -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return out


def test_the_package_follows_its_layers() -> None:
    assert violations(SRC) == []


def test_every_module_has_a_layer() -> None:
    for module in modules(SRC):
        if module not in DEPRECATED:
            unit_of(module)
    with pytest.raises(AssertionError, match=r"spectraseg\.newstage is in no layer"):
        unit_of("spectraseg.newstage")


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


TOY_LAYERS = (
    ("spectraseg",),
    ("spectraseg.data",),
    ("spectraseg.training", "spectraseg.inference", "spectraseg.bundle"),
)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"spectraseg/data/a.py": "from spectraseg.training.loop import train\n"},
            "spectraseg.data imports spectraseg.training, a higher layer",
        ),
        (
            {"spectraseg/data/a.py": "def f():\n    import spectraseg.inference.x\n"},
            "spectraseg.data imports spectraseg.inference, a higher layer",
        ),
        (
            {"spectraseg/training/loop.py": "from spectraseg.inference import x\n"},
            "spectraseg.training imports spectraseg.inference, a sibling",
        ),
        (
            {"spectraseg/inference/x.py": "from spectraseg.data.a import _helper\n"},
            "imports the private name _helper from spectraseg.data.a",
        ),
        (
            {
                "spectraseg/data/a.py": "from spectraseg.data import b\n",
                "spectraseg/data/b.py": "from . import a\n",
            },
            "import cycle: spectraseg.data.a -> spectraseg.data.b -> spectraseg.data.a",
        ),
    ],
)
def test_the_checker_finds_reverse_imports_private_names_and_cycles(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    base = {
        "spectraseg/__init__.py": "",
        "spectraseg/data/__init__.py": "",
        "spectraseg/data/a.py": "",
        "spectraseg/data/b.py": "",
        "spectraseg/training/__init__.py": "",
        "spectraseg/training/loop.py": "from spectraseg.data.a import ok\n",
        "spectraseg/inference/__init__.py": "",
        "spectraseg/inference/x.py": "",
    }
    src = write(tmp_path / "bad", {**base, **files})
    assert violations(write(tmp_path / "clean", base), TOY_LAYERS) == []
    found = violations(src, TOY_LAYERS)
    assert any(message in line for line in found), found
