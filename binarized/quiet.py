"""Keras without TensorFlow's start-up lines, for the scripts and entry points (train.py, bench/, -m tools).

Importing this module imports nothing heavy and changes nothing; a script
calls `import_keras_quietly()` before its first Keras or TensorFlow import.
"""

import logging
import os
import platform
import sys
import tempfile


def tensorflow_environment():
    """The environment variables the scripts set for TensorFlow, unless the user set them.

    TF_CPP_MIN_LOG_LEVEL=3: no C++ log lines. TF_ENABLE_ONEDNN_OPTS=1 on x86:
    TensorFlow's oneDNN kernels, which it turns on by itself only on some
    Intel CPUs; on a 2-core AMD EPYC they train a three-block child 1.3-1.5x
    faster (docs/benchmarks.md).
    """
    env = {"TF_CPP_MIN_LOG_LEVEL": "3"}
    if platform.machine().lower() in ("x86_64", "amd64"):
        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return env


def import_keras_quietly():
    """Imports Keras with TensorFlow's start-up lines kept off stderr.

    Sets `tensorflow_environment()` where the user has not (TensorFlow reads
    it at import). TensorFlow also logs through absl before it reads the
    level, so its oneDNN and CUDA notices reach stderr whatever the level, and
    would bury a script's one-line errors: stderr is captured during the
    import and shown only if the import fails.
    """
    for name, value in tensorflow_environment().items():
        os.environ.setdefault(name, value)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    # TensorFlow's Python warnings (e.g. about retracing the encoder's predict
    # function for each new encoder) are not the user's to act on.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
