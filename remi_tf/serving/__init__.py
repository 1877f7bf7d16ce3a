"""Serving: loads an export (never the training code) and answers HTTP
requests with raw item ids."""

from remi_tf.layout import ModelFolderError
from remi_tf.serving.app import create_app
from remi_tf.serving.batching import DEFAULT_MAX_BATCH, RequestBatcher
from remi_tf.serving.artifacts import load_artifacts
from remi_tf.serving.recommender import (MAX_EXCLUDE, Recommender,
                                         RequestError)
from remi_tf.serving.reload import DEFAULT_POLL_SECONDS, ServedModel

__all__ = ["DEFAULT_MAX_BATCH", "DEFAULT_POLL_SECONDS", "MAX_EXCLUDE",
           "ModelFolderError", "Recommender", "RequestBatcher",
           "RequestError", "ServedModel", "create_app", "load_artifacts"]
