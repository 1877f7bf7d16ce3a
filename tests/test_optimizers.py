"""Lazy Adam: sparse updates touch only the batch's rows, and with catch-up
the trajectory follows dense Adam far more closely than plain lazy Adam."""

import numpy as np
import tensorflow as tf

from remi_tf import optimizers
from remi_tf.optimizers import LazyAdam


class PlainLazyAdam(LazyAdam):
  """Lazy Adam without catch-up (TF Addons' LazyAdam), for comparison."""

  def _pending(self, m, v, skipped, dtype):
    return tf.zeros_like(m), tf.ones_like(m[:, :1]), tf.ones_like(m[:, :1])


def _fit(optimizer, steps, seed=1):
  """Fits rows of a table to targets with sparse batches of 5 rows."""
  rng = np.random.default_rng(0)
  start = rng.normal(size=(50, 4)).astype(np.float32)
  target = tf.constant(rng.normal(size=(50, 4)).astype(np.float32))
  table = tf.Variable(start)
  batches = np.random.default_rng(seed).integers(0, 50, size=(steps, 5))
  for rows in batches:
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(tf.gather(table, rows) -
                                     tf.gather(target, rows)))
    optimizer.apply_gradients(zip(tape.gradient(loss, [table]), [table]))
  if isinstance(optimizer, LazyAdam):
    optimizer.catch_up([table])
  return start, table.numpy()


def test_a_sparse_step_touches_only_the_batch_rows():
  table = tf.Variable(np.ones((6, 3), np.float32))
  optimizer = LazyAdam(0.1)
  for _ in range(2):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.gather(table, [1, 4, 4]))
    optimizer.apply_gradients(zip(tape.gradient(loss, [table]), [table]))
  values = table.numpy()
  assert np.all(values[[0, 2, 3, 5]] == 1.0)
  assert np.all(values[[1, 4]] < 1.0)
  m = optimizer._momentums[0].numpy()  # pylint: disable=protected-access
  assert np.all(m[[0, 2, 3, 5]] == 0.0)


def test_a_repeated_row_gets_its_summed_gradient_as_dense_adam():
  rows = [1, 4, 4, 0, 4]
  weights = np.arange(1, 16, dtype=np.float32).reshape(5, 3)
  tables = {}
  for optimizer in (LazyAdam(0.1), tf.keras.optimizers.Adam(0.1)):
    table = tf.Variable(np.ones((6, 3), np.float32))
    # Two steps: Adam's first step has the same size whatever the gradient's.
    for power in (1, 2):
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(table, rows) * weights**power)
      gradient = tape.gradient(loss, table)
      if not isinstance(optimizer, LazyAdam):
        gradient = tf.convert_to_tensor(gradient)
      optimizer.apply_gradients([(gradient, table)])
    tables[type(optimizer)] = table.numpy()
  np.testing.assert_allclose(tables[LazyAdam],
                             tables[tf.keras.optimizers.Adam], atol=1e-5)


def test_catch_up_follows_dense_adam():
  start, dense = _fit(tf.keras.optimizers.Adam(0.01), 600)
  _, caught_up = _fit(LazyAdam(0.01), 600)
  _, plain = _fit(PlainLazyAdam(0.01), 600)
  movement = np.abs(dense - start).max()
  caught_up_error = np.abs(caught_up - dense).max()
  plain_error = np.abs(plain - dense).max()
  print(f"movement {movement:.3f}, catch-up error {caught_up_error:.3f}, "
        f"plain lazy error {plain_error:.3f}")
  assert caught_up_error < 0.1 * movement
  assert caught_up_error < plain_error / 3


def test_dense_variables_get_the_ordinary_adam_update():
  dense_layer = tf.Variable(np.ones((3, 2), np.float32))
  reference = tf.Variable(np.ones((3, 2), np.float32))
  for variable, optimizer in ((dense_layer, LazyAdam(0.1)),
                              (reference, tf.keras.optimizers.Adam(0.1))):
    for _ in range(3):
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(variable * [[1.0, 2.0]])
      optimizer.apply_gradients(zip(tape.gradient(loss, [variable]),
                                    [variable]))
  np.testing.assert_allclose(dense_layer.numpy(), reference.numpy(),
                             rtol=1e-6)


def test_catch_up_leaves_densely_updated_variables_alone():
  table = tf.Variable(np.ones((10, 3), np.float32))
  weights = tf.Variable(np.ones((3, 2), np.float32))
  bias = tf.Variable(np.zeros(2, np.float32))
  optimizer = LazyAdam(0.1)
  variables = [table, weights, bias]
  for _ in range(5):
    with tf.GradientTape() as tape:
      out = tf.matmul(tf.gather(table, [1, 2]), weights) + bias
      loss = tf.reduce_sum(out)
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
  before = [v.numpy().copy() for v in variables]
  optimizer.catch_up(variables)
  np.testing.assert_array_equal(weights.numpy(), before[1])
  np.testing.assert_array_equal(bias.numpy(), before[2])
  # Rows 1 and 2 were updated at the last step: nothing pending for them.
  np.testing.assert_allclose(table.numpy(), before[0])
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.gather(table, [5]))
  optimizer.apply_gradients(zip(tape.gradient(loss, [table]), [table]))
  moved = table.numpy().copy()
  optimizer.catch_up([table])
  # Rows 1 and 2 skipped one step: their momentum keeps moving them.
  assert np.all(table.numpy()[[1, 2]] < moved[[1, 2]])
  np.testing.assert_array_equal(table.numpy()[5], moved[5])


def test_sum_repeated_rows_equals_unique_and_segment_sum():
  rng = np.random.default_rng(3)
  for indices in ([4, 1, 4, 0, 4, 9], [3, 2, 1], [7, 7, 7], []):
    values = tf.constant(rng.normal(size=(len(indices), 3)), tf.float32)
    indices = tf.constant(indices, tf.int32)
    summed = optimizers.sum_repeated_rows(
        tf.IndexedSlices(values, indices, tf.constant([10, 3])))
    unique, slots = tf.unique(indices)
    np.testing.assert_array_equal(summed.indices, unique)
    np.testing.assert_allclose(
        summed.values,
        tf.math.unsorted_segment_sum(values, slots, tf.size(unique)),
        rtol=1e-6)
