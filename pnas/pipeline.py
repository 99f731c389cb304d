"""Keras' own input pipeline for NumPy arrays, with tf.data's autotuning off.

`model.fit(x, y)` on arrays builds a tf.data pipeline with autotuning on.
When its iterator is deleted at the end of `fit` or `evaluate`, TensorFlow
waits for the autotuning thread's next wake-up: 0-8 s after a three-block
proxy child's epoch, measured, more than the epoch's training takes. The
same pipeline (Keras' `ArrayDataAdapter`: the same batches in the same
shuffled order) with autotuning off ends at once. On a
backend other than TensorFlow, or a Keras without that adapter, the arrays
are passed as they are.
"""

import keras


def _dataset(x, y, batch_size, shuffle):
    """Keras' tf.data pipeline of the arrays, autotuning off; None where there is none."""
    if keras.backend.backend() != "tensorflow":
        return None
    try:
        from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter
    except ImportError:  # another Keras: its own pipeline, autotuned
        return None
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    adapter = ArrayDataAdapter(x, y, batch_size=batch_size, shuffle=shuffle)
    # Its length is unknown to tf.data; told it, `fit` stops after the last batch as
    # with arrays. Left unknown, `fit` calls the train step once more per epoch, whose
    # failing read of the next batch still advances the optimizer's step count.
    length = tf.data.experimental.assert_cardinality(adapter.num_batches)
    return adapter.get_tf_dataset().apply(length).with_options(options)


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
