"""The package's layers: imports only point down, and no two files import each other.

Bottom to top: the base (``core``: errors, checks, rules, policy, decisions, selection,
guarantees; ``io``: atomic writes and guarded reads; ``platform``: the machine and torch
devices) → ``nn`` (trees, models, costs) → ``data`` → ``runs`` (the run-directory
reader) → ``train`` → ``policies`` (the science of exit policies) → ``engine`` (early-exit
inference) → ``delivery`` (export, predict, serve) → ``experiments`` → ``plots`` →
``commands``/``cli``.
Every import counts, wherever it stands (module level or inside a function).

``deploy`` stands beside the order: it runs exports without torch, so it imports only
the torch-free base modules, and any layer above base may use it (the exporter writes its
manifest format, ``predict`` and ``serve`` run it).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dynroute"
LAYERS = [
    "base",
    "nn",
    "data",
    "runs",
    "train",
    "policies",
    "engine",
    "delivery",
    "experiments",
    "plots",
    "commands",
]
#: The base: the package's root and its torch-free core, file-safety and platform rooms.
BASE_ROOMS = ("dynroute.core", "dynroute.io", "dynroute.platform")
#: Packages outside the layer order: what they may import, and which layers may import them.
SIDE = {"deploy": {"imports": {"base"}, "imported_by": set(LAYERS[1:])}}
#: Base modules that import torch, which a side package must not use.
TORCH_BASE = {"dynroute.platform.devices"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def layer(module: str) -> str:
    if module == "dynroute" or module.startswith(tuple(r + "." for r in BASE_ROOMS)):
        return "base"
    if module in BASE_ROOMS:
        return "base"
    if module == "dynroute.cli":
        return "commands"
    return module.split(".")[1]


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's own modules that ``module`` imports."""
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                root = ".".join(anchor + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            names = [root] + [f"{root}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and not name.startswith(module + "."):
                targets.add(name)
    return targets


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def test_imports_only_point_down() -> None:
    upward = []
    for module, targets in graph().items():
        if module == "dynroute":  # the facade resolves its public names lazily
            continue
        source = layer(module)
        for target in targets:
            goal = layer(target)
            if source in SIDE:
                allowed = goal == source or (
                    goal in SIDE[source]["imports"] and target not in TORCH_BASE
                )
            elif goal in SIDE:
                allowed = source in SIDE[goal]["imported_by"]
            else:
                allowed = LAYERS.index(goal) <= LAYERS.index(source)
            if not allowed:
                upward.append(f"{module} ({source}) imports {target} ({goal})")
    assert not upward, "imports pointing up:\n" + "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    edges = graph()
    seen: dict[str, int] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        seen[module] = 1
        for target in sorted(edges[module]):
            if seen.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in seen:
                visit(target, [*stack, target])
        seen[module] = 2

    for module in sorted(edges):
        if module not in seen:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_side_packages_never_import_torch() -> None:
    """Not even inside a function: an export runs where torch is not installed."""
    for module, path in modules().items():
        if layer(module) not in SIDE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            assert not any(n == "torch" or n.startswith("torch.") for n in names), module


def test_the_rules_are_enforced() -> None:
    """The side rule refuses what it should (so the tests above are not vacuous)."""
    assert layer("dynroute.deploy.runtime") == "deploy"
    assert "base" not in SIDE["deploy"]["imported_by"]
    assert any(layer(m) == "deploy" for m in modules())


def test_no_two_classes_share_a_name() -> None:
    """A class name says which class: none is defined twice in the package."""
    where: dict[str, list[str]] = {}
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(module)
    twice = {name: found for name, found in where.items() if len(found) > 1}
    assert not twice, f"classes defined twice: {twice}"
