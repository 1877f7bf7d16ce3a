"""RealPositions: rows moved between the padded and the compact layout, with
the values and gradients of tf.gather_nd / tf.scatter_nd."""

import numpy as np
import pytest
import tensorflow as tf

from remi_tf.models.positions import RealPositions

MASKS = {
    "prefixes": [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]],
    "holes and an empty row": [[0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 1]],
    "no real position": [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
}


@pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())
def test_compact_and_expand_are_gather_nd_and_scatter_nd(mask):
  mask = tf.constant(mask) > 0
  padded = tf.random.stateless_normal([3, 4, 5], seed=[1, 2])
  weights = tf.random.stateless_normal([3, 4, 5], seed=[3, 4])
  where = tf.where(mask)
  real = RealPositions(mask)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(padded)
    compact, reference = real.compact(padded), tf.gather_nd(padded, where)
    expanded = real.expand(compact * 2.0)
    reference_expanded = tf.scatter_nd(where, reference * 2.0,
                                       tf.shape(padded, out_type=tf.int64))
    loss = tf.reduce_sum(expanded * weights)
    reference_loss = tf.reduce_sum(reference_expanded * weights)
  np.testing.assert_array_equal(compact, reference)
  np.testing.assert_array_equal(expanded, reference_expanded)
  gradient = tape.gradient(loss, padded)
  np.testing.assert_array_equal(gradient, tape.gradient(reference_loss,
                                                        padded))
  # Padding gets no gradient; a real position gets 2 * its weight.
  np.testing.assert_array_equal(
      gradient, 2.0 * weights * tf.cast(mask, tf.float32)[..., None])


def test_compact_takes_integer_rows_without_a_gradient():
  history = tf.constant([[5, 0, 7], [0, 0, 9]])
  real = RealPositions(history > 0)
  np.testing.assert_array_equal(real.compact(history), [5, 7, 9])
  np.testing.assert_array_equal(
      real.expand(tf.constant([[1.0], [2.0], [3.0]]))[..., 0],
      [[1, 0, 2], [0, 0, 3]])
