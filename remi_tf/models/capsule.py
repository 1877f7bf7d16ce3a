"""Dynamic-routing encoders: ComiRec-DR and MIND.

Both map each history item to a prediction per interest (u_hat), then route
for a fixed number of iterations, as `CapsuleNetwork` in the REMI reference
code (Tokkiu/REMI, src/BasicModel.py): routing weights are the softmax of the
routing logits b over all n positions, with padding then set to 0 and NOT
renormalised (a user with 5 of 20 positions starts at 0.05 per item, sum
0.25); interests are squash(weights . u_hat), and b grows by
u_hat . interest. Earlier iterations see u_hat without gradient; the last one
with it, its weights without. The routing returned for REMI's regularizer
keeps the gradient that b's updates carry from u_hat: `remi_tf`'s own
choice, so that RR trains these towers (the reference updates b from
u_hat detached and returns no routing; what the gradient measures:
docs/models.md).

Where the two reference codes differ, REMI's is followed: ComiRec's
TensorFlow `CapsuleNetwork` (THUDM/ComiRec, src/model.py) takes that softmax
over the interests and draws MIND's initial logits from a truncated normal.
Not reproduced: the ReLU projection both add to MIND's interests (REMI on
its book dataset only).
"""

import tensorflow as tf

# Routing iterations of ComiRec-DR and MIND, as the REMI reference code.
ROUTING_ITERATIONS = 3


def routing_weights(logits: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  """Softmax over all positions, then padding zeroed (the reference's).

  Args:
    logits: float [..., n], the routing logits b.
    mask: float [..., n] (broadcastable), 1 for real positions.

  Returns:
    float [..., n]; padding exactly 0, real positions keep their share of
    the softmax over all n, so a row sums to at most 1.
  """
  return tf.nn.softmax(logits, axis=-1) * tf.cast(mask > 0, logits.dtype)


def squash(vectors: tf.Tensor) -> tf.Tensor:
  """Capsule squashing: |s|^2 / (1 + |s|^2) * s / |s|, over the last axis."""
  squared_norm = tf.reduce_sum(tf.square(vectors), axis=-1, keepdims=True)
  scale = squared_norm / (1.0 + squared_norm) / tf.sqrt(squared_norm + 1e-9)
  return scale * vectors


class PerPositionBilinear(tf.keras.layers.Layer):
  """ComiRec-DR's u_hat: a separate d x (K d) map for every position.

  Its predictions are [B, K, n, d]; `pool` and `agreement` are the
  routing's products in that layout.

  The maps start from N(0, 1), as the original ComiRec code
  (`tf.random_normal_initializer()`). With the reference's routing (padding
  zeroed, not renormalised) a Glorot start (std about 0.02) gives
  predictions so small that squash, |s|^2 for small s, leaves the interests
  near zero and the tower does not train on short histories (Recall@50 0.3%
  on amazon-books-38k at 5,000 steps, Pop 4.5%).
  """

  def __init__(self, num_interests: int, seq_len: int, **kwargs):
    super().__init__(**kwargs)
    self.num_interests = num_interests
    self.seq_len = seq_len

  def build(self, input_shape):
    dim = int(input_shape[-1])
    self.maps = self.add_weight(
        name="bilinear", shape=(self.seq_len, dim, self.num_interests * dim),
        initializer=tf.keras.initializers.RandomNormal(stddev=1.0))
    super().build(input_shape)

  def call(self, history: tf.Tensor) -> tf.Tensor:
    """history float [B, n, d] -> u_hat float [B, K, n, d].

    One matmul per position, batched over the positions ([n, B, d] x
    [n, d, K d]): the einsum "bnd,nde->bne" computes the same with
    transposes of its own, 25% slower forward and backward on this CPU."""
    by_position = tf.matmul(tf.transpose(history, [1, 0, 2]), self.maps)
    shape = tf.shape(history)
    by_position = tf.reshape(
        by_position, [shape[1], shape[0], self.num_interests, shape[2]])
    return tf.transpose(by_position, [1, 2, 0, 3])

  @staticmethod
  def pool(routing: tf.Tensor, predictions: tf.Tensor) -> tf.Tensor:
    """routing [B, K, n], predictions [B, K, n, d] -> [B, K, d]: each
    interest's routing-weighted sum of its predictions."""
    return tf.matmul(routing[:, :, None, :], predictions)[:, :, 0, :]

  @staticmethod
  def agreement(predictions: tf.Tensor, interests: tf.Tensor) -> tf.Tensor:
    """predictions [B, K, n, d], interests [B, K, d] -> [B, K, n]: each
    prediction's dot product with its interest."""
    return tf.matmul(predictions, interests[..., None])[..., 0]


class SharedBilinear(tf.keras.layers.Layer):
  """MIND's u_hat: one shared d x d map, the same prediction for every
  interest, so it is kept once: [B, n, d]. Routing with it is routing with
  K copies, without building them or their gradients (with REMI's
  regularizer, its gradient runs through every iteration).

  `pool` and `agreement` are batched matmuls: TensorFlow's CPU einsum, and
  above all its gradient, are several times slower at these shapes (K = 4
  contracted, B = 128)."""

  def __init__(self, num_interests: int, **kwargs):
    super().__init__(**kwargs)
    self.num_interests = num_interests

  def build(self, input_shape):
    self.map = tf.keras.layers.Dense(int(input_shape[-1]), use_bias=False,
                                     name="bilinear")
    super().build(input_shape)

  def call(self, history: tf.Tensor) -> tf.Tensor:
    """history float [B, n, d] -> u_hat float [B, n, d], every interest's."""
    return self.map(history)

  @staticmethod
  def pool(routing: tf.Tensor, predictions: tf.Tensor) -> tf.Tensor:
    """routing [B, K, n], predictions [B, n, d] -> [B, K, d]."""
    return tf.matmul(routing, predictions)

  @staticmethod
  def agreement(predictions: tf.Tensor, interests: tf.Tensor) -> tf.Tensor:
    """predictions [B, n, d], interests [B, K, d] -> [B, K, n]."""
    return tf.matmul(interests, predictions, transpose_b=True)


class DynamicRouting(tf.keras.layers.Layer):
  """Capsule routing from u_hat to K interest capsules.

  Args:
    predictor: the layer giving u_hat from the history, [B, K, n, d] or,
      the same for every interest, [B, n, d], with the routing's products
      in its layout: `pool(routing, predictions)` [B, K, d] and
      `agreement(predictions, interests)` [B, K, n].
    num_interests: K.
    seq_len: n.
    iterations: routing iterations (3).
    random_init: MIND starts the routing logits from N(0, 1), as the
      reference (`torch.randn`); that draw is all that separates its
      interests, whose predictions are identical (from std 0.05 they start
      with a mean cosine near 1). The reference draws afresh for every user
      of every batch; here one draw [K, n] is made at build time and stored
      with the weights (not trained), so that the same history always gets
      the same interests, in training, evaluation and serving alike.
  """

  def __init__(self, predictor: tf.keras.layers.Layer, num_interests: int,
               seq_len: int, iterations: int = ROUTING_ITERATIONS,
               random_init: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.predictor = predictor
    self.num_interests = num_interests
    self.seq_len = seq_len
    self.iterations = iterations
    self.random_init = random_init

  def build(self, input_shape):
    self.initial_logits = self.add_weight(
        name="initial_routing_logits",
        shape=(self.num_interests, self.seq_len), trainable=False,
        initializer=(tf.keras.initializers.RandomNormal(stddev=1.0)
                     if self.random_init else "zeros"))
    super().build(input_shape)

  def call(self, history: tf.Tensor, mask: tf.Tensor):
    """history float [B, n, d], mask float [B, n].

    Returns:
      interests float [B, K, d], routing float [B, K, n] (the last
      iteration's weights; rows sum to at most 1).
    """
    predictions = self.predictor(history)
    mask = mask[:, None, :]
    routing = routing_weights(self._final_logits(predictions, mask), mask)
    interests = squash(self.predictor.pool(tf.stop_gradient(routing),
                                           predictions))
    return interests, routing

  def _final_logits(self, predictions: tf.Tensor, mask: tf.Tensor
                    ) -> tf.Tensor:
    """The last iteration's routing logits b, float [B, K, n] ([1, K, n]
    with a single iteration), from u_hat and mask [B, 1, n].

    Every earlier iteration adds u_hat . interest, its interest without
    gradient, so b's gradient reaches u_hat as the agreement's gradient
    against the sum of those interests: one product in the backward pass,
    however many iterations (automatic differentiation makes one each)."""
    pool, agreement = self.predictor.pool, self.predictor.agreement
    initial = self.initial_logits[None]

    @tf.custom_gradient
    def final_logits(predictions):
      logits, interests = initial, []
      for _ in range(self.iterations - 1):
        interests.append(squash(pool(routing_weights(logits, mask),
                                     predictions)))
        logits += agreement(predictions, interests[-1])

      def gradient(upstream):
        if not interests:
          return tf.zeros_like(predictions)
        with tf.GradientTape() as tape:
          tape.watch(predictions)
          agreed = agreement(predictions, tf.add_n(interests))
        return tape.gradient(agreed, predictions, output_gradients=upstream)

      return logits, gradient

    return final_logits(predictions)


def comirec_dr(num_interests: int, seq_len: int) -> DynamicRouting:
  """The ComiRec-DR encoder: per-position bilinear maps, zero-initialized
  routing."""
  return DynamicRouting(PerPositionBilinear(num_interests, seq_len),
                        num_interests, seq_len, name="comirec_dr")


def mind(num_interests: int, seq_len: int) -> DynamicRouting:
  """The MIND encoder: one shared bilinear map, randomly initialized
  routing."""
  return DynamicRouting(SharedBilinear(num_interests), num_interests, seq_len,
                        random_init=True, name="mind")
