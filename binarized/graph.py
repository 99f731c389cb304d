"""The layer graph of a functional Keras model, and the sign activations in it.

Duck-typed (no Keras import), for the exporter (`binarized.export`) and the
footprint count (`pnas.footprint`), which both walk a child's layers.
"""


def layer_graph(model):
    """Parents and children of every layer, by name.

    Every layer of a child is called once, so its `output` identifies it.

    Returns:
        (parents, children): `{name: [names]}` each. A parent is None where
        the layer reads a tensor that no layer of the model produces; an
        InputLayer has no parents.
    """
    producer = {id(layer.output): layer.name for layer in model.layers}
    parents, children = {}, {layer.name: [] for layer in model.layers}
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            parents[layer.name] = []
            continue
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        parents[layer.name] = [producer.get(id(tensor)) for tensor in inputs]
        for name in parents[layer.name]:
            if name is not None:
                children[name].append(layer.name)
    return parents, children


def is_sign(layer):
    """Whether `layer` is the sign activation (`binarized.binary_ops.binary_tanh`), whose output is ±1."""
    return type(layer).__name__ == "Activation" and getattr(layer.activation, "__name__", "") == "binary_tanh"
