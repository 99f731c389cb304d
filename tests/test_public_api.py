"""The package uses Keras through its public API only (docs/STYLE: no keras.src, no replaced methods).

A Keras upgrade may move or change anything private without notice: an import of
`keras.src`, or a method of a Keras object replaced by assignment, breaks silently.
These tests read the source (no import of it) of every module of the package and its
scripts.
"""

import ast
import pathlib

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = sorted([ROOT / "train.py"] + [p for folder in ("binarized", "mnist", "pnas") for p in (ROOT / folder).rglob("*.py")])
# The benches too may not import keras.src (bench/child_cost.py times phases by wrapping methods: a harness).
SOURCES = PACKAGE + sorted((ROOT / "bench").rglob("*.py"))
# The Keras classes whose instances the package makes or receives.
KERAS_CLASSES = (keras.Model, keras.layers.Layer, keras.optimizers.Optimizer, keras.callbacks.Callback,
                 keras.losses.Loss, keras.metrics.Metric, keras.Variable, keras.constraints.Constraint,
                 keras.optimizers.schedules.LearningRateSchedule, keras.random.SeedGenerator)
METHODS = {name for cls in KERAS_CLASSES for name in dir(cls)
           if callable(getattr(cls, name, None)) and not isinstance(getattr(cls, name, None), type)}


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def _private_keras_imports(tree):
    """`import keras.src...`, `from keras.src... import`, `from keras import src`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name == "keras.src" or a.name.startswith("keras.src.")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "keras.src" or node.module.startswith("keras.src."):
                found.append(node.module)
            elif node.module == "keras" and any(a.name == "src" for a in node.names):
                found.append("keras.src")
    return found


def _replaced_methods(tree):
    """Functions assigned to an attribute named as a method of a Keras class (`obj.apply = f`, setattr).

    A function is a lambda, a name the module binds with `def`, or a `functools.partial`;
    `self.loss = loss` (a setting) or `self.summary = path` are not methods replaced.
    """
    functions = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}

    def is_function(value):
        if isinstance(value, ast.Lambda):
            return True
        if isinstance(value, ast.Name):
            return value.id in functions
        return isinstance(value, ast.Call) and ast.unparse(value.func) in ("partial", "functools.partial")

    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and is_function(node.value):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Attribute) and target.attr in METHODS:
                    found.append(f"line {node.lineno}: {ast.unparse(target)} = {ast.unparse(node.value)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
              and len(node.args) == 3 and isinstance(node.args[1], ast.Constant) and node.args[1].value in METHODS
              and is_function(node.args[2])):
            found.append(f"line {node.lineno}: setattr(..., {node.args[1].value!r}, ...)")
    return found


def _tree(path):
    return ast.parse(path.read_text(), filename=str(path))


def test_the_sources_are_found():
    names = set(_ids(SOURCES))
    assert {"train.py", "pnas/manager.py", "pnas/pipeline.py", "binarized/binary_ops.py",
            "binarized/optimizers.py", "mnist/mnist_data.py"} <= names
    assert {"apply", "update_step", "train_step", "call", "build"} <= METHODS


@pytest.mark.parametrize("path", SOURCES, ids=_ids(SOURCES))
def test_no_private_keras_module_is_imported(path):
    assert _private_keras_imports(_tree(path)) == []


@pytest.mark.parametrize("path", PACKAGE, ids=_ids(PACKAGE))
def test_no_method_of_a_keras_object_is_replaced(path):
    assert _replaced_methods(_tree(path)) == []


def test_the_checks_catch_what_they_look_for():
    """The two removed hooks, as they were written, are caught (a check that cannot fail is a defect)."""
    old = ast.parse(
        "from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter\n"
        "import keras.src.backend as b\n"
        "from keras import src\n"
        "def fuse_adam(optimizer):\n"
        "    def apply_step(*args):\n"
        "        pass\n"
        "    def update_step(gradient, variable, learning_rate):\n"
        "        pass\n"
        "    optimizer.apply = apply_step\n"
        "    optimizer.update_step = update_step\n"
        "model.train_step = lambda data: data\n"
        "setattr(layer, 'call', fuse_adam)\n"
    )
    assert _private_keras_imports(old) == ["keras.src.trainers.data_adapters.array_data_adapter",
                                           "keras.src.backend", "keras.src"]
    assert sorted(int(f.split(":")[0][5:]) for f in _replaced_methods(old)) == [9, 10, 11, 12]
    fine = ast.parse("def loss():\n    pass\nlayer.momentum = 0.0\nself.summary = os.path.join(a, b)\n"
                     "self.loss = LOSSES[name]\nself.kernel = self.add_weight(name='k')\n")
    assert _replaced_methods(fine) == []
