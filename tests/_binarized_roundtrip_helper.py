"""Loads a saved .keras model in a fresh process and writes its predictions.

Usage: python tests/_binarized_roundtrip_helper.py MODEL.keras INPUTS.npy OUT.npy

Run by tests/test_binary_layers.py so that loading relies only on what
importing binarized.binary_layers registers, not on objects left in memory.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import binarized.binary_layers  # noqa: E402,F401  (registers the custom objects)


def main(model_path, inputs_path, out_path):
    model = keras.saving.load_model(model_path)
    x = np.load(inputs_path)
    np.save(out_path, keras.ops.convert_to_numpy(model(x, training=False)))


if __name__ == "__main__":
    main(*sys.argv[1:4])
