"""Keras without TensorFlow's start-up lines, for the scripts and entry points (train.py, bench/, -m tools).

Importing this module imports nothing heavy and changes nothing; a script
calls `import_keras_quietly()` before its first Keras or TensorFlow import.
"""

import logging
import os
import sys
import tempfile


def import_keras_quietly():
    """Imports Keras with TensorFlow's start-up lines kept off stderr.

    Sets TF_CPP_MIN_LOG_LEVEL to 3 unless the user set it (TensorFlow reads
    it at import). TensorFlow also logs through absl before it reads the
    level, so its oneDNN and CUDA notices reach stderr whatever the level, and
    would bury a script's one-line errors: stderr is captured during the
    import and shown only if the import fails.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
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
