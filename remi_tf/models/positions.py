"""The real (non-padding) positions of a batch of histories, and rows moved
between the padded layout [B, n, ...] and the compact one [R, ...].

Both moves are gathers, forward and backward: `tf.gather_nd` and
`tf.scatter_nd` would do the same with a scatter one way, which TensorFlow's
CPU kernel runs about twice as slow (it zero-fills the output and writes
row by row).
"""

import tensorflow as tf


class RealPositions:
  """Where a [B, n] mask is set, in row-major order.

  Args:
    mask: [B, n], true (or > 0) at real positions; anywhere, not only a
      prefix of each row.
  """

  def __init__(self, mask: tf.Tensor):
    real = tf.reshape(tf.cast(mask, tf.bool), [-1])
    self.shape = tf.shape(mask)
    # int32 [R]: each real position's index in the flattened [B * n].
    self.flat = tf.cast(tf.where(real)[:, 0], tf.int32)
    # int32 [B * n]: 1 + a real position's row in the compact layout, 0 at
    # padding (which reads a zero row).
    real = tf.cast(real, tf.int32)
    self.slots = tf.cumsum(real) * real

  def compact(self, padded: tf.Tensor) -> tf.Tensor:
    """[B, n, ...] -> [R, ...], the real positions' rows."""
    flat = tf.reshape(padded, tf.concat([[-1], tf.shape(padded)[2:]], 0))
    if not padded.dtype.is_floating:
      return tf.gather(flat, self.flat)
    return _take_rows(flat, self.flat, self.slots)

  def expand(self, compact: tf.Tensor) -> tf.Tensor:
    """[R, ...] -> [B, n, ...], zero at padding."""
    flat = _put_rows(compact, self.flat, self.slots)
    return tf.reshape(flat, tf.concat([self.shape, tf.shape(compact)[1:]],
                                      0))


@tf.custom_gradient
def _take_rows(padded, flat, slots):
  """padded [P, ...] -> [R, ...] = padded[flat]."""
  def gradient(upstream):
    return _put_rows(upstream, flat, slots), None, None
  return tf.gather(padded, flat), gradient


@tf.custom_gradient
def _put_rows(compact, flat, slots):
  """compact [R, ...] -> [P, ...], row flat[r] = compact[r], others 0."""
  def gradient(upstream):
    return tf.gather(upstream, flat), None, None
  zero_row = tf.zeros(tf.concat([[1], tf.shape(compact)[1:]], 0),
                      compact.dtype)
  return tf.gather(tf.concat([zero_row, compact], 0), slots), gradient
