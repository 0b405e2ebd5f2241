"""The package's shape: imports flow one way, and no module grows past its limit.

    core <- ops <- nn <- loss <- engine <- tools      data <- core, ops      analysis <- ops, loss
    uav_detr_icr <- core, ops, nn

Every import (top level or inside a function) is read with `ast`, so a lazy import against the
direction fails too.
"""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# layer -> layers it may import (besides itself)
ALLOWED = {
    "core": set(),
    "ops": {"core"},
    "nn": {"core", "ops"},
    "loss": {"core", "ops", "nn"},
    "data": {"core", "ops"},
    "engine": {"core", "ops", "nn", "loss", "data"},
    "analysis": {"core", "ops", "loss"},
    "uav_detr_icr": {"core", "ops", "nn"},
}
MAX_LINES = 400
LIMITS = {"rtdetrv2_icr/engine/solver.py": 300, "rtdetrv2_icr/loss/icr.py": 150}


def _modules():
    for pkg in ("rtdetrv2_icr", "uav_detr_icr"):
        for root, _, files in os.walk(os.path.join(REPO, pkg)):
            for f in sorted(files):
                if f.endswith(".py"):
                    yield os.path.join(root, f)


def _layer(path: str) -> str:
    rel = os.path.relpath(path, REPO).split(os.sep)
    if rel[0] == "uav_detr_icr":
        return "uav_detr_icr"
    return rel[1] if len(rel) > 2 else "root"


def _imported_layers(path: str):
    """(line, layer) of every project import in the file."""
    rel = os.path.relpath(path, REPO).split(os.sep)
    pkg_parts = rel[:-1]
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts] if node.module else [base + [a.name] for a in node.names]
            else:
                names = [node.module.split(".")]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names]
        else:
            continue
        for parts in names:
            if parts[0] == "rtdetrv2_icr" and len(parts) > 1:
                yield node.lineno, parts[1]
            elif parts[0] == "uav_detr_icr":
                yield node.lineno, "uav_detr_icr"


def test_imports_flow_one_way():
    bad = []
    for path in _modules():
        own = _layer(path)
        if own == "root":  # the package __init__ registers everything
            continue
        for line, layer in _imported_layers(path):
            if layer != own and layer in ALLOWED and layer not in ALLOWED[own]:
                bad.append(f"{os.path.relpath(path, REPO)}:{line} ({own}) imports {layer}")
    assert not bad, "imports against the direction:\n" + "\n".join(bad)


def test_every_layer_is_known():
    layers = {_layer(p) for p in _modules()} - {"root"}
    assert layers <= set(ALLOWED), layers - set(ALLOWED)


def test_module_sizes():
    over = []
    for path in _modules():
        rel = os.path.relpath(path, REPO)
        n = sum(1 for _ in open(path, encoding="utf-8"))
        limit = LIMITS.get(rel.replace(os.sep, "/"), MAX_LINES)
        if n > limit:
            over.append(f"{rel}: {n} lines (limit {limit})")
    assert not over, over
