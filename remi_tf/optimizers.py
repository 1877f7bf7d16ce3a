"""Lazy Adam: Adam that, for sparse gradients (embedding tables), updates
only the rows a batch touched.

Dense Adam decays the moments of every row of a 174k x 64 item table at
every step, which moves more memory than the rest of the step computes.
Lazy Adam (as TF Addons' LazyAdam and torch's SparseAdam) keeps the moments
of untouched rows as they were; dense variables get the usual Adam update.
"""

import tensorflow as tf


class LazyAdam(tf.keras.optimizers.Adam):
  """Adam with row-sparse updates for `tf.IndexedSlices` gradients."""

  def update_step(self, gradient, variable):
    if not isinstance(gradient, tf.IndexedSlices):
      return super().update_step(gradient, variable)
    dtype = variable.dtype
    step = tf.cast(self.iterations + 1, dtype)
    beta_1 = tf.cast(self.beta_1, dtype)
    beta_2 = tf.cast(self.beta_2, dtype)
    learning_rate = tf.cast(self.learning_rate, dtype)
    alpha = learning_rate * tf.sqrt(1 - tf.pow(beta_2, step)) / (
        1 - tf.pow(beta_1, step))
    key = self._var_key(variable)
    m = self._momentums[self._index_dict[key]]
    v = self._velocities[self._index_dict[key]]

    rows, position = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, position,
                                          tf.shape(rows)[0])
    m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
    v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
    m.scatter_update(tf.IndexedSlices(m_rows, rows))
    v.scatter_update(tf.IndexedSlices(v_rows, rows))
    variable.scatter_sub(tf.IndexedSlices(
        alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))
