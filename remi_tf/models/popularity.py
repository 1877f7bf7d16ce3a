"""The Pop baseline in the tower interface: one constant interest whose dot
product with an item's one-dimensional "embedding", its log popularity, ranks
the most popular items first for every user."""

import numpy as np
import tensorflow as tf


class PopularityTower(tf.keras.Model):
  """Recommends the most popular items, whatever the history.

  Args:
    item_counts: int [N + 1], interaction counts by item id (0 = padding).
  """

  def __init__(self, item_counts: np.ndarray, **kwargs):
    super().__init__(**kwargs)
    self.item_embedding = tf.keras.layers.Embedding(
        len(item_counts), 1, trainable=False, name="item_embeddings",
        embeddings_initializer=tf.keras.initializers.Constant(
            np.log1p(np.asarray(item_counts, np.float32))[:, None]))
    self.item_embedding.build(None)

  def call(self, history: tf.Tensor, training=False):
    """history int [B, n] -> interests float [B, 1, 1], routing [B, 1, n]."""
    mask = tf.cast(history > 0, tf.float32)
    weights = mask / tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)
    return {"interests": tf.ones([tf.shape(history)[0], 1, 1]),
            "routing": weights[:, None, :]}

  def item_table(self) -> tf.Tensor:
    """float [N + 1, 1], log(1 + count) of each item id."""
    return self.item_embedding.embeddings
