"""The package's shape: no import cycle, no module too long to read, a lean `fleet run`.

- **No import cycle** between fleet's modules, read from the source (`ast`), not by importing
  it: every import a module runs counts, at its top or inside a function; one under
  `if TYPE_CHECKING:` does not (it never runs). `from p import name` is an edge to the module
  `p.name` when there is one, else to `p`. Importing `fleet.x` also runs the package's
  `__init__`, but that implicit edge is left out: the package gathering its submodules'
  names is not a cycle with a submodule that imports a sibling.
- **No module above 500 lines** unless its docstring has a paragraph that starts with
  "Why this module is long:" and gives the reason (a concept that does not split cleanly).
- **`fleet run` imports neither starlette nor uvicorn**: only the emulator serves HTTP. The
  real `fleet run` runs in a subprocess under `python -X importtime` against an emulator this
  test serves, and the modules it imported are read from that output.
"""

from __future__ import annotations

import ast
import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from fleet import sim

if TYPE_CHECKING:
    from collections.abc import Iterator

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 500
WHY_LONG = "Why this module is long:"
HTTP_SERVER_PACKAGES = frozenset({"starlette", "uvicorn"})


@dataclass(frozen=True)
class Edge:
    """`importer` runs `import ... imported` at `line`."""

    importer: str
    imported: str
    line: int


# -- reading the package -------------------------------------------------------------------


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `root` (a src directory), by dotted name."""
    found: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements under `node` that can run: all but `if TYPE_CHECKING:` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _runtime_imports_of(other)
        else:
            yield from _runtime_imports(child)


def _runtime_imports_of(node: ast.stmt) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _runtime_imports(node)


def _base(name: str, statement: ast.ImportFrom, *, is_package: bool) -> str:
    """The absolute module a `from ... import` reads from (relative ones resolved)."""
    if statement.level == 0:
        return statement.module or ""
    here = name.split(".") if is_package else name.split(".")[:-1]
    anchor = here[: len(here) - statement.level + 1]
    return ".".join([*anchor, statement.module] if statement.module else anchor)


def import_edges(root: Path, package: str) -> list[Edge]:
    """The runtime imports between `package`'s own modules."""
    modules = module_files(root, package)
    edges: list[Edge] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for statement in _runtime_imports(tree):
            if isinstance(statement, ast.Import):
                targets = [alias.name for alias in statement.names]
            else:
                base = _base(name, statement, is_package=path.name == "__init__.py")
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in statement.names
                ]
            edges.extend(
                Edge(name, target, statement.lineno)
                for target in targets
                if target in modules and target != name
            )
    return edges


def find_cycle(edges: list[Edge]) -> list[Edge]:
    """One import cycle as the edges that close it, or [] when there is none."""
    graph: dict[str, list[Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, []).append(edge)
    done: set[str] = set()
    for start in sorted(graph):
        path: list[Edge] = []
        on_path = {start}
        # Depth first, iteratively: each frame is a module and the edges left to follow.
        stack: list[tuple[str, Iterator[Edge]]] = [(start, iter(graph.get(start, [])))]
        while stack:
            module, pending = stack[-1]
            edge = next(pending, None)
            if edge is None:
                stack.pop()
                done.add(module)
                on_path.discard(module)
                if path:
                    path.pop()
                continue
            if edge.imported in on_path:
                first = next(i for i, e in enumerate(path) if e.importer == edge.imported)
                return [*path[first:], edge] if path else [edge]
            if edge.imported not in done:
                path.append(edge)
                on_path.add(edge.imported)
                stack.append((edge.imported, iter(graph.get(edge.imported, []))))
    return []


def show_cycle(cycle: list[Edge]) -> str:
    return "\n".join(f"  {e.importer} imports {e.imported} (line {e.line})" for e in cycle)


def says_why_long(path: Path) -> bool:
    """Whether the module's docstring has a paragraph starting with WHY_LONG."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return any(p.strip().startswith(WHY_LONG) for p in docstring.split("\n\n"))


def long_modules(root: Path, package: str) -> list[str]:
    """Modules above MAX_LINES lines whose docstring does not say why, with their length."""
    found = []
    for name, path in module_files(root, package).items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and not says_why_long(path):
            found.append(f"{name} ({lines} lines)")
    return found


def imported_modules(importtime: str) -> set[str]:
    """The modules named by `python -X importtime`'s lines in a process's stderr."""
    prefix = "import time:"
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime.splitlines()
        if line.startswith(prefix) and "|" in line and "imported package" not in line
    }


# -- the package ---------------------------------------------------------------------------


def test_no_import_cycle_between_fleet_modules() -> None:
    """No chain of runtime imports leads from a fleet module back to itself."""
    edges = import_edges(SRC, "fleet")
    assert len(edges) > 50  # the package was read, not an empty directory
    cycle = find_cycle(edges)
    assert not cycle, "import cycle:\n" + show_cycle(cycle)


def test_no_module_above_500_lines_without_saying_why() -> None:
    """Every module is at most 500 lines, or its docstring says why it is longer."""
    assert len(module_files(SRC, "fleet")) > 20
    found = long_modules(SRC, "fleet")
    assert not found, f"over {MAX_LINES} lines, the docstring not saying why: " + ", ".join(found)


@pytest.mark.e2e
async def test_fleet_run_imports_neither_starlette_nor_uvicorn(tmp_path: Path) -> None:
    """A real `fleet run` of two models finishes without importing the emulator's server."""
    settings = sim.SimSettings(models=2, time_scale=5000.0)
    world, app = sim.build(settings)
    with (tmp_path / "models.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name", "train_dataset_id", "evaluate_dataset_id"])
        for model in world.models():
            writer.writerow([model.id, model.name, world.train_dataset_id, world.eval_dataset_id])
    (tmp_path / "fleet.toml").write_text(
        f'models_file = "{tmp_path / "models.csv"}"\npoll_interval = 0.05\n'
        f'[api]\nproject_id = "{settings.project_id}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    command = [sys.executable, "-X", "importtime", "-m", "fleet", "run", "--run-id", "shape"]
    async with sim.serve(app) as url:
        env |= {"FLEET_API__URL": url, "FLEET_API__TOKEN": settings.token}
        # A bound on a hang, not a timing: two models take well under a second of emulated time.
        with anyio.fail_after(50):
            done = await anyio.run_process(
                [*command, "--config", "fleet.toml"], cwd=tmp_path, env=env, check=False
            )
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr[-3000:]
    assert world.stats()["jobs_by_type"]["TRAINING"] == 2  # the run really ran
    imported = imported_modules(stderr)
    assert {"fleet.cli", "httpx"} <= imported
    servers = sorted(m for m in imported if m.split(".")[0] in HTTP_SERVER_PACKAGES)
    assert servers == []


# -- the checks themselves, on packages made up for them -----------------------------------


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_a_cycle_is_found_and_shown_with_its_lines(tmp_path: Path) -> None:
    """a → b → c → a, one of them inside a function, is found and printed edge by edge."""
    root = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import pkg.b\n",
            "pkg/b.py": "from pkg import c\n",
            "pkg/c.py": "def f():\n    from pkg.a import thing\n",
            "pkg/d.py": "from pkg import a\n",  # leads into the cycle, is not in it
        },
    )
    cycle = find_cycle(import_edges(root, "pkg"))
    assert [(e.importer, e.imported) for e in cycle] == [
        ("pkg.a", "pkg.b"),
        ("pkg.b", "pkg.c"),
        ("pkg.c", "pkg.a"),
    ]
    assert show_cycle(cycle).splitlines()[-1] == "  pkg.c imports pkg.a (line 2)"


def test_type_checking_imports_and_the_package_init_make_no_cycle(tmp_path: Path) -> None:
    """Imports under TYPE_CHECKING never run; `__init__` gathering a submodule is no cycle."""
    root = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import A\nfrom pkg.b import B\n",
            "pkg/a.py": (
                "from typing import TYPE_CHECKING\nimport typing\nif TYPE_CHECKING:\n"
                "    from pkg.b import B\nif typing.TYPE_CHECKING:\n    import pkg.b\n"
                "else:\n    import pkg.c\nA = 1\n"
            ),
            "pkg/c.py": "import json\n",
            "pkg/b.py": "from pkg.a import A\nfrom . import a\nB = 2\n",
        },
    )
    edges = {(e.importer, e.imported) for e in import_edges(root, "pkg")}
    assert edges == {("pkg", "pkg.a"), ("pkg", "pkg.b"), ("pkg.a", "pkg.c"), ("pkg.b", "pkg.a")}
    assert find_cycle(import_edges(root, "pkg")) == []
    # The same import outside TYPE_CHECKING, relative this time, closes a cycle.
    (root / "pkg" / "a.py").write_text("from .b import B\nA = 1\n", encoding="utf-8")
    assert {e.imported for e in find_cycle(import_edges(root, "pkg"))} == {"pkg.a", "pkg.b"}


def test_a_long_module_passes_only_when_its_docstring_says_why(tmp_path: Path) -> None:
    """501 lines fail; a "Why this module is long:" paragraph, not a mere mention, passes."""
    body = "x = 1\n" * MAX_LINES
    root = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/short.py": '"""Short."""\n' + "x = 1\n" * (MAX_LINES - 1),
            "pkg/long.py": '"""Long."""\n' + body,
            "pkg/mention.py": f'"""Long.\n\nThe rule: {WHY_LONG} a paragraph."""\n' + body,
            "pkg/why.py": f'"""Long.\n\n{WHY_LONG} one state machine.\n"""\n' + body,
        },
    )
    assert long_modules(root, "pkg") == ["pkg.long (501 lines)", "pkg.mention (503 lines)"]


def test_importtime_lines_name_the_modules_imported() -> None:
    """The module is the last column of each `import time:` line; other lines are ignored."""
    stderr = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       519 |      33176 |     pydantic._internal\n"
        '{"event": "fleet.run.started"}\n'
        "import time:        12 |         12 | starlette\n"
    )
    assert imported_modules(stderr) == {"pydantic._internal", "starlette"}
