"""The package's structure, checked from the source: the layers import only downwards, ``dragsaw.data`` has no import
cycle and no module imports another's private names, and 2D/3D branches stay in the places that truly differ."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dragsaw"

DIMS_BRANCH = re.compile(r"\b(spatial_)?dims\s*(==|!=)\s*[23]\b|\bndim\s*(==|!=)\s*[45]\b")

# Where 2D and 3D truly differ: planning (spacing / modality normalisation, which reader), the inference output
# hooks' one dispatch, the CLI `synth` writer, the UAFS head width of the core, a volume file's channel axis, the
# method's own 2D and 3D placements of PDCR/UAFS (library hosts), and a few messages. Anything else must go through a reader, a plan or `spatial_dims`-generic code.
ALLOWED_DIMS_BRANCHES = {
    "plan.py": 5,
    "inference/outputs.py": 1,
    "cli.py": 1,
    "uafs.py": 1,
    "models/base.py": 1,
    "engine/run.py": 1,
    "metrics.py": 1,
    "data/io/geometry.py": 1,
    "models/monai_hosts.py": 1,
}


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """``(module imported, names)`` of every import in a module, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def test_dims_branches_only_where_2d_and_3d_truly_differ():
    counts = {}
    for path in SRC.rglob("*.py"):
        n = len(DIMS_BRANCH.findall(path.read_text()))
        if n:
            counts[str(path.relative_to(SRC))] = n
    assert counts == ALLOWED_DIMS_BRANCHES, (
        "a `dims == 2/3` branch was added or removed; put what differs between images and volumes behind "
        "dragsaw.data.readers (reading, preprocessing, mapping back) or inference's _Outputs, then update the list"
    )


def _data_graph() -> tuple[dict[str, set[str]], list[str]]:
    """The import graph of ``dragsaw.data`` (module -> modules of it that it imports) and its private imports."""
    modules = _modules(SRC / "data")
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for name, path in modules.items():
        for target, names in _imports(name, path):
            owner = target if target in modules else None
            for alias in names:  # `from dragsaw.data.io import images` imports a module
                if f"{target}.{alias}" in modules:
                    graph[name].add(f"{target}.{alias}")
                elif alias.startswith("_") and target.startswith("dragsaw") and target != name:
                    private.append(f"{name} imports {target}.{alias}")
            if owner and owner != name:
                graph[name].add(owner)
    return graph, private


def test_data_layer_imports_no_private_name_of_another_module():
    assert not _data_graph()[1]


def test_data_layer_has_no_import_cycle():
    graph = _data_graph()[0]
    # a package's __init__ re-exports its children: edges from a package to its own submodules are not cycles
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if node.startswith(nxt + ".") or nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("layer, forbidden", [
    ("dragsaw.pdcr", ("dragsaw.data", "dragsaw.models", "dragsaw.engine", "dragsaw.cli", "monai", "lightning")),
    ("dragsaw.data", ("dragsaw.engine", "dragsaw.cli", "dragsaw.inference", "dragsaw.plan", "lightning")),
    ("dragsaw.models", ("dragsaw.data", "dragsaw.engine", "dragsaw.cli", "lightning")),
])
def test_layers_import_only_downwards(layer, forbidden):
    modules = {k: v for k, v in _modules(SRC).items() if k == layer or k.startswith(layer + ".")}
    assert modules
    bad = [f"{name} imports {target}" for name, path in modules.items() for target, _ in _imports(name, path)
           if any(target == f or target.startswith(f + ".") for f in forbidden)]
    assert not bad
