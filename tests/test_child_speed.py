"""What the CPU speed-ups of child training keep: the same values, the same batches, one trace.

Speed itself is measured by bench/child_cost.py and bench/child_throughput.py, not here.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import fake_result, search_with, synthetic_dataset, tiny_config
from binarized.binary_ops import _straight_through, _unit_mask, binarize, binary_kernel, binary_tanh, scale_gradient
from pnas import report
from pnas.config import OPERATORS, expected_cost
from binarized.optimizers import FusedAdam
from pnas.manager import compile_child
from pnas.model import model_fn
from pnas.paths import ExperimentPaths
from pnas.pipeline import evaluate_arguments, fit_arguments
from pnas.runners import TAIL_PER_WORKER, ChildJob, start_order

SPECIAL = np.array([-np.inf, -2.0, -1.0, -0.5, -0.0, 0.0, 1e-30, 0.5, 1.0, 1.5, np.inf, np.nan], np.float32)


def _composed_sign(x):
    """binary_tanh as the composed straight-through form it replaced."""
    hard = tf.cast(tf.where(x >= 0.0, 1.0, -1.0), x.dtype)
    return _straight_through(x, hard, _unit_mask(x))


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_the_one_op_sign_matches_the_composed_form_bit_for_bit(graph):
    x = tf.constant(np.concatenate([SPECIAL, np.random.default_rng(0).normal(0, 2, 500).astype(np.float32)]))
    upstream = tf.constant(np.random.default_rng(1).normal(0, 1, x.shape).astype(np.float32))

    def value_and_grad(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return y, tape.gradient(y, x, output_gradients=upstream)

    if graph:
        value_and_grad = tf.function(value_and_grad)
    new, old = value_and_grad(binary_tanh), value_and_grad(_composed_sign)
    finite_or_nan = ~np.isinf(x.numpy())
    np.testing.assert_array_equal(new[0].numpy()[finite_or_nan].view(np.uint32),
                                  old[0].numpy()[finite_or_nan].view(np.uint32))
    np.testing.assert_array_equal(new[1].numpy().view(np.uint32), old[1].numpy().view(np.uint32))
    assert np.isnan(new[0].numpy()[11]), "a NaN activation must stay NaN (divergence shows)"
    # The composed form gave NaN for an infinite activation (inf - inf); the sign of ±inf is ±1.
    np.testing.assert_array_equal(new[0].numpy()[[0, 10]], [-1.0, 1.0])


def test_the_sign_keeps_no_graph_alive_and_differentiates_from_outside_a_function():
    """Every trace once registered a gradient that held its graph for good (tf.custom_gradient)."""
    from tensorflow.python.framework import ops as tf_ops

    x = tf.constant(np.random.default_rng(0).normal(0, 2, 64).astype(np.float32))
    weights = tf.range(64, dtype=tf.float32)
    expected = np.where(np.abs(x.numpy()) <= 1, weights.numpy(), 0)
    registered = len(tf_ops._gradient_registry.list())
    for _ in range(3):  # three traces, each with a tape inside, as Keras' train step
        @tf.function
        def inside(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.reduce_sum(binary_tanh(x) * weights)
            return tape.gradient(y, x)

        np.testing.assert_array_equal(inside(x).numpy(), expected)
    assert len(tf_ops._gradient_registry.list()) == registered

    forward = tf.function(lambda x: tf.reduce_sum(binary_tanh(x) * weights))
    with tf.GradientTape() as tape:  # the function's gradient is built symbolically, from the registry
        tape.watch(x)
        y = forward(x)
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), expected)


def _composed_kernel(w, h, multiplier):
    """binary_kernel as the composition it replaced in the binary layers."""
    return binarize(w if multiplier is None else scale_gradient(w, multiplier), h)


@pytest.mark.parametrize("mode", ["eager", "tape in a function", "function from outside"])
@pytest.mark.parametrize("kind", ["tensor", "tf.Variable", "keras.Variable"])
@pytest.mark.parametrize("h, multiplier", [(1.0, None), (0.0833, 12.0), (0.3, 0.5)])
def test_the_one_op_kernel_matches_the_composed_form_bit_for_bit(mode, kind, h, multiplier):
    values = np.concatenate([SPECIAL, np.random.default_rng(0).normal(0, 2 * h, 500).astype(np.float32)])
    upstream = tf.constant(np.random.default_rng(1).normal(0, 1, values.shape).astype(np.float32))
    make = {"tensor": tf.constant, "tf.Variable": tf.Variable, "keras.Variable": keras.Variable}[kind]

    def value_and_grad(fn):
        w = make(values)

        def forward(w):
            return fn(w, h, multiplier)

        if mode == "function from outside":  # the function's gradient comes from the registry
            forward = tf.function(forward)
        step = lambda: _tape(forward, w, upstream)
        return tf.function(step)() if mode == "tape in a function" else step()

    new, old = value_and_grad(binary_kernel), value_and_grad(_composed_kernel)
    # A latent kernel is clipped to [-H, H]: never infinite (scale_gradient made ±inf NaN).
    finite_or_nan = ~np.isinf(values)
    np.testing.assert_array_equal(new[0].numpy()[finite_or_nan].view(np.uint32),
                                  old[0].numpy()[finite_or_nan].view(np.uint32))
    np.testing.assert_array_equal(new[1].numpy().view(np.uint32), old[1].numpy().view(np.uint32))
    assert np.isin(new[0].numpy()[np.isfinite(values)], np.float32([h, -h])).all()
    assert np.isnan(new[0].numpy()[np.isnan(values)]).all()


def _tape(forward, w, upstream):
    with tf.GradientTape() as tape:
        if isinstance(w, tf.Tensor):
            tape.watch(w)
        y = forward(w)
    return y, tape.gradient(y, w, output_gradients=upstream)


def _tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    model, _ = model_fn([0, "3x3 sep-bconv", 0, "3x3 bconv"], num_cells=1, num_cell_filters=[4], dense_layers=[10])
    return model


def _weights(model):
    return np.concatenate([w.numpy().ravel() for w in model.weights])


@pytest.mark.slow  # two Keras trainings
def test_the_pipeline_trains_exactly_as_fit_on_arrays():
    """The same batches, the same steps (no extra step at an epoch's end), the same weights.

    In order: Keras' own array pipeline repeats its first order at every epoch under a
    global seed, this one draws a new one (pnas/pipeline.py, and the test below).
    """
    x, y = synthetic_dataset(n_train=100)[:2]  # 3 full batches of 32 and a partial one of 4
    weights = []
    for pipeline in (False, True):
        keras.backend.clear_session()
        model = _tiny_model()
        compile_child(model, 2, len(x), 32)
        data = fit_arguments(x, y, 32, shuffle=False) if pipeline else dict(x=x, y=y, batch_size=32, shuffle=False)
        model.fit(**data, epochs=2, verbose=0)
        assert int(model.optimizer.iterations) == 8
        weights.append(_weights(model))
    np.testing.assert_array_equal(weights[0], weights[1])


def _orders_fit_sees(x, y, epochs, seed):
    """The images in the order `fit` on the pipeline feeds them, per epoch, and the batch sizes."""
    seen = []

    class Record(keras.layers.Layer):
        def call(self, inputs):
            tf.py_function(lambda v: seen.append(v.numpy()[:, 0].copy()), [inputs], [])
            return inputs

    inputs = keras.Input((1,))
    model = keras.Model(inputs, keras.layers.Dense(1)(Record()(inputs)))
    model.compile("sgd", "mse")
    keras.utils.set_random_seed(seed)
    model.fit(**fit_arguments(x, y, 32), epochs=epochs, verbose=0)
    sizes = [len(batch) for batch in seen]
    per_epoch = len(sizes) // epochs
    return [np.concatenate(seen[e * per_epoch:(e + 1) * per_epoch]) for e in range(epochs)], sizes


def test_fit_on_the_pipeline_sees_every_image_once_per_epoch_in_a_new_order():
    x = np.arange(100, dtype=np.float32).reshape(100, 1)
    y = -x
    assert int(fit_arguments(x, y, 32)["x"].cardinality()) == 4
    orders, sizes = _orders_fit_sees(x, y, 3, seed=5)
    assert sizes == [32, 32, 32, 4] * 3
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), x.ravel())
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    again, _ = _orders_fit_sees(x, y, 3, seed=5)
    np.testing.assert_array_equal(np.concatenate(again), np.concatenate(orders))
    batches = list(evaluate_arguments(x, y, 32)["x"])
    np.testing.assert_array_equal(np.concatenate([bx.numpy().ravel() for bx, _ in batches]), x.ravel())
    np.testing.assert_array_equal(np.concatenate([by.numpy().ravel() for _, by in batches]), y.ravel())


def test_the_pipeline_evaluates_as_evaluate_on_arrays():
    x, y = synthetic_dataset(n_val=70)[2:4]
    model = _tiny_model()
    compile_child(model, 1, 70, 32)
    np.testing.assert_allclose(model.evaluate(**evaluate_arguments(x, y, 32), verbose=0),
                               model.evaluate(x, y, batch_size=32, verbose=0), rtol=1e-6)


@pytest.mark.slow  # a Keras training
def test_a_child_traces_its_train_step_once():
    """Metrics built inside the first trace would make TensorFlow trace the whole step twice."""
    x, y = synthetic_dataset(n_train=70)[:2]
    model = _tiny_model()
    compile_child(model, 1, len(x), 32)
    traces = []
    step = model.train_step

    def counted(data):
        traces.append(1)
        return step(data)

    model.train_step = counted
    model.fit(**fit_arguments(x, y, 32), epochs=1, verbose=0)  # a partial last batch too
    assert len(traces) == 1


@pytest.mark.slow  # a Keras training of two epochs
def test_validation_and_test_share_one_traced_function(tmp_path):
    """Every validation and the test pass run Keras' one test function: traced once, whatever the batch count."""
    from pnas.manager import NetworkManager

    traces = []

    def counting_model_fn(*args, **kwargs):
        model, mul_ops = model_fn(*args, **kwargs)
        step = model.test_step

        def counted(data):
            traces.append(1)
            return step(data)

        model.test_step = counted
        return model, mul_ops

    dataset = synthetic_dataset(n_train=64, n_val=90, n_test=50)
    manager = NetworkManager(dataset, str(tmp_path), epochs=2, batchsize=32, verbose=0, evaluate_test=True)
    result = manager.train_child(counting_model_fn, [0, "3x3 bconv", 0, "3x3 maxpool"], 1, [4], [10])
    assert len(result["val_accuracy"]) == 2 and result["test_accuracy"] is not None
    assert len(traces) == 1


@pytest.mark.parametrize("amsgrad", [True, False])
def test_the_fused_adam_follows_keras_adam(amsgrad):
    rng = np.random.default_rng(0)
    start = [rng.normal(0, 1, (5, 3)).astype(np.float32), rng.normal(0, 1, (4,)).astype(np.float32)]
    grads = [[rng.normal(0, 1, w.shape).astype(np.float32) for w in start] for _ in range(20)]
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=19, decay_rate=0.1)
    results, optimizers = [], []
    for kind in (keras.optimizers.Adam, FusedAdam):
        variables = [keras.Variable(w) for w in start]
        optimizer = kind(schedule, amsgrad=amsgrad)
        step = tf.function(lambda g: optimizer.apply(g, variables))
        for g in grads:
            step([tf.constant(x) for x in g])
        results.append([v.numpy() for v in variables])
        optimizers.append(optimizer)
    for fused, plain, first in zip(results[1], results[0], start):
        np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-6)
        assert not np.array_equal(fused, first)
    # The same slots in the same order, so that the state of one fits the other.
    plain, fused = optimizers
    assert [v.shape for v in fused.variables] == [v.shape for v in plain.variables]
    for a, b in zip(fused.variables, plain.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    config = fused.get_config()
    assert {k: v for k, v in config.items() if k != "name"} == {k: v for k, v in plain.get_config().items() if k != "name"}


@pytest.mark.slow  # a Keras training, a saved model and a fresh Python
def test_a_saved_child_loads_without_pnas(tmp_path):
    """The saved optimizer is the registered FusedAdam, with its state; the binary layers' import registers it."""
    import subprocess
    import sys

    from conftest import REPO_ROOT, cli_env

    model = _tiny_model()
    compile_child(model, 1, 32, 32)
    x, y = synthetic_dataset(n_train=32)[:2]
    model.fit(**fit_arguments(x, y, 32), verbose=0)
    path = tmp_path / "child.keras"
    model.save(path)
    np.save(tmp_path / "slots.npy", np.concatenate([v.numpy().ravel() for v in model.optimizer.variables]))
    script = (
        "import sys, keras, numpy as np\n"
        "import binarized.binary_layers\n"
        "model = keras.saving.load_model(sys.argv[1])\n"
        "assert not [m for m in sys.modules if m == 'pnas' or m.startswith('pnas.')]\n"
        "slots = np.concatenate([v.numpy().ravel() for v in model.optimizer.variables])\n"
        "np.testing.assert_array_equal(slots, np.load(sys.argv[2]))\n"
        "print(type(model.optimizer).__name__, int(model.optimizer.iterations))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "slots.npy")],
                            cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["FusedAdam", "1"]


def test_side_by_side_workers_start_a_stages_last_children_costliest_first():
    def job(sr_no, *ops):
        actions = tuple(a for op in ops for a in (0, op))
        return ChildJob(sr_no, 1, (), actions, 0)

    cheap, dear = ("3x3 maxpool", "linear"), ("1x7-7x1 bconv", "5x5 sep-bconv")
    head = [job(n, *(dear if n % 2 else cheap)) for n in range(1, 11)]
    tail = [job(11, *cheap), job(12, *dear), job(13, "3x3 bconv", "linear"), job(14, "3x3 sep-bconv", "3x3 sep-bconv"),
            job(15, *cheap), job(16, *dear), job(17, *cheap), job(18, "3x3 bconv", "3x3 bconv")]
    jobs = head + tail
    assert len(tail) == TAIL_PER_WORKER * 2
    order = [j.sr_no for j in start_order(jobs, 2)]
    assert order[:10] == list(range(1, 11)), "the beam's order until its tail"
    assert order[10:] == [12, 16, 14, 18, 13, 11, 15, 17]
    assert [j.sr_no for j in start_order(jobs, 1)] == list(range(1, 19))
    assert [j.sr_no for j in start_order(tail[:3], 2)] == [12, 13, 11]
    assert all(expected_cost([0, op]) > 0 for op in OPERATORS)


@pytest.mark.slow  # a whole (simulated) search and its plots
def test_the_summary_shows_how_idle_the_workers_were(tmp_path):
    config = tiny_config(B=2, K_=2)
    paths = ExperimentPaths("idle", root=str(tmp_path))
    search_with(lambda search, child, sr_no: dict(fake_result(child), seconds=1.0), config,
                synthetic_dataset(), paths).run()
    with open(paths.state) as f:
        worker_time = json.load(f)["worker_time"]
    assert set(worker_time) == {"1", "2"}
    for stage in worker_time.values():
        assert stage["slots"] == 1 and stage["busy_seconds"] > 0 and stage["wall_seconds"] > 0
    text = report.report("idle", root=str(tmp_path))
    assert "Workers: 1 side by side, idle " in text and "(b = 1 " in text and ", b = 2 " in text


def test_the_idle_line_on_constructed_stages():
    line = report.idle_line({"1": {"slots": 2, "wall_seconds": 100.0, "busy_seconds": 150.0},
                             "2": {"slots": 2, "wall_seconds": 50.0, "busy_seconds": 100.0}})
    assert line == "Workers: 2 side by side, idle 17% of the time they had children to train (b = 1 25%, b = 2 0%)"
    assert report.idle_line({}) is None and report.idle_line(None) is None
