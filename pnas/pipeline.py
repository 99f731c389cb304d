"""A tf.data pipeline of NumPy arrays for `fit` and `evaluate`, with tf.data's autotuning off.

`model.fit(x, y)` on arrays builds a tf.data pipeline with autotuning on.
When its iterator is deleted at the end of `fit` or `evaluate`, TensorFlow
waits for the autotuning thread's next wake-up: 0-8 s after a three-block
proxy child's epoch, measured, more than the epoch's training takes. This
module builds a pipeline of the same kind from public tf.data, with
autotuning off, which ends at once: the indices shuffled, cut into batches
(the last one partial), each batch gathered from the arrays.

It differs from Keras' own in one respect: it draws a new order every epoch.
Keras' array pipeline (Keras 3.15, TensorFlow 2.21) draws its permutation
with `tf.random.shuffle` in a function that every epoch's new iterator
re-creates with the same seeds, so after `keras.utils.set_random_seed` (as
every child is seeded) each epoch repeats the first one's order. The orders
differ, so the weights differ from `fit(x, y)`'s; given the same orders,
`fit` on this pipeline trains to the same weights bit for bit
(tests/test_child_speed.py). On a backend other than TensorFlow the arrays
are passed as they are.
"""

import keras
import numpy as np


def _dataset(x, y, batch_size, shuffle):
    """The arrays as a tf.data pipeline of `(x, y)` batches, autotuning off; None off TensorFlow."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    indices = tf.data.Dataset.range(len(x))
    if shuffle:
        # A new order at every iteration, i.e. every epoch of `fit` (which makes a new
        # iterator per epoch). Its seed is drawn from NumPy's global generator, which
        # `keras.utils.set_random_seed` seeds: left to TensorFlow, the op's seed would come
        # from a counter of the random ops the process made before, so the same seeded child
        # would see other orders in a fresh worker and in a process that trained others.
        seed = int(np.random.randint(2**31 - 1))
        indices = indices.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    # The arrays enter once, as one element repeated, not as constants of the map's graph.
    arrays = tf.data.Dataset.from_tensors((tf.convert_to_tensor(x), tf.convert_to_tensor(y))).repeat()

    def gather(batch, arrays):
        return tuple(tf.gather(a, batch, axis=0) for a in arrays)

    options = tf.data.Options()
    options.autotune.enabled = False
    # Its length is known (the batches of a range: the infinite repeat is the shorter's
    # partner in the zip), so `fit` stops after the last batch as with arrays; left unknown,
    # `fit` would call the train step once more per epoch, whose failing read still
    # advanced the optimizer's step count.
    return tf.data.Dataset.zip(indices.batch(batch_size), arrays).map(gather).prefetch(1).with_options(options)


def fit_arguments(x, y, batch_size, shuffle=True):
    """`model.fit(**fit_arguments(x, y, batch_size), epochs=...)` trains as `fit(x, y, batch_size)` does."""
    dataset = _dataset(x, y, batch_size, shuffle)
    if dataset is None:
        return dict(x=x, y=y, batch_size=batch_size, shuffle=shuffle)
    return dict(x=dataset, shuffle=False)  # the pipeline shuffles (or not) by itself


def evaluate_arguments(x, y, batch_size):
    """`model.evaluate(**evaluate_arguments(x, y, batch_size))` evaluates as `evaluate(x, y, batch_size)` does."""
    dataset = _dataset(x, y, batch_size, shuffle=False)
    if dataset is None:
        return dict(x=x, y=y, batch_size=batch_size)
    return dict(x=dataset)
