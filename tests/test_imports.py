"""Import hygiene of the whole package: no import circles, light imports stay light.

The import graph is read from the source with ``ast``: every ``import`` of an ``extune`` module,
at module level or inside a function (a lazy import is a dependency too), ``TYPE_CHECKING``
blocks included. An edge goes to the module named (``from extune.models import resnet`` names
``extune.models.resnet``), not to the packages Python initialises on the way.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name, from pyproject's ``package-dir``."""
    line = re.search(r"^package-dir = \{(.*)\}$", (ROOT / "pyproject.toml").read_text(), re.M)
    modules: dict[str, Path] = {}
    for package, folder in re.findall(r'"([\w.]+)" = "(\w+)"', line.group(1)):
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """``module -> modules of extune it imports`` (see the module docstring)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}".rstrip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_packages():
    graph = import_graph()
    assert {"extune.registry", "extune.cli", "extune.train.validate",
            "extune.tracking.trials"} <= set(graph)
    assert "extune.train.config" in graph["extune.train.validate"]
    assert "extune.models.resnet" in graph["extune.models.backbones"]  # a lazy import counts


def test_no_import_circles():
    assert cycles(import_graph()) == []


def private_imports() -> list[tuple[str, str]]:
    """``(module, name)`` for every import of a private name (``_x``, or a module ``_x``) of
    another extune package (the package: ``extune.<first part>``)."""
    modules = _modules()
    found = []
    for name, path in modules.items():
        own = ".".join(name.split(".")[:2])
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("extune."):
                targets = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("extune.")]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                if ".".join(parts[:2]) != own and any(p.startswith("_") for p in parts[1:]):
                    found.append((name, target))
    return found


def test_no_module_imports_a_private_name_of_another_package():
    assert private_imports() == []


def test_dependencies_point_one_way():
    """The floors (README, "Layout"): ``models``, ``augment`` and ``evaluate`` import none of
    ``train``, ``spaces``, ``tracking``, ``search``, ``study`` or the CLI; ``train`` none of
    ``spaces``, ``tracking``, ``search``, ``study`` or the CLI; ``spaces`` none of ``tracking``
    and above; ``tracking`` (everything that talks to MLflow) none of ``spaces``, ``search``,
    ``study`` or the CLI; ``search`` never imports ``study`` (a study is built on searches)."""
    graph = import_graph()
    above_train = ("extune.spaces", "extune.tracking", "extune.search", "extune.study",
                   "extune.cli")
    rules = {("extune.models", "extune.augment", "extune.evaluate"): ("extune.train",
                                                                       *above_train),
             ("extune.train",): above_train,
             ("extune.spaces",): ("extune.tracking", "extune.search", "extune.study",
                                  "extune.cli"),
             ("extune.tracking",): ("extune.spaces", "extune.search", "extune.study",
                                    "extune.cli"),
             ("extune.search",): ("extune.study", "extune.cli"),
             ("extune.study",): ("extune.cli",)}
    bad = [(m, t) for low, high in rules.items() for m, targets in graph.items()
           if m.startswith(low) for t in targets if t.startswith(high)]
    assert bad == []


def test_study_and_the_cli_use_the_front_door_of_search():
    """``extune.study`` and ``extune.cli`` import names of ``extune.search``, never its
    modules: what search exports is in one place (``search/__init__.py``)."""
    graph = import_graph()
    bad = [(m, t) for m, targets in graph.items()
           if m.startswith(("extune.study", "extune.cli")) for t in targets
           if t.startswith("extune.search.")]
    assert bad == []


SEARCH_FLOORS = (("extune.search.settings", "extune.search.connections", "extune.search.records"),
                 ("extune.search.folder",), ("extune.search.reporting",),
                 ("extune.search.engine",))
"""The floors inside ``search/``, lowest first (search/__init__.py)."""


def _search_floor(module: str) -> int | None:
    for floor, prefixes in enumerate(SEARCH_FLOORS):
        if module.startswith(prefixes):
            return floor
    return None


def test_no_import_inside_search_runs_back_up():
    graph = import_graph()
    bad = [(m, t) for m, targets in graph.items() if _search_floor(m) is not None
           for t in targets if _search_floor(t) is not None
           and _search_floor(t) > _search_floor(m)]
    assert bad == []
    assert all(_search_floor(m) is not None for m in graph
               if m.startswith("extune.search.")), "a search module without a floor"


LIGHT = {
    "extune.models": ("torchvision", "extune.train", "ray", "optuna", "mlflow"),
    "extune.augment": ("extune.train", "ray", "optuna", "mlflow"),
    "extune.evaluate": ("extune.train", "ray", "optuna", "mlflow"),
    "extune.train.config": ("torch", "ray", "optuna", "mlflow"),
    "extune.cli": ("torch", "ray", "optuna", "mlflow", "extune.search", "extune.study"),
    "extune.spaces": ("torch", "ray", "mlflow"),
    "extune.search.engine.run": ("torch", "ray", "mlflow"),
    "extune.search.engine.trainable": ("optuna", "mlflow"),
    "extune.search.settings": ("torch", "ray", "mlflow"),
    "extune.search": ("torch", "ray", "optuna", "mlflow"),
    "extune.tracking": ("torch", "ray", "optuna", "mlflow"),
    "extune.tracking.store": ("torch", "ray", "optuna", "mlflow"),
    "extune.study": ("torch", "ray", "optuna", "mlflow"),
    "extune.evaluate.metric_info": ("torch",),
}
"""Module -> the packages importing it alone must not import."""

_FORKED_IMPORTS = """
import json, os, sys

def leaked(module, absent):
    # a child of this interpreter imports the module alone and says what it pulled in
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            __import__(module)
            found = [m for m in absent if m in sys.modules]
        except BaseException as e:
            found = [f"import failed: {e!r}"]
        os.write(write, json.dumps(found).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 1 << 16):
        data += chunk
    os.waitpid(pid, 0)
    return json.loads(data)

rows = json.loads(sys.argv[1])
found = {m: leaked(m, a) for m, a in rows.items() if "torch" in a}
import torch  # once, for the modules allowed to import it
found.update({m: leaked(m, a) for m, a in rows.items() if "torch" not in a})
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def imported_alone() -> dict[str, list[str]]:
    """Module -> the packages of :data:`LIGHT` it imported, each module imported alone in a
    fresh child of one interpreter (forked: the modules allowed torch share its import, which
    a process per module paid again: ~1.5 s each)."""
    import json

    done = subprocess.run([sys.executable, "-c", _FORKED_IMPORTS, json.dumps(LIGHT)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("module", sorted(LIGHT))
def test_light_imports_stay_light(module, imported_alone):
    assert imported_alone[module] == []
