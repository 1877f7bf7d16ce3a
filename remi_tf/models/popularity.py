"""The Pop baseline in the tower interface: one constant interest whose dot
product with an item's one-dimensional "embedding", its reversed popularity
rank, ranks the most popular items first for every user."""

import numpy as np
import tensorflow as tf


class PopularityTower(tf.keras.Model):
  """Recommends the most popular items, whatever the history.

  Args:
    item_ranking: int [N], the item ids 1..N, most popular first (the
      training split's, e.g. `UserSequences.items_by_popularity`). Scores
      are ranks rather than counts so that ties in count keep this order
      instead of falling back on item ids, which are ordered by counts over
      the whole log, test users included.
  """

  def __init__(self, item_ranking: np.ndarray, **kwargs):
    super().__init__(**kwargs)
    item_ranking = np.asarray(item_ranking)
    num_items = len(item_ranking)
    if not np.array_equal(np.sort(item_ranking), np.arange(1, num_items + 1)):
      raise ValueError("item_ranking must hold each item id 1..N once")
    scores = np.zeros([num_items + 1, 1], np.float32)
    scores[item_ranking, 0] = np.arange(num_items, 0, -1)
    self.item_embedding = tf.keras.layers.Embedding(
        num_items + 1, 1, trainable=False, name="item_embeddings",
        embeddings_initializer=tf.keras.initializers.Constant(scores))
    self.item_embedding.build(None)

  def call(self, history: tf.Tensor, times=None, training=False):
    """history int [B, n] -> interests float [B, 1, 1], routing [B, 1, n]
    (the times are not read)."""
    mask = tf.cast(history > 0, tf.float32)
    weights = mask / tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)
    return {"interests": tf.ones([tf.shape(history)[0], 1, 1]),
            "routing": weights[:, None, :]}

  def item_table(self) -> tf.Tensor:
    """float [N + 1, 1]: N for the most popular item down to 1; 0 for
    padding."""
    return self.item_embedding.embeddings
