"""REMI's training losses, pure functions of tensors.

- `ihn_softmax_cross_entropy`: sampled softmax with Interest-aware Hard
  Negative re-weighting (REMI eq. 10-12, Algorithm 1); beta = 0 is exactly
  `tf.nn.sampled_softmax_loss`.
- `cross_entropy_at`: the same on logits that hold each example's positive,
  with its gradient written out.
- `SampledSoftmaxIHN`: the same as a Keras loss for `tfrs.tasks.Retrieval`.
- `routing_regularization`: REMI's routing regularizer (eq. 13-14).
- `routing_diagnostics`: how collapsed the routing is (paper Figure 1b).
"""

from typing import Dict

import tensorflow as tf
from tensorflow_recommenders.layers.loss import MIN_FLOAT

# TFRS masks removed candidates (accidental hits, score_mask) by setting their
# logits to MIN_FLOAT; anything below half of it is a removed candidate.
REMOVED_LOGIT = MIN_FLOAT / 2


def ihn_softmax_cross_entropy(positive_logits: tf.Tensor, logits: tf.Tensor,
                              negative_mask: tf.Tensor,
                              beta: float) -> tf.Tensor:
  """Softmax cross-entropy against re-weighted negatives, per example.

  With s_j the logits of example b's negatives (mask true):
  imp_j = exp(beta s_j), Ng = sum_j imp_j e^{s_j} / mean_j imp_j,
  loss_b = -log(e^{s+} / (e^{s+} + Ng)). beta = 0 gives imp_j = 1, the plain
  sampled softmax. The weights keep their gradient, as in the authors' code.

  Args:
    positive_logits: float [B], s+ (already corrected by log Q if sampled).
    logits: float [B, C], the candidates' logits (corrected likewise).
    negative_mask: bool [B, C], which candidates are the example's negatives.
    beta: IHN sharpness (>= 0).

  Returns:
    float [B], the per-example loss.
  """
  negative_logits = tf.where(tf.cast(negative_mask, tf.bool), logits,
                             MIN_FLOAT)
  return cross_entropy_at(
      tf.concat([positive_logits[:, None], negative_logits], axis=1),
      tf.zeros_like(positive_logits, tf.int32), beta)


def cross_entropy_at(logits: tf.Tensor, positive_columns: tf.Tensor,
                     beta: float) -> tf.Tensor:
  """`ihn_softmax_cross_entropy` with each example's positive among its
  logits: every other entry above `REMOVED_LOGIT` is a negative.

  log Ng = LSE((1 + beta) s) - LSE(beta s) + log(count) over the negatives
  (two log-sum-exps, both shifted by the row's largest negative logit, so
  large beta and large logits give no inf or NaN); at beta 1, REMI's
  default, the two exponentials are e^s and its square: one exp. The
  gradient is written out from the forward pass's exponentials: for a
  negative, sigmoid(log Ng - s+) ((1 + beta) softmax((1 + beta) s)_j -
  beta softmax(beta s)_j), and -sigmoid(log Ng - s+) for the positive.
  Automatic differentiation would make several more passes over [B, C]
  (the positive's mask, the broadcast sums), which are a tenth of a
  millisecond a step at the paper's shapes.

  Args:
    logits: float [B, C]; removed candidates at or below `REMOVED_LOGIT`.
    positive_columns: int32 [B], the column of each example's positive.
    beta: IHN sharpness (>= 0).

  Returns:
    float [B], the per-example loss; 0 for an example without negatives.
  """
  beta = float(beta)
  positions = tf.stack([tf.range(tf.shape(logits)[0]), positive_columns],
                       axis=1)

  @tf.custom_gradient
  def cross_entropy(logits):
    positive = tf.gather_nd(logits, positions)
    negatives = tf.tensor_scatter_nd_update(
        logits, positions,
        tf.fill(tf.shape(positive), tf.constant(MIN_FLOAT, logits.dtype)))
    row_max = tf.reduce_max(negatives, axis=1, keepdims=True)
    shifted = negatives - row_max
    if beta:
      importance = tf.exp(beta * shifted)  # e^{beta (s - max)}
      weighted = (tf.square(importance) if beta == 1.0 else
                  importance * tf.exp(shifted))  # e^{(1 + beta)(s - max)}
      weighted_sum = tf.reduce_sum(weighted, axis=1, keepdims=True)
      importance_sum = tf.reduce_sum(importance, axis=1, keepdims=True)
      count = tf.reduce_sum(tf.cast(negatives > REMOVED_LOGIT, logits.dtype),
                            axis=1, keepdims=True)
      log_mass = (tf.math.log(weighted_sum) - tf.math.log(importance_sum)
                  + tf.math.log(tf.maximum(count, 1.0)))
    else:
      weighted = tf.exp(shifted)
      weighted_sum = tf.reduce_sum(weighted, axis=1, keepdims=True)
      log_mass = tf.math.log(weighted_sum)
    margin = (log_mass + row_max)[:, 0] - positive

    def gradient(upstream):
      scale = upstream * tf.sigmoid(margin)
      row_scale = scale[:, None]
      negatives_gradient = weighted * (row_scale * (1 + beta) / weighted_sum)
      if beta:
        # Independent of the product above: the two run at once.
        negatives_gradient -= importance * (row_scale * beta / importance_sum)
      # The positive's entry is 0 above (its weights are e^{MIN_FLOAT}).
      return tf.tensor_scatter_nd_update(negatives_gradient, positions,
                                         -scale)

    return tf.nn.softplus(margin), gradient

  return cross_entropy(logits)


class SampledSoftmaxIHN(tf.keras.losses.Loss):
  """`ihn_softmax_cross_entropy` in the layout of `tfrs.tasks.Retrieval`.

  The task passes y_true [B, C], one 1 per row at the example's positive, and
  y_pred [B, C], the logits with removed candidates (accidental hits, masked
  scores) set to TFRS's MIN_FLOAT. Every other candidate is a negative.
  Reduced by the mean over the batch (TFRS's default loss sums; learning
  rates here are tuned for the mean): under a `tf.distribute` strategy, each
  replica's sum divided by the global batch size, so the replicas' gradients
  add up to the one-machine gradient (Keras rejects its own
  SUM_OVER_BATCH_SIZE reduction outside `compile` under a strategy).
  """

  def __init__(self, beta: float = 0.0, name: str = "sampled_softmax_ihn"):
    super().__init__(name=name,
                     reduction=tf.keras.losses.Reduction.SUM_OVER_BATCH_SIZE)
    if beta < 0:
      raise ValueError(f"beta must be >= 0, got {beta}")
    self.beta = float(beta)

  def __call__(self, y_true: tf.Tensor, y_pred: tf.Tensor,
               sample_weight=None) -> tf.Tensor:
    """The loss averaged over the (global) batch, a scalar."""
    with tf.name_scope(self.name):
      return tf.nn.compute_average_loss(self.call(y_true, y_pred),
                                        sample_weight=sample_weight)

  def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """The per-example loss, float [B]; y_true one-hot [B, C] (TFRS's
    labels), y_pred the logits [B, C]."""
    return cross_entropy_at(
        y_pred, tf.argmax(y_true, axis=1, output_type=tf.int32), self.beta)

  def get_config(self):
    return {**super().get_config(), "beta": self.beta}


def routing_regularization(routing: tf.Tensor, embedding_dim: int) -> tf.Tensor:
  """REMI's routing regularizer, summed over the batch.

  Per user, with A the routing [n, K]: C = (A - mean_pos(A))^T
  (A - mean_pos(A)) / d and the term is ||diag(C)||^2 (only the diagonal is
  computed). The / d and the batch sum follow the authors' code, so the
  paper's lambda = 100 means the same here.

  Args:
    routing: float [B, K, n], each interest's weights over history positions.
    embedding_dim: d.

  Returns:
    A scalar. Its gradient is written out, 4 / d diag(C) (A - mean_pos(A))
    (the centring's own term vanishes: the centred rows sum to 0), as two
    element-wise products instead of automatic differentiation's chain of
    small ops through the mean.
  """

  @tf.custom_gradient
  def regularizer(routing):
    centered = routing - tf.reduce_mean(routing, axis=2, keepdims=True)
    variances = tf.reduce_sum(tf.square(centered), axis=2,
                              keepdims=True) / embedding_dim

    def gradient(upstream):
      return centered * (variances * (4.0 / embedding_dim) * upstream)

    return tf.reduce_sum(tf.square(variances)), gradient

  return regularizer(routing)


def routing_diagnostics(routing: tf.Tensor) -> Dict[str, tf.Tensor]:
  """How concentrated the routing is; collapse shows as max weight near 1.

  Each interest's weights are first normalised to sum to 1: capsule routing
  (ComiRec-DR, MIND) zeroes padding without renormalising, as the reference,
  so its rows sum to less than 1 on short histories.

  Args:
    routing: float [B, K, n], each interest's weights over positions.

  Returns:
    `routing_max_weight`: mean over users and interests of the largest
    normalised weight; `routing_entropy`: mean entropy (nats) of each
    interest's normalised weights. Under a `tf.distribute` strategy the user
    mean is over the global batch (each replica's sum / global batch), as
    the loss, so the replicas' values add up to the batch's.
  """
  routing = tf.math.divide_no_nan(
      routing, tf.reduce_sum(routing, axis=2, keepdims=True))
  entropy = -tf.reduce_sum(
      tf.math.multiply_no_nan(tf.math.log(routing), routing), axis=2)
  per_user = {
      "routing_max_weight": tf.reduce_mean(tf.reduce_max(routing, axis=2),
                                           axis=1),
      "routing_entropy": tf.reduce_mean(entropy, axis=1),
  }
  return {name: tf.nn.compute_average_loss(value)
          for name, value in per_user.items()}
