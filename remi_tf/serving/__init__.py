"""Serving: loads an export (never the training code) and answers HTTP
requests with raw item ids."""

from remi_tf.serving.app import create_app
from remi_tf.serving.artifacts import ModelFolderError, load_artifacts
from remi_tf.serving.recommender import Recommender, RequestError

__all__ = ["ModelFolderError", "Recommender", "RequestError", "create_app",
           "load_artifacts"]
