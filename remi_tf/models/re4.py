"""Re4 (Zhang et al., WWW 2022): ComiRec-SA's interests, re-examined by
three backward flows trained as auxiliary losses.

The forward flow is ComiRec-SA (routing A [B, K, n], interests Z = A H).
In training, the encoder adds (`add_loss`; `tfrs.Model.train_step` adds a
model's `losses` to its loss) a weighted sum of:
- re-contrast: InfoNCE on cosines / temperature, pulling each interest z_k
  towards its attended items (a_ki > 1 / |history|) and away from the
  user's items, its other interests and another user's items;
- re-attend: the cross-entropy from softmax_i <z_k, x_i> (the scores the
  retrieval ranks by) to the routing a_k;
- re-construct: the attended items rebuilt from z_k alone by squared error.
Inference (interests, routing) is ComiRec-SA's, unchanged: the paper
demonstrates Re4 on it (the authors' code also projects the items before
pooling and passes the interests through tanh(W z + b); not kept).

Where the paper gives no number the authors' code does (github.com/
DeerSheep0314/Re4-Learning-to-Re-contrast-Re-attend-Re-construct-for-
Multi-interest-Recommendation, src/model.py and its README's Amazon Books
command): the loss weights, the temperature, the threshold 1 / |history|,
the negatives, the decoder, and each loss's normalisation (a mean over the
[B, K, n] grid, over [B, K, n, d] for re-construct), so that its weights
mean the same here.
"""

from typing import Dict

import numpy as np
import tensorflow as tf

from remi_tf.models import self_attentive

# The authors' README command for Amazon Books (ct_lambda, att_lambda,
# cs_lambda) and their code's contrastive temperature t_cont, except the
# re-contrast weight: the authors' 0.1 assumes N(0, 1) item embeddings, and
# with this project's Glorot ones 0.01 trains better (docs/models.md).
CONTRAST_WEIGHT = 0.01
ATTEND_WEIGHT = 0.001
CONSTRUCT_WEIGHT = 0.1
TEMPERATURE = 0.02

# Logit of a candidate that is not one; finite, so that no gradient is NaN.
_EXCLUDED_LOGIT = -1e9
# The smallest normal float32: log of a routing weight floored at it.
_SMALLEST_WEIGHT = float(np.finfo(np.float32).tiny)


def attended_items(routing: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  """Each interest's representative items: weight above 1 / |history|.

  Args:
    routing: float [B, K, n].
    mask: float [B, n], 1 for real positions.

  Returns:
    bool [B, K, n]; False on padding.
  """
  threshold = tf.math.divide_no_nan(1.0, tf.reduce_sum(mask, axis=1))
  return (routing > threshold[:, None, None]) & (mask[:, None, :] > 0)


def re_contrast_loss(interests: tf.Tensor, items: tf.Tensor, mask: tf.Tensor,
                     attended: tf.Tensor, temperature: float) -> tf.Tensor:
  """InfoNCE of each (interest, attended item) pair, per user.

  The candidates of interest z_k are the user's real items, its other
  interests and the real items of the previous user of the batch (the
  authors' items "not in the history"), scored by cosine / temperature.

  Args:
    interests: float [B, K, d].
    items: float [B, n, d], the history's item embeddings.
    mask: float [B, n].
    attended: bool [B, K, n], the positive pairs (`attended_items`).
    temperature: the InfoNCE temperature.

  Returns:
    float [B], the sum over positive pairs of -log softmax(positive) / (K n).
  """
  num_interests, seq_len = tf.shape(attended)[1], tf.shape(attended)[2]
  unit_interests = tf.math.l2_normalize(interests, axis=-1)
  unit_items = tf.math.l2_normalize(items, axis=-1)
  own_items = tf.einsum("bkd,bnd->bkn", unit_interests, unit_items)
  interests_cosine = tf.einsum("bkd,bjd->bkj", unit_interests, unit_interests)
  other_items = tf.einsum("bkd,bnd->bkn", unit_interests,
                          tf.roll(unit_items, shift=1, axis=0))
  candidates = tf.concat([own_items, interests_cosine, other_items],
                         axis=2) / temperature
  shape = tf.shape(own_items)
  is_candidate = tf.concat([
      tf.broadcast_to(mask[:, None, :] > 0, shape),
      tf.broadcast_to(tf.eye(num_interests)[None] == 0,
                      tf.shape(interests_cosine)),
      tf.broadcast_to(tf.roll(mask, shift=1, axis=0)[:, None, :] > 0, shape),
  ], axis=2)
  log_partition = tf.reduce_logsumexp(
      tf.where(is_candidate, candidates, _EXCLUDED_LOGIT), axis=2)
  pair_losses = log_partition[..., None] - own_items / temperature
  return tf.reduce_sum(tf.where(attended, pair_losses, 0.0), axis=[1, 2]) / (
      tf.cast(num_interests * seq_len, interests.dtype))


def re_attend_loss(interests: tf.Tensor, items: tf.Tensor,
                   routing: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  """Cross-entropy from softmax_i <z_k, x_i> to the routing, per user.

  Both sides keep their gradient, as in the authors' code.

  Args:
    interests: float [B, K, d].
    items: float [B, n, d].
    routing: float [B, K, n], a softmax over the real positions.
    mask: float [B, n].

  Returns:
    float [B], the mean over interests of -sum_i q_ki log a_ki.
  """
  scores = self_attentive.masked_softmax(
      tf.einsum("bkd,bnd->bkn", interests, items), mask[:, None, :])
  # The routing is a softmax of finite logits: 0 only on padding, where the
  # scores are 0 too; the floor keeps 0 * log 0 out.
  log_routing = tf.math.log(tf.maximum(routing, _SMALLEST_WEIGHT))
  return -tf.reduce_sum(scores * log_routing, axis=[1, 2]) / tf.cast(
      tf.shape(routing)[1], routing.dtype)


def re_construct_loss(rebuilt: tf.Tensor, items: tf.Tensor,
                      attended: tf.Tensor) -> tf.Tensor:
  """Squared error of the attended items rebuilt from their interest.

  Args:
    rebuilt: float [B, K, n, d], position i of interest k's reconstruction.
    items: float [B, n, d].
    attended: bool [B, K, n], which (interest, position) pairs count.

  Returns:
    float [B], the summed squared error over attended pairs / (K n d).
  """
  errors = tf.reduce_sum(tf.square(rebuilt - items[:, None]), axis=-1)
  shape = tf.shape(rebuilt)
  return tf.reduce_sum(tf.where(attended, errors, 0.0), axis=[1, 2]) / (
      tf.cast(shape[1] * shape[2] * shape[3], rebuilt.dtype))


class InterestDecoder(tf.keras.layers.Layer):
  """Re-construct's decoder: one interest -> n item embeddings.

  As the authors' code: a dense layer upsamples z_k to n vectors S [n, d];
  position i of the reconstruction is softmax_j(W2 tanh(W1 s_j))_i over
  the real positions j, applied to S W5 (the attention is
  `SelfAttentiveRouting` with one head per output position).

  Args:
    seq_len: n.
  """

  def __init__(self, seq_len: int, **kwargs):
    super().__init__(**kwargs)
    self.seq_len = seq_len
    self.attention = self_attentive.SelfAttentiveRouting(
        seq_len, hidden_factor=1, name="attention")

  def build(self, input_shape):
    dim = int(input_shape[-1])
    self.upsample = tf.keras.layers.Dense(self.seq_len * dim, name="upsample")
    self.values = tf.keras.layers.Dense(dim, use_bias=False, name="w5")
    super().build(input_shape)

  def call(self, interests: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """interests float [B, K, d], mask float [B, n] -> float [B, K, n, d]."""
    shape = tf.shape(interests)
    dim = interests.shape[-1]
    slots = tf.reshape(self.upsample(interests), [-1, self.seq_len, dim])
    # Row b K + k of the flattened [B K, n, d] belongs to user b.
    weights = self.attention(slots, tf.repeat(mask, shape[1], axis=0))
    rebuilt = tf.matmul(weights, self.values(slots))
    return tf.reshape(rebuilt, [shape[0], shape[1], self.seq_len, dim])


class Re4(tf.keras.layers.Layer):
  """The Re4 multi-interest encoder.

  Args:
    num_interests: K.
    seq_len: n.
    contrast_weight, attend_weight, construct_weight: the backward flows'
      loss weights.
    temperature: re-contrast's temperature.
  """

  def __init__(self, num_interests: int, seq_len: int,
               contrast_weight: float = CONTRAST_WEIGHT,
               attend_weight: float = ATTEND_WEIGHT,
               construct_weight: float = CONSTRUCT_WEIGHT,
               temperature: float = TEMPERATURE, **kwargs):
    super().__init__(**kwargs)
    if min(contrast_weight, attend_weight, construct_weight) < 0:
      raise ValueError("Re4's loss weights must be >= 0")
    if temperature <= 0:
      raise ValueError(f"Re4's temperature must be > 0, got {temperature}")
    self.num_interests = num_interests
    self.seq_len = seq_len
    self.temperature = float(temperature)
    self.flow_weights = {"re_contrast_loss": float(contrast_weight),
                         "re_attend_loss": float(attend_weight),
                         "re_construct_loss": float(construct_weight)}
    self.forward_flow = self_attentive.ComiRecSA(num_interests, seq_len,
                                                 name="comirec_sa")
    self.decoder = InterestDecoder(seq_len, name="decoder")
    self.trackers = {name: tf.keras.metrics.Mean(name=name)
                     for name in self.flow_weights}

  def build(self, input_shape):
    # The decoder runs in training only: build it with the tower, so that
    # every variable exists before training starts (checkpoints, optimizer
    # slots, distribution strategies).
    self.decoder(tf.zeros([1, self.num_interests, int(input_shape[-1])]),
                 tf.ones([1, self.seq_len]))
    super().build(input_shape)

  def call(self, history: tf.Tensor, mask: tf.Tensor, training=None):
    """history float [B, n, d] (padding rows zero), mask float [B, n].

    Returns:
      interests float [B, K, d], routing float [B, K, n]. In training, adds
      the weighted backward-flow losses to `losses` and tracks each.
    """
    interests, routing = self.forward_flow(history, mask)
    if training:
      flow_losses = self.backward_flow_losses(interests, routing, history,
                                              mask)
      for name, value in flow_losses.items():
        self.trackers[name].update_state(value)
      self.add_loss(tf.add_n([self.flow_weights[name] * value
                              for name, value in flow_losses.items()]))
    return interests, routing

  def backward_flow_losses(self, interests: tf.Tensor, routing: tf.Tensor,
                           history: tf.Tensor, mask: tf.Tensor
                           ) -> Dict[str, tf.Tensor]:
    """The three losses, unweighted, each a scalar averaged over the batch.

    Under a `tf.distribute` strategy each is a replica's sum over its users
    divided by the global batch size, as the retrieval loss.

    Args:
      interests: float [B, K, d].
      routing: float [B, K, n].
      history: float [B, n, d].
      mask: float [B, n].

    Returns:
      {"re_contrast_loss", "re_attend_loss", "re_construct_loss"}: scalars.
    """
    attended = attended_items(routing, mask)
    per_user = {
        "re_contrast_loss": re_contrast_loss(interests, history, mask,
                                             attended, self.temperature),
        "re_attend_loss": re_attend_loss(interests, history, routing, mask),
        "re_construct_loss": re_construct_loss(
            self.decoder(interests, mask), history, attended),
    }
    return {name: tf.nn.compute_average_loss(value)
            for name, value in per_user.items()}
