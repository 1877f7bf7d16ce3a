"""remi-tf: REMI multi-interest candidate matching on TensorFlow Recommenders.

TFRS needs Keras 2 (the `tf-keras` package); TensorFlow picks its Keras
implementation when it is first imported, so the switch is set here, before
anything in this package touches TensorFlow. So is the default threshold of
TensorFlow's C++ logger, which it also reads once, when it loads: 3 (fatal
only), as on a CPU-only machine its errors are noise such as a failed CUDA
`cuInit`; a value the user set is kept. `remi_tf.cli` handles the rest of
the pipelines' logging and their `--verbose`.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
