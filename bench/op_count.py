"""Graph ops of a child's traced train step and forward pass, per layer kind and op type.

Op counts are deterministic (they do not depend on the machine's load), and the time to trace
a child's train step follows them. It traces, for the B=3 child of bench/child_cost.py (or
another), the train step as `fit` traces it (`model.train_step` in a `tf.function`, compiled
by `pnas.manager.compile_child`) and the training-mode forward pass, and prints the op count
of each: the total, and split by the kind of layer whose name scope holds the op (the
gradient ops of a layer count under its kind, the optimizer's under "optimizer").

    python bench/op_count.py [--child B=3] [--float-twin] [--types 12]
"""

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILDREN = {
    "B=1": [0, "3x3 sep-bconv", 0, "3x3 bconv"],
    "B=3": [0, "3x3 sep-bconv", 0, "5x5 sep-bconv", 0, "1x7-7x1 bconv", 0, "3x3 bconv",
            0, "3x3 bconv", 0, "3x3 sep-bconv"],
}
NUM_CELLS, NUM_CELL_FILTERS, DENSE_LAYERS, BATCH = 3, [16, 24, 32], [32, 10], 128


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", default="B=3", choices=sorted(CHILDREN))
    parser.add_argument("--float-twin", action="store_true", help="count the float twin's graph")
    parser.add_argument("--types", type=int, default=12, help="show this many most common op types")
    return parser.parse_args(argv)


def graph_ops(concrete):
    """Every op of a concrete function's graph, those of the functions it calls included."""
    graph_def = concrete.graph.as_graph_def()
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return nodes


def layer_kinds(model):
    """Layer name -> the kind it is counted under (its class, the sign named as such)."""
    kinds = {}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Activation":
            kind = f"Activation({getattr(layer.activation, '__name__', layer.activation)})"
        kinds[layer.name] = kind
    return kinds


def by_kind(nodes, kinds):
    """Op counts by layer kind: the kind of the longest layer name that is a scope of the op's name."""
    names = sorted(kinds, key=len, reverse=True)
    counts = collections.Counter()
    for node in nodes:
        parts = set(node.name.split("/"))
        for name in names:
            # Keras 3 scopes a layer's ops as NAME or NAME_1, ... (one per call or trace).
            if name in parts or any(p.startswith(name + "_") and p[len(name) + 1:].isdigit() for p in parts):
                counts[kinds[name]] += 1
                break
        else:
            counts["optimizer" if "optimizer" in node.name.lower() or "adam" in node.name.lower() else "other"] += 1
    return counts


def count(model):
    """{'train step': nodes, 'forward': nodes} of a compiled model."""
    import tensorflow as tf

    x_spec = tf.TensorSpec((BATCH, *model.input_shape[1:]), tf.float32)
    y_spec = tf.TensorSpec((BATCH, *model.output_shape[1:]), tf.float32)
    step = tf.function(model.train_step).get_concrete_function((x_spec, y_spec))
    forward = tf.function(lambda x: model(x, training=True)).get_concrete_function(x_spec)
    return {"train step": graph_ops(step), "forward": graph_ops(forward)}


def main(args):
    import keras

    from pnas.manager import compile_child
    from pnas.model import model_fn

    keras.utils.set_random_seed(0)
    model, _ = model_fn(CHILDREN[args.child], NUM_CELLS, NUM_CELL_FILTERS, DENSE_LAYERS, float_twin=args.float_twin)
    compile_child(model, 1, 5000, BATCH)
    kinds = layer_kinds(model)
    layers = collections.Counter(kinds.values())
    print(f"{args.child} {'float twin' if args.float_twin else 'binary'} child: {len(model.layers)} layers, "
          f"batch {BATCH}, keras {keras.__version__}")
    graphs = count(model)
    split = {name: by_kind(nodes, kinds) for name, nodes in graphs.items()}
    print(f"{'layer kind':34} {'layers':>6} {'forward':>8} {'per layer':>9} {'train step':>10} {'per layer':>9}")
    rows = sorted(set(split["forward"]) | set(split["train step"]), key=lambda k: -split["train step"][k])
    for kind in rows:
        n = layers.get(kind, 0)
        f, t = split["forward"][kind], split["train step"][kind]
        per = (lambda c: f"{c / n:9.1f}") if n else (lambda c: f"{'':9}")
        print(f"{kind:34} {n or '':>6} {f:8} {per(f)} {t:10} {per(t)}")
    print(f"{'total':34} {len(model.layers):6} {len(graphs['forward']):8} {'':9} {len(graphs['train step']):10}")
    for name, nodes in graphs.items():
        types = collections.Counter(node.op for node in nodes).most_common(args.types)
        print(f"{name} op types: " + ", ".join(f"{op} {n}" for op, n in types))


if __name__ == "__main__":
    ARGS = parse_args()  # --help and a bad flag answer before TensorFlow is imported
    from binarized.quiet import import_keras_quietly

    import_keras_quietly()
    main(ARGS)
