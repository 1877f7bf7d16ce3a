"""ComiRec-SA: interests as self-attentive pooling of the history.

Routing A = softmax over positions of W2 tanh(W1 (H + P)), padding masked;
interests V = A H. Position embeddings P enter the routing only.
"""

import tensorflow as tf

from remi_tf.models import positions

# Added to the routing logits of padding positions; softmax sends them to 0.
_PADDING_LOGIT = -2.0**32 + 1


@tf.custom_gradient
def narrow_matmul(inputs: tf.Tensor, kernel: tf.Tensor):
  """inputs [R, h] @ kernel [h, k] for a narrow k, with a faster gradient.

  TensorFlow's gradient of the kernel, inputs^T @ upstream, is a [h, R] x
  [R, k] product that its CPU MatMul runs about 3.5x slower than the same
  product written as (upstream^T @ inputs)^T, whose output rows are long
  (ComiRec-SA's w2 at Gowalla shapes: 3.1 against 0.85 ms on one core).
  The values are the same products, summed in another order.
  """
  def gradient(upstream):
    return (tf.matmul(upstream, kernel, transpose_b=True),
            tf.transpose(tf.matmul(upstream, inputs, transpose_a=True)))
  return tf.matmul(inputs, kernel), gradient


class NarrowDense(tf.keras.layers.Dense):
  """A bias-free, linear `Dense` to few units, through `narrow_matmul`.

  Its weights are those of the `Dense` it replaces (kernel [h, units]), so
  checkpoints are unchanged. Inputs are [R, h].
  """

  def __init__(self, units: int, **kwargs):
    super().__init__(units, **{**kwargs, "use_bias": False})

  def call(self, inputs: tf.Tensor) -> tf.Tensor:
    # The kernel's value, read here: a distributed variable read inside
    # the custom gradient would count as a variable that it must handle.
    return narrow_matmul(inputs, tf.convert_to_tensor(self.kernel))


def masked_softmax(logits: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  """Softmax over the last axis with masked-out entries at exactly 0.

  Args:
    logits: float [..., n].
    mask: float [..., n] (broadcastable), 1 for real positions.

  Returns:
    float [..., n]; a row with no real position is all zeros.
  """
  weights = tf.nn.softmax(tf.where(mask > 0, logits, _PADDING_LOGIT), axis=-1)
  return weights * tf.cast(mask > 0, weights.dtype)


class SelfAttentiveRouting(tf.keras.layers.Layer):
  """A = masked softmax over positions of W2 tanh(W1 x), one row per interest.

  Args:
    num_interests: K.
    hidden_factor: W1 maps d to hidden_factor * d (4 in ComiRec).
  """

  def __init__(self, num_interests: int, hidden_factor: int = 4, **kwargs):
    super().__init__(**kwargs)
    self.num_interests = num_interests
    self.hidden_factor = hidden_factor

  def build(self, input_shape):
    dim = int(input_shape[-1])
    self.hidden = tf.keras.layers.Dense(dim * self.hidden_factor,
                                        activation="tanh", use_bias=False,
                                        name="w1")
    self.logits = NarrowDense(self.num_interests, name="w2")
    super().build(input_shape)

  def call(self, inputs: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """inputs float [B, n, d], mask float [B, n] -> routing float [B, K, n].

    The MLP runs on the real positions only: a padding position's logits
    are masked out, so computing them would change nothing but the cost
    (the MLP is most of the tower's FLOPs, and histories shorter than n
    are common: every target position from the 5th on gives an example).
    """
    real = positions.RealPositions(mask > 0)
    logits = real.expand(self.logits(self.hidden(real.compact(inputs))))
    return masked_softmax(tf.transpose(logits, [0, 2, 1]), mask[:, None, :])


class ComiRecSA(tf.keras.layers.Layer):
  """The ComiRec-SA multi-interest encoder.

  Args:
    num_interests: K.
    seq_len: n, the number of learned positions.
  """

  def __init__(self, num_interests: int, seq_len: int, **kwargs):
    super().__init__(**kwargs)
    self.num_interests = num_interests
    self.seq_len = seq_len
    self.routing = SelfAttentiveRouting(num_interests, name="routing")

  def build(self, input_shape):
    self.positions = self.add_weight(
        name="position_embeddings", shape=(self.seq_len, int(input_shape[-1])),
        initializer="glorot_normal")
    super().build(input_shape)

  def call(self, history: tf.Tensor, mask: tf.Tensor):
    """history float [B, n, d] (padding rows zero), mask float [B, n].

    Returns:
      interests float [B, K, d], routing float [B, K, n].
    """
    routing = self.routing(history + self.positions[None], mask)
    return tf.matmul(routing, history), routing
