"""Towers and the training model. Knows nothing of files or datasets."""

from remi_tf.models.retrieval import RetrievalModel, hard_readout
from remi_tf.models.sampling import make_sampler
from remi_tf.models.tower import UserTower, build_user_tower

__all__ = ["RetrievalModel", "UserTower", "build_user_tower", "hard_readout",
           "make_sampler"]
