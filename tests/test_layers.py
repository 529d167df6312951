"""The package's floors (README "Architecture"): a module imports only from
its own floor or below, lazy imports inside functions included."""

import ast
import os

import efficientlab_tf

PACKAGE = os.path.dirname(efficientlab_tf.__file__)

# Lowest first. Same-floor imports are allowed.
FLOORS = [
    {"config", "storage", "resources", "workdir", "shipped"},
    {"model", "pretrained", "meta"},   # the network and its weights; meta-learning
    {"data"},                          # (reads model's constants: IGNORE_LABEL)
    {"evaluation", "export", "segmentation", "distribute", "hard_tasks",
     "summaries"},
    {"experiment", "training", "preflight"},
    {"runners"},
    {"cli", "api"},                    # the entry points: command line, Python
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def _imports(path):
    """Top-level package parts this file imports (efficientlab_tf.<part>)."""
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "efficientlab_tf":
                if len(parts) > 1:
                    yield parts[1], node.lineno
                else:  # from efficientlab_tf import x
                    for alias in node.names:
                        yield alias.name, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "efficientlab_tf" and len(parts) > 1:
                    yield parts[1], node.lineno


def test_no_import_runs_up_a_floor():
    wrong, unplaced = [], set()
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, PACKAGE)
            own = rel.split(os.sep)[0].removesuffix(".py")
            if own == "__init__":
                continue
            if own not in FLOOR:
                unplaced.add(own)
                continue
            for part, line in _imports(path):
                if part not in FLOOR:
                    unplaced.add(part)
                elif FLOOR[part] > FLOOR[own]:
                    wrong.append(f"{rel}:{line} imports {part} (floor "
                                 f"{FLOOR[part]} > {FLOOR[own]})")
    assert not unplaced, f"modules on no floor: {sorted(unplaced)}"
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_lazy_upward_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from efficientlab_tf.runners import train\n")
    assert list(_imports(str(path))) == [("runners", 2)]
