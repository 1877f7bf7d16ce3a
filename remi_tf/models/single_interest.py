"""Single-interest baselines, in the multi-interest encoder interface
(K = 1): YouTube DNN and GRU4Rec."""

import tensorflow as tf


class MeanPoolingMLP(tf.keras.layers.Layer):
  """YouTube DNN: masked mean of the history, then an MLP.

  Its routing is the pooling weights (1 / length on real positions).
  """

  def build(self, input_shape):
    dim = int(input_shape[-1])
    self.mlp = tf.keras.Sequential([
        tf.keras.layers.Dense(4 * dim, activation="relu"),
        tf.keras.layers.Dense(dim),
    ], name="mlp")
    super().build(input_shape)

  def call(self, history: tf.Tensor, mask: tf.Tensor):
    """history float [B, n, d], mask float [B, n] -> ([B, 1, d], [B, 1, n])."""
    weights = mask / tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)
    pooled = tf.einsum("bn,bnd->bd", weights, history)
    return self.mlp(pooled)[:, None, :], weights[:, None, :]


class GRUEncoder(tf.keras.layers.Layer):
  """GRU4Rec: a GRU over the history; the interest is its last state.

  Its routing is the one-hot of the last real position, the only item read
  out directly.
  """

  def build(self, input_shape):
    self.gru = tf.keras.layers.GRU(int(input_shape[-1]), name="gru")
    super().build(input_shape)

  def call(self, history: tf.Tensor, mask: tf.Tensor):
    """history float [B, n, d], mask float [B, n] -> ([B, 1, d], [B, 1, n])."""
    state = self.gru(history, mask=mask > 0)
    length = tf.cast(tf.reduce_sum(mask, axis=1), tf.int32)
    last = tf.one_hot(tf.maximum(length - 1, 0), tf.shape(mask)[1]) * mask
    return state[:, None, :], last[:, None, :]
