"""The user tower: item embeddings (shared with the candidates) and a
multi-interest encoder."""

from typing import Optional

import numpy as np
import tensorflow as tf

from remi_tf import config
from remi_tf.models import capsule, pimirec, popularity, positions, re4
from remi_tf.models import self_attentive, single_interest, umi
from remi_tf.vocabulary import NO_TIME


class UserTower(tf.keras.Model):
  """History of item ids (and their times) -> interests and routing.

  Args:
    num_items: N; the embedding table has N + 1 rows, row 0 padding.
    encoder: a layer (history embeddings [B, n, d], mask [B, n]) ->
      (interests [B, K, d], routing [B, K, n]); an encoder whose
      `uses_times` is True also takes the history's times, int64 [B, n].
    embedding_dim: d.
    embedding_init: "glorot" (Glorot-normal over N + d, the original
      ComiRec code) or "he" (N(0, 2/d), the REMI reference code).
  """

  def __init__(self, num_items: int, encoder: tf.keras.layers.Layer,
               embedding_dim: int, embedding_init: str = "glorot", **kwargs):
    super().__init__(**kwargs)
    initializers = {
        "he": tf.keras.initializers.RandomNormal(
            stddev=(2.0 / embedding_dim)**0.5),
        "glorot": tf.keras.initializers.GlorotNormal(),
    }
    if embedding_init not in initializers:
      raise ValueError(f"unknown embedding init {embedding_init!r}; choose "
                       f"one of {', '.join(config.EMBEDDING_INITS)}")
    self.item_embedding = tf.keras.layers.Embedding(
        num_items + 1, embedding_dim, name="item_embeddings",
        embeddings_initializer=initializers[embedding_init])
    self.encoder = encoder

  @property
  def uses_times(self) -> bool:
    """Whether the encoder reads the history's times."""
    return getattr(self.encoder, "uses_times", False)

  def call(self, history: tf.Tensor, times=None, training=False):
    """history int [B, n], 0 = padding; times int [B, n], each item's time
    in seconds (negative: not known), or None (no time information). Only
    an encoder that `uses_times` reads the times.

    Returns:
      {"interests": float [B, K, d], "routing": float [B, K, n]}; padding
      positions change neither.
    """
    mask = tf.cast(history > 0, tf.float32)
    embedded = self.embed_history(history)
    if not self.uses_times:
      interests, routing = self.encoder(embedded, mask)
    else:
      if times is None:
        times = tf.fill(tf.shape(history), tf.constant(NO_TIME, tf.int64))
      interests, routing = self.encoder(embedded, mask,
                                        tf.cast(times, tf.int64))
    return {"interests": interests, "routing": routing}

  def embed_history(self, history: tf.Tensor) -> tf.Tensor:
    """history int [B, n] -> float [B, n, d], zero at padding.

    Only the real positions are looked up: each padding row would add a row
    to the item table's sparse gradient, which the optimizer then sums and
    applies (over a third of a Gowalla batch's positions are padding).
    Under a `MultiWorkerMirroredStrategy` the whole history is looked up
    and its padding zeroed: that strategy all-gathers the sparse gradient
    across workers, which fails when the workers' row counts differ
    (TF 2.20: "Shape mismatch in the collective instance").
    """
    if isinstance(tf.distribute.get_strategy(),
                  tf.distribute.MultiWorkerMirroredStrategy):
      return self.item_embedding(history) * tf.cast(
          history > 0, tf.float32)[..., None]
    real = positions.RealPositions(history > 0)
    return real.expand(self.item_embedding(real.compact(history)))

  def item_table(self) -> tf.Tensor:
    """float [N + 1, d], every item's embedding (row 0 padding)."""
    return self.item_embedding.embeddings


def build_user_tower(model_config: config.ModelConfig, num_items: int,
                     item_ranking: Optional[np.ndarray] = None
                     ) -> tf.keras.Model:
  """The tower named by `model_config.model`.

  Args:
    model_config: model name, K, d and n.
    num_items: N.
    item_ranking: int [N], item ids most popular first in the training
      split (`UserSequences.items_by_popularity`); needed by "pop" only.

  Returns:
    A built Keras model with `call(history)` and `item_table()`.
  """
  name, k, n = model_config.model, model_config.interests, model_config.seq_len
  if name == "pop":
    if item_ranking is None:
      raise ValueError("the pop model needs the items' popularity ranking")
    tower = popularity.PopularityTower(item_ranking, name="pop")
  else:
    encoders = {
        "comirec-sa": lambda: self_attentive.ComiRecSA(k, n, name="comirec_sa"),
        "comirec-dr": lambda: capsule.comirec_dr(k, n),
        "mind": lambda: capsule.mind(k, n),
        "umi": lambda: umi.UMI(k, n, name="umi"),
        "youtube-dnn": lambda: single_interest.MeanPoolingMLP(
            name="youtube_dnn"),
        "gru4rec": lambda: single_interest.GRUEncoder(name="gru4rec"),
        "re4": lambda: re4.Re4(k, n, name="re4"),
        "pimirec": lambda: pimirec.PIMIRec(k, n, name="pimirec"),
    }
    if name not in encoders:
      raise ValueError(f"unknown model {name!r}; choose one of "
                       f"{', '.join(config.MODELS)}")
    if k < 1:
      raise ValueError(f"--interests must be >= 1, got {k}")
    tower = UserTower(num_items, encoders[name](), model_config.embedding_dim,
                      model_config.embedding_init, name="user_tower")
  tower(tf.zeros([1, n], tf.int32))
  return tower
