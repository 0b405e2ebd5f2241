"""The package's shape: each stage imports only the stages below it, the import graph between
packages has no cycle, and no package grows into a catch-all.

    core <- ops <- nn <- loss                      data <- core, ops
    runtime <- core, ops, data                     (process group, logging, files, checkpoints)
    predict <- nn, data, runtime                   evaluate <- nn, data, runtime
    train <- loss, evaluate (never predict, experiments or prepare)
    prepare <- data, predict (drawing)             simulation <- ops, loss (no model, no data)
    experiments <- every stage                     uav_detr_icr <- core, ops, nn
    icr_yolo <- every stage of rtdetrv2_icr (the optional Ultralytics adapter; nothing imports it)

Every import (top level or inside a function) is read with `ast`, so a lazy import against the
direction fails too. The tools are not part of the library: nothing in it imports them.
"""

import ast
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BASE = {"core"}
# package -> packages it may import (besides itself)
ALLOWED = {
    "core": set(),
    "ops": {"core"},
    "nn": {"core", "ops"},
    "loss": {"core", "ops", "nn"},
    "data": {"core", "ops"},
    "runtime": {"core", "ops", "data"},
    "predict": {"core", "ops", "nn", "data", "runtime"},
    "evaluate": {"core", "ops", "nn", "data", "runtime"},
    "train": {"core", "ops", "nn", "loss", "data", "runtime", "evaluate"},
    "prepare": {"core", "ops", "data", "predict"},
    "experiments": {
        "core",
        "ops",
        "nn",
        "loss",
        "data",
        "runtime",
        "predict",
        "evaluate",
        "train",
        "prepare",
        "uav_detr_icr",
    },
    "simulation": {"core", "ops", "loss"},
    "uav_detr_icr": {"core", "ops", "nn"},
}
# the optional Ultralytics adapter sits above every stage of rtdetrv2_icr, experiments included
ALLOWED["icr_yolo"] = ALLOWED["experiments"] - {"uav_detr_icr"} | {"experiments"}
MAX_MODULES, MAX_LINES = 15, 3000


def _modules():
    for pkg in ("rtdetrv2_icr", "uav_detr_icr", "icr_yolo"):
        for root, _, files in os.walk(os.path.join(REPO, pkg)):
            for f in sorted(files):
                if f.endswith(".py"):
                    yield os.path.join(root, f)


def _package(path: str) -> str:
    rel = os.path.relpath(path, REPO).split(os.sep)
    if rel[0] in ("uav_detr_icr", "icr_yolo"):
        return rel[0]
    return rel[1] if len(rel) > 2 else "root"


def _imported_packages(path: str):
    """(line, package) of every project import in the file."""
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
            elif parts[0] in ("uav_detr_icr", "icr_yolo"):
                yield node.lineno, parts[0]
            elif parts[0] == "tools":
                yield node.lineno, "tools"


def _graph():
    edges = {}
    for path in _modules():
        own = _package(path)
        for line, pkg in _imported_packages(path):
            if pkg != own:
                edges.setdefault(own, {}).setdefault(pkg, []).append(
                    f"{os.path.relpath(path, REPO)}:{line}"
                )
    return edges


def test_imports_flow_one_way():
    bad = []
    for own, targets in _graph().items():
        if own == "root":  # the package __init__ registers the components
            continue
        for pkg, where in targets.items():
            if pkg not in ALLOWED[own]:
                bad.append(f"{where[0]} ({own}) imports {pkg}")
    assert not bad, "imports against the direction:\n" + "\n".join(bad)


def test_package_graph_is_acyclic():
    edges = {k: set(v) - {"root"} for k, v in _graph().items() if k != "root"}
    state = {}

    def visit(node, path):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import cycle: " + " -> ".join(path + [node])
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, path + [node])
        state[node] = "done"

    for node in sorted(edges):
        visit(node, [])


def test_every_package_is_known_and_small():
    sizes = {}
    for path in _modules():
        pkg = _package(path)
        n = sum(1 for _ in open(path, encoding="utf-8"))
        mods, lines = sizes.get(pkg, (0, 0))
        sizes[pkg] = (mods + (not path.endswith("__init__.py")), lines + n)
    assert set(sizes) - {"root"} <= set(ALLOWED), set(sizes) - set(ALLOWED)
    big = {p: s for p, s in sizes.items() if s[0] > MAX_MODULES or s[1] > MAX_LINES}
    assert not big, f"packages over {MAX_MODULES} modules or {MAX_LINES} lines: {big}"


def test_training_loads_no_deployment_or_experiment_code():
    """Importing the trainer must not pull in onnx, onnxruntime, PyAV, anything of predict/
    or the experiments, even indirectly (they are imported where they are used)."""
    code = (
        "import sys, rtdetrv2_icr, uav_detr_icr, rtdetrv2_icr.train.trainer\n"
        "lazy = ('rtdetrv2_icr.experiments', 'rtdetrv2_icr.prepare',\n"
        "        'rtdetrv2_icr.predict', 'rtdetrv2_icr.simulation')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'av')\n"
        "       or m.startswith(lazy)]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_tools_are_thin_and_tests_do_not_load_them():
    long = []
    for name in sorted(os.listdir(os.path.join(REPO, "tools"))):
        if name.endswith(".py"):
            n = sum(1 for _ in open(os.path.join(REPO, "tools", name), encoding="utf-8"))
            if n > 150:
                long.append(f"tools/{name}: {n} lines")
    assert not long, long
    loaders = []
    for name in sorted(os.listdir(os.path.join(REPO, "tests"))):
        if name.endswith(".py") and name != os.path.basename(__file__):
            text = open(os.path.join(REPO, "tests", name), encoding="utf-8").read()
            if "spec_from_file_location" in text or "runpy.run_path(os.path.join" in text:
                loaders.append(name)
    assert not loaders, f"tests loading a tool by path: {loaders}"
