"""remi-tf: REMI multi-interest candidate matching on TensorFlow Recommenders.

TFRS needs Keras 2 (the `tf-keras` package); TensorFlow picks its Keras
implementation when it is first imported, so the switch is set here, before
anything in this package touches TensorFlow.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
