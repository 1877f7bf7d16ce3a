"""UMI (Chai et al., SIGIR 2022): user-aware multi-interest extraction.

A user representation p modulates the extraction twice, as the paper's
dual-attention routing and interest refinement:

- user-guided attention (UGA) weighs each history item by its relevance to
  p, a_i = sigmoid(w2 . relu(W1 [e_i; p] + b1) + b2);
- dual-attentive capsule routing extracts K interests with every item's
  contribution scaled by a_i, s_k = sum_i a_i c_ik W_k e_i;
- interest refinement (IR) lets each interest gate the fields of p and mixes
  the gated p into it through a two-layer MLP.

The paper's p embeds user profile features (gender, age and occupation in the
public UMI code). Our logs have none, and a user-id embedding would not exist
for validation and test users, who are unseen in training under the ComiRec
protocol. So p is computed from the history alone, which every user has at
serving time: two fields, the mean of the history's items (the overall
taste) and its most recent item (the current intent).

Layer sizes, the per-interest maps shared by all positions
(bilinear_type=1), the routing logits replaced (not accumulated) at every
iteration and the softmax over interests follow the public UMI TensorFlow
code (`Model_UMI`, `dual_softmax_routing`,
`_user_profile_interest_attention`). UMI's harder-negatives objective (each
candidate scored by its closest interest) is a training loss, not part of
the tower: under REMI the tower trains with IHN instead.
"""

import tensorflow as tf

from remi_tf.models.capsule import squash

# The width of the user-guided attention's and of the refinement gate's
# hidden layers, and the routing iterations (the UMI code).
HIDDEN_UNITS = 8
ROUTING_ITERATIONS = 3


class HistoryProfile(tf.keras.layers.Layer):
  """The stand-in for the user profile, from the history alone.

  Field 0 is the mean of the real items, field 1 the most recent one (the
  last real position: histories are right-padded in time order).
  """

  num_fields = 2

  def call(self, history: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """history float [B, n, d] (padding rows zero), mask float [B, n].

    Returns:
      float [B, 2, d]; both fields zero for an empty history.
    """
    length = tf.reduce_sum(mask, axis=1)
    mean = tf.einsum("bn,bnd->bd", mask / tf.maximum(length, 1.0)[:, None],
                     history)
    last_position = tf.maximum(tf.cast(length, tf.int32) - 1, 0)
    recent = tf.gather(history, last_position, batch_dims=1)
    return tf.stack([mean, recent], axis=1)


class UserGuidedAttention(tf.keras.layers.Layer):
  """UGA: a_i = sigmoid(w2 . relu(W1 [e_i; p] + b1) + b2), one per item.

  Args:
    hidden_units: width of W1 (8 in the UMI code).
  """

  def __init__(self, hidden_units: int = HIDDEN_UNITS, **kwargs):
    super().__init__(**kwargs)
    self.hidden_units = hidden_units

  def build(self, input_shape):
    self.mlp = tf.keras.Sequential([
        tf.keras.layers.Dense(self.hidden_units, activation="relu"),
        tf.keras.layers.Dense(1, activation="sigmoid"),
    ], name="mlp")
    super().build(input_shape)

  def call(self, history: tf.Tensor, profile: tf.Tensor,
           mask: tf.Tensor) -> tf.Tensor:
    """history float [B, n, d], profile float [B, P], mask float [B, n].

    Returns:
      float [B, n], each real item's weight in (0, 1); padding 0.
    """
    profile = tf.broadcast_to(
        profile[:, None, :],
        tf.concat([tf.shape(history)[:2], [profile.shape[-1]]], axis=0))
    weights = self.mlp(tf.concat([history, profile], axis=-1))[..., 0]
    return weights * mask


class DualAttentiveRouting(tf.keras.layers.Layer):
  """Capsule routing with each item's contribution scaled by its UGA weight.

  Predictions u_ik = W_k e_i, one d x d map per interest shared by all
  positions. Each iteration: c_i = softmax over interests of the logits b_i
  (padding zeroed), s_k = sum_i a_i c_ik u_ik, v_k = squash(s_k), and the
  logits become b_ik = u_ik . v_k. Earlier iterations see u and a without
  gradient, the last one with it, its c without. The routing returned, the
  weights a_i c_ik that make interest k, keeps the gradient that the logits
  carry from u (as `capsule.DynamicRouting`), so that REMI's regularizer
  trains the predictions.

  Args:
    num_interests: K.
    seq_len: n.
    iterations: routing iterations (3).

  The first logits are N(0, 1) truncated at 2 standard deviations, as the
  UMI code's; drawn once at build time and stored with the weights (not
  trained), so that the same history always gets the same interests.
  """

  def __init__(self, num_interests: int, seq_len: int,
               iterations: int = ROUTING_ITERATIONS, **kwargs):
    super().__init__(**kwargs)
    self.num_interests = num_interests
    self.seq_len = seq_len
    self.iterations = iterations

  def build(self, input_shape):
    self.predictor = tf.keras.layers.Dense(
        self.num_interests * int(input_shape[-1]), use_bias=False,
        name="bilinear")
    self.initial_logits = self.add_weight(
        name="initial_routing_logits",
        shape=(self.num_interests, self.seq_len), trainable=False,
        initializer=tf.keras.initializers.TruncatedNormal(stddev=1.0))
    super().build(input_shape)

  def call(self, history: tf.Tensor, mask: tf.Tensor,
           item_weights: tf.Tensor):
    """history float [B, n, d], mask float [B, n], item_weights float [B, n].

    Returns:
      interests float [B, K, d], routing float [B, K, n] (a_i c_ik; over
      the interests an item's weights sum to a_i).
    """
    shape = tf.shape(history)
    predictions = tf.reshape(
        self.predictor(history),
        [shape[0], shape[1], self.num_interests, shape[2]])
    predictions = tf.transpose(predictions, [0, 2, 1, 3])  # [B, K, n, d]
    frozen = tf.stop_gradient(predictions)
    logits = tf.tile(self.initial_logits[None], [shape[0], 1, 1])
    mask, item_weights = mask[:, None, :], item_weights[:, None, :]
    for iteration in range(self.iterations):
      coupling = tf.nn.softmax(logits, axis=1) * mask
      if iteration == self.iterations - 1:
        routing = coupling * item_weights
        interests = squash(tf.einsum(
            "bkn,bknd->bkd", tf.stop_gradient(coupling) * item_weights,
            predictions))
      else:
        interests = tf.stop_gradient(squash(tf.einsum(
            "bkn,bknd->bkd", coupling * item_weights, frozen)))
        logits = tf.einsum("bknd,bkd->bkn", predictions, interests)
    return interests, routing


class InterestRefinement(tf.keras.layers.Layer):
  """IR: each interest gates the profile's fields, then absorbs them.

  g_k = sigmoid(W4 relu(W3 [p; v_k] + b3) + b4), one gate per field;
  p_k = the fields of p each scaled by its gate; the refined interest is
  W6 relu(W5 [p_k; v_k] + b5) + b6, of widths d / 2 and d.

  Args:
    num_fields: F, the profile's fields.
    hidden_units: width of W3 (8 in the UMI code).
  """

  def __init__(self, num_fields: int, hidden_units: int = HIDDEN_UNITS,
               **kwargs):
    super().__init__(**kwargs)
    self.num_fields = num_fields
    self.hidden_units = hidden_units

  def build(self, input_shape):
    dim = int(input_shape[-1])
    self.gate = tf.keras.Sequential([
        tf.keras.layers.Dense(self.hidden_units, activation="relu"),
        tf.keras.layers.Dense(self.num_fields, activation="sigmoid"),
    ], name="gate")
    self.mix = tf.keras.Sequential([
        tf.keras.layers.Dense(max(dim // 2, 1), activation="relu"),
        tf.keras.layers.Dense(dim),
    ], name="mix")
    super().build(input_shape)

  def call(self, interests: tf.Tensor, profile: tf.Tensor) -> tf.Tensor:
    """interests float [B, K, d], profile float [B, F, d] -> [B, K, d]."""
    per_interest = tf.shape(interests)[:2]
    fields = tf.broadcast_to(profile[:, None],
                             tf.concat([per_interest, profile.shape[1:]], 0))
    gates = self.gate(tf.concat([_flatten_fields(fields), interests], -1))
    gated = _flatten_fields(fields * gates[..., None])
    return self.mix(tf.concat([gated, interests], axis=-1))


def _flatten_fields(fields: tf.Tensor) -> tf.Tensor:
  """float [..., F, d] -> [..., F * d], the static width kept."""
  width = fields.shape[-2] * fields.shape[-1]
  return tf.reshape(fields, tf.concat([tf.shape(fields)[:-2], [width]], 0))


class UMI(tf.keras.layers.Layer):
  """The UMI multi-interest encoder.

  Args:
    num_interests: K.
    seq_len: n.
  """

  def __init__(self, num_interests: int, seq_len: int, **kwargs):
    super().__init__(**kwargs)
    self.profile = HistoryProfile(name="profile")
    self.attention = UserGuidedAttention(name="user_guided_attention")
    self.routing = DualAttentiveRouting(num_interests, seq_len,
                                        name="routing")
    self.refinement = InterestRefinement(HistoryProfile.num_fields,
                                         name="interest_refinement")

  def call(self, history: tf.Tensor, mask: tf.Tensor):
    """history float [B, n, d] (padding rows zero), mask float [B, n].

    Returns:
      interests float [B, K, d], routing float [B, K, n].
    """
    profile = self.profile(history, mask)
    item_weights = self.attention(history, _flatten_fields(profile), mask)
    interests, routing = self.routing(history, mask, item_weights)
    return self.refinement(interests, profile), routing
