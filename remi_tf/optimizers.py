"""Lazy Adam with catch-up: Adam whose sparse (embedding-table) updates touch
only the rows in the batch, yet follow dense Adam.

Dense Adam rewrites every row of a 174k x 64 item table and both its moments
at every step, which moves more memory than the rest of the step computes.
Plain lazy Adam (TF Addons' LazyAdam) skips untouched rows, but then a row
seen once moves about ten times less than under dense Adam, which keeps
applying its decaying momentum for many steps; that measurably lowers the
reproduction metrics.

Here each row remembers the step it was last updated. When it is touched
again, the k skipped steps are caught up in closed form: dense Adam would
have moved it by sum_{j=1..k} alpha m beta1^j / (sqrt(v beta2^j) + eps)
~= alpha m / sqrt(v) * q (1 - q^k) / (1 - q), q = beta1 / sqrt(beta2), and
decayed m by beta1^k and v by beta2^k. `catch_up` applies the pending
movement of every row (a dense pass, run before each evaluation), so
evaluated and saved weights match dense Adam up to epsilon and the drift of
the bias correction over the skipped steps.
"""

import tensorflow as tf
# Keras's own accumulator of a sharded table's optimizer variables.
from tf_keras.src.optimizers.optimizer import _ShardedVariableBuilder


class LazyAdam(tf.keras.optimizers.Adam):
  """Adam with row-sparse, caught-up updates for `tf.IndexedSlices`."""

  def build(self, var_list):
    super().build(var_list)
    # Keys of the variables updated sparsely, recorded when the update step
    # is traced: only those have pending movement to catch up.
    self._sparse_keys = set()
    if getattr(self, "_last_steps", None) is not None:
      return
    self._last_steps = [self._add_row_counter(variable)
                        if variable.shape.rank else None
                        for variable in var_list]

  def _add_row_counter(self, variable):
    """int64 [rows of `variable`], the step each row was last updated.

    Created as Keras creates Adam's m and v (`add_variable_from_reference`,
    which only makes variables of the model variable's dtype): colocated
    with `variable`, so a shard of a table sharded by a parameter-server
    strategy gets a counter of its own rows on its own server, and the
    shards' counters are tracked as one `ShardedVariable`, so checkpoints
    hold one [rows] counter per table whatever the sharding.
    """
    with tf.distribute.get_strategy().extended.colocate_vars_with(variable):
      counter = tf.Variable(tf.zeros([variable.shape[0]], tf.int64),
                            trainable=False,
                            name=f"last_step/{variable._shared_name}")
    if not hasattr(variable, "_sharded_container"):
      self._variables.append(counter)
      return counter
    table = variable._sharded_container()
    builder = self._sharded_variable_builders.setdefault(
        (table._unique_id, "last_step"),
        _ShardedVariableBuilder(len(table.variables)))
    builder.add_shard(counter)
    if builder.has_all_shards():
      self._variables.append(builder.build())
    return counter

  def _state(self, variable):
    index = self._index_dict[self._var_key(variable)]
    return (self._momentums[index], self._velocities[index],
            self._last_steps[index])

  def _pending(self, m, v, skipped, dtype):
    """The movement dense Adam would have made over `skipped` steps without
    gradient, and the decay factors of m and v over them."""
    beta_1 = tf.cast(self.beta_1, dtype)
    beta_2 = tf.cast(self.beta_2, dtype)
    ratio = beta_1 / tf.sqrt(beta_2)
    skipped = tf.reshape(tf.cast(skipped, dtype),
                         [-1] + [1] * (len(m.shape) - 1))
    geometric = ratio * (1 - tf.pow(ratio, skipped)) / (1 - ratio)
    movement = self._alpha(dtype) * geometric * m / (tf.sqrt(v) + self.epsilon)
    return movement, tf.pow(beta_1, skipped), tf.pow(beta_2, skipped)

  def _alpha(self, dtype):
    step = tf.cast(self.iterations + 1, dtype)
    learning_rate = tf.cast(self.learning_rate, dtype)
    return learning_rate * tf.sqrt(
        1 - tf.pow(tf.cast(self.beta_2, dtype), step)) / (
            1 - tf.pow(tf.cast(self.beta_1, dtype), step))

  def _deduplicate_sparse_grad(self, grads):
    return [sum_repeated_rows(gradient)
            if isinstance(gradient, tf.IndexedSlices) else gradient
            for gradient in grads]

  def update_step(self, gradient, variable):
    if not isinstance(gradient, tf.IndexedSlices):
      return super().update_step(gradient, variable)
    dtype = variable.dtype
    self._sparse_keys.add(self._var_key(variable))
    m, v, last_step = self._state(variable)
    step = tf.cast(self.iterations + 1, tf.int64)
    # apply_gradients has already summed repeated rows (sum_repeated_rows).
    rows, values = tf.cast(gradient.indices, tf.int64), gradient.values
    m_rows, v_rows = tf.gather(m, rows), tf.gather(v, rows)
    skipped = tf.maximum(step - tf.gather(last_step, rows) - 1, 0)
    movement, m_decay, v_decay = self._pending(m_rows, v_rows, skipped, dtype)
    beta_1 = tf.cast(self.beta_1, dtype)
    beta_2 = tf.cast(self.beta_2, dtype)
    m_rows = beta_1 * m_decay * m_rows + (1 - beta_1) * values
    v_rows = beta_2 * v_decay * v_rows + (1 - beta_2) * tf.square(values)
    m.scatter_update(tf.IndexedSlices(m_rows, rows))
    v.scatter_update(tf.IndexedSlices(v_rows, rows))
    last_step.scatter_update(tf.IndexedSlices(tf.fill(tf.shape(rows), step),
                                              rows))
    # Gather, subtract and scatter back: TF's CPU scatter_sub works row by
    # row and takes about twice as long as a gather plus scatter_update.
    variable.scatter_update(tf.IndexedSlices(
        tf.gather(variable, rows) - movement - self._alpha(dtype) * m_rows /
        (tf.sqrt(v_rows) + self.epsilon), rows))

  def catch_up(self, variables):
    """Applies every row's pending movement up to the last step taken (a
    dense pass over the tables; call it before evaluating or saving)."""
    step = tf.cast(self.iterations, tf.int64)
    for variable in variables:
      if self._var_key(variable) not in self._sparse_keys:
        continue
      m, v, last_step = self._state(variable)
      skipped = tf.maximum(step - last_step, 0)
      movement, m_decay, v_decay = self._pending(m, v, skipped,
                                                 variable.dtype)
      variable.assign_sub(movement)
      m.assign(m * m_decay)
      v.assign(v * v_decay)
      last_step.assign(tf.fill(tf.shape(last_step), step))


def sum_repeated_rows(gradient: tf.IndexedSlices) -> tf.IndexedSlices:
  """The gradient with each row once, its repeats' values summed.

  What Keras's optimizers do (`tf.unique` and `unsorted_segment_sum`), but
  cheaper when few rows repeat, as in an embedding table's gradient: each
  row's first value is gathered and only the repeats are added to it.
  TensorFlow's CPU segment sum adds every row one by one, about 2x the time
  of the gather (a Gowalla-shaped batch: ~4,600 rows, ~60 repeats).

  Args:
    gradient: values [L, ...] at indices [L], rows possibly repeated.

  Returns:
    values [U, ...] at the U distinct indices, in order of first occurrence.
  """
  rows, slots = tf.unique(gradient.indices)
  positions = tf.range(tf.size(slots))
  first = tf.math.unsorted_segment_min(positions, slots, tf.size(rows))
  repeats = tf.where(tf.gather(first, slots) != positions)[:, 0]
  summed = tf.tensor_scatter_nd_add(
      tf.gather(gradient.values, first), tf.gather(slots, repeats)[:, None],
      tf.gather(gradient.values, repeats))
  return tf.IndexedSlices(summed, rows, gradient.dense_shape)


class CatchUpCallback(tf.keras.callbacks.Callback):
  """Applies `LazyAdam.catch_up` at the end of every Keras epoch (each
  evaluation interval), before validation and checkpoints see the weights."""

  def on_epoch_end(self, epoch, logs=None):
    optimizer = self.model.optimizer
    if isinstance(optimizer, LazyAdam):
      optimizer.catch_up(self.model.trainable_variables)
