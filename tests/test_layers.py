"""The import contract: our packages form layers, and an import may only point down (README "Layout").

Read from the source with ``ast`` (nothing is imported): every ``import`` of one of our packages, at module level
or inside a function, must name a package of the same or a lower layer; a cross-package import inside a function
is allowed only where :data:`LAZY` names it and says why; the module graph has no cycle; the python models that
run inside Triton import only the runtime layer. A new upward import fails ``make test``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Bottom to top. A package may import its own layer's and every lower layer's packages.
LAYERS = (
    ("cxr",),  # runtime (what runs inside Triton) and the pure pieces every layer shares
    ("training",),
    ("export",),
    ("client",),  # what a PACS integration installs: gRPC client, CLI helpers, evaluation and fitting tools
    ("ops",),  # the Triton process, its admin API, the stub watchdog, rollout
    ("gateway", "benchmarks"),
    ("cli",),
)
LAYER = {package: level for level, packages in enumerate(LAYERS) for package in packages}

# (file, module) -> why this cross-package import waits until the function runs.
LAZY = {
    ("cli/models.py", "export.publish"): "needs the training stack (PyTorch), which the gateway image lacks",
}


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(module, line, inside a function)`` for every import of one of our packages in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nested = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        found += [(m, node.lineno, id(node) in nested) for m in modules if m.split(".")[0] in LAYER]
    return found


def _sources() -> dict[str, Path]:
    """Module name -> file, for every module of every layered package."""
    modules = {}
    for package in LAYER:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def test_every_import_points_down_the_layers():
    upward = []
    for module, path in _sources().items():
        here = LAYER[module.split(".")[0]]
        upward += [f"{path.relative_to(REPO)}:{line} imports {target} (layer {LAYER[target.split('.')[0]]} > {here})"
                   for target, line, _ in _imports(path) if LAYER[target.split(".")[0]] > here]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_cross_package_imports_inside_functions_are_only_the_named_lazy_ones():
    hidden = []
    for module, path in _sources().items():
        rel = str(path.relative_to(REPO))
        hidden += [f"{rel}:{line} imports {target} inside a function"
                   for target, line, nested in _imports(path)
                   if nested and target.split(".")[0] != module.split(".")[0] and (rel, target) not in LAZY]
    assert not hidden, "\n".join(hidden)
    for (rel, target), why in LAZY.items():  # each exemption still exists and says why
        assert why and any(t == target and nested for t, _, nested in _imports(REPO / rel)), (rel, target)


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that ``import target`` / ``from target import x`` loads (a package's ``__init__``)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def test_the_module_graph_has_no_cycle():
    """Modules of all layers, with imports inside functions counted too (they are where cycles used to hide)."""
    modules = _sources()
    graph = {m: {r for t, _, _ in _imports(p) if (r := _resolve(t, modules)) and r != m} for m, p in modules.items()}
    # a package's __init__ importing its own submodules is how packages register, not a cycle of ideas
    graph = {m: {t for t in targets if not m == t.rpartition(".")[0] or modules[m].name != "__init__.py"}
             for m, targets in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_python_models_inside_triton_import_only_the_runtime():
    for path in sorted((REPO / "model_repository").rglob("model.py")):
        ours = {target.split(".")[0] for target, _, _ in _imports(path)}
        assert ours <= {"cxr"}, f"{path.relative_to(REPO)} imports {sorted(ours - {'cxr'})}"


def _layout() -> dict[str, set[str]]:
    """README "Layout": folder -> the file names (``a.py``, ``models/b.py``) listed on its lines."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Layout\n", 1)[1].split("```\n", 2)[1]
    listed: dict[str, set[str]] = {}
    folder = None
    for line in block.splitlines():
        head = line.split(" ", 1)[0]
        if head.endswith("/") and not line.startswith(" "):
            folder = head.rstrip("/")
            listed[folder] = set()
        if folder is None:
            continue
        for token in re.findall(r"[\w/]*(?:\{[\w,]+\})?[\w/]*\.py\b", line):
            if "{" in token:
                stem, names, rest = re.match(r"(.*)\{([\w,]+)\}(.*)", token).groups()
                listed[folder].update(f"{stem}{n}{rest}" for n in names.split(","))
            else:
                listed[folder].add(token)
    return listed


def test_the_readme_layout_matches_the_tree():
    listed = _layout()
    assert set(LAYER) <= set(listed), f"packages missing from README's Layout: {sorted(set(LAYER) - set(listed))}"
    for folder, names in listed.items():
        for name in names:
            assert list((REPO / folder).rglob(name)), f"README's Layout lists {folder}/{name}, which does not exist"
    for package in set(LAYER) - {"cli"}:  # cli: one module per command, described as such
        modules = {p.name for p in (REPO / package).glob("*.py") if p.name != "__init__.py"}
        named = {Path(n).name for n in listed[package]}
        assert modules <= named, f"{package}/ modules not in README's Layout: {sorted(modules - named)}"
