"""PIMIRec (PIMI; Chen et al., IJCAI 2021, "Exploring Periodicity and
Interactivity in Multi-Interest Framework for Sequential Recommendation").

Three modules, as the paper's Figure 2 and the authors' TensorFlow model
(`Model_PIMIRec`, built on the ComiRec code):

- periodicity: the time intervals between the history's items, in days and
  clipped at `time_span`, are embedded; each item gets the attention-weighted
  sum of its intervals' embeddings (weights softmax_j(w . T_ij)), added to
  its item and position embeddings;
- interactivity: a star graph over the history, its satellites the items
  and its centre a virtual node that starts as their mean. In each of
  `num_blocks` rounds every item attends (multi-head) to its previous and
  next items, itself, the centre and its own input embedding, and the
  centre then attends to itself and the updated items; ReLU after each;
- multi-interest extraction: ComiRec-SA's self-attentive routing over the
  graph's outputs, A = softmax(W2 tanh(W1 H)); the interests are A times
  the plain item embeddings.

The routing A [B, K, n] is what REMI's routing regularization acts on, as
for ComiRec-SA; training reads the interest closest to the target (the
`RetrievalModel`'s hard readout) and serving merges the interests, as in
the paper's interest attention and clustering layers.

Times: each history item's time in seconds (int64, any origin: only
differences are used); a negative time means "not known". Pairs with an
unknown time are left out of the periodicity attention, so a history
without time information gets no periodicity term at all: the model is then
PIMI without its periodicity module. Interval 0 (the same day) embeds to
the zero vector, as row 0 of the authors' zero-padded embedding table.
"""

from typing import List

import tensorflow as tf

from remi_tf.models.self_attentive import SelfAttentiveRouting, masked_softmax

# Defaults of the authors' code (main.py: --time_span 64, the value its
# README gives for Books; model.py: three graph rounds). Intervals are
# counted in days, the granularity of the Amazon review times.
TIME_SPAN = 64
INTERVAL_SECONDS = 86400
NUM_BLOCKS = 3
# The heads of every graph attention: 8, the default of the transformer
# helpers (SASRec's `multihead_attention`) such ComiRec-based code calls.
NUM_HEADS = 8

# The helpers the layers call hold no tensor-dependent control flow, so
# AutoGraph is told not to convert them (`do_not_convert`): converting them
# took a third of the time to trace a training step.


class Periodicity(tf.keras.layers.Layer):
  """The periodicity module: each position's time-interval representation.

  Args:
    dim: d.
    time_span: intervals above it count as `time_span`.
    interval_seconds: the length of one interval unit (a day).
  """

  def __init__(self, dim: int, time_span: int = TIME_SPAN,
               interval_seconds: int = INTERVAL_SECONDS, **kwargs):
    super().__init__(**kwargs)
    self.dim = dim
    self.time_span = time_span
    self.interval_seconds = interval_seconds

  def build(self, input_shape):
    # Intervals 1..time_span; interval 0 is the zero vector.
    self.interval_embeddings = self.add_weight(
        name="interval_embeddings", shape=(self.time_span, self.dim),
        initializer="glorot_normal")
    self.score = self.add_weight(name="score", shape=(self.dim,),
                                 initializer="glorot_normal")
    super().build(input_shape)

  @tf.autograph.experimental.do_not_convert
  def intervals(self, times: tf.Tensor) -> tf.Tensor:
    """int64 [B, n, n]: |t_i - t_j| in units, clipped at `time_span` (and
    at 0, where a difference of extreme times overflows int64)."""
    gaps = tf.abs(times[:, :, None] - times[:, None, :])
    return tf.clip_by_value(gaps // self.interval_seconds, 0, self.time_span)

  def call(self, times: tf.Tensor, known: tf.Tensor) -> tf.Tensor:
    """times int64 [B, n]; known float [B, n], 1 where a real position's
    time is known.

    Returns:
      float [B, n, d], sum_j a_ij T_ij over the known j with
      a_ij = softmax_j(w . T_ij); zero where position i's time is unknown.
    """
    table = tf.concat([tf.zeros([1, self.dim], self.interval_embeddings.dtype),
                       self.interval_embeddings], axis=0)  # [span + 1, d]
    intervals = self.intervals(times)
    weights = masked_softmax(
        tf.gather(tf.linalg.matvec(table, self.score), intervals),
        known[:, :, None] * known[:, None, :])  # [B, n, n]
    # sum_j a_ij T_ij = sum_s (sum of a_ij over the j at interval s) T_s:
    # no [B, n, n, d] tensor of embeddings, forward or backward.
    positions = tf.size(times, out_type=tf.int64)
    rows = tf.reshape(tf.range(positions), tf.shape(times))
    per_interval = tf.math.unsorted_segment_sum(
        weights, rows[:, :, None] * (self.time_span + 1) + intervals,
        positions * (self.time_span + 1))
    return _matmul_last(tf.reshape(per_interval, tf.concat(
        [tf.shape(times), [self.time_span + 1]], 0)), table)


def _glorot(fan_in: int, fan_out: int):
  """A Glorot-uniform initializer over the given fans, for a variable that
  stacks the projections of several rounds."""
  limit = (6.0 / (fan_in + fan_out))**0.5

  def initializer(shape, dtype=None):
    return tf.random.uniform(shape, -limit, limit, dtype or tf.float32)

  return initializer


@tf.autograph.experimental.do_not_convert
def _matmul_last(nodes: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
  """nodes float [..., a] times kernel [a, b] -> [..., b] (a 2-D matmul:
  TensorFlow's einsum with an ellipsis is ten times slower on CPU)."""
  product = tf.matmul(tf.reshape(nodes, [-1, kernel.shape[0]]), kernel)
  return tf.reshape(product, tf.concat([tf.shape(nodes)[:-1], [-1]], 0))


@tf.autograph.experimental.do_not_convert
def _neighbourhood(of_items: tf.Tensor, of_centre: tf.Tensor,
                   of_inputs: tf.Tensor) -> tf.Tensor:
  """[B, n, 5, ...]: per item, the rows (of_items [B, n, ...]) of the
  previous item, itself and the next item (rolled: the first item's
  previous and the last position's next are other rows, for the mask to
  leave out), the centre's row (of_centre [B, ...]) and its input's
  (of_inputs [B, n, ...]). Rolls and not slices: the gradient of a slice
  (StridedSliceGrad) was most of the module's time on CPU."""
  return tf.stack(
      [tf.roll(of_items, 1, axis=1), of_items, tf.roll(of_items, -1, axis=1),
       tf.broadcast_to(of_centre[:, None], tf.shape(of_items)), of_inputs],
      axis=2)


class StarInteraction(tf.keras.layers.Layer):
  """The interactivity module: rounds of multi-head attention on a star
  graph whose satellites are the history's items and whose centre is a
  virtual node.

  Each attention is a transformer's: query, key and value projections (with
  biases) to h heads of d // h dimensions, scaled dot products, an output
  projection. The weights of all rounds are stacked in a few variables and
  each node's keys and values are projected once per round, however many
  contexts it belongs to: the graph is small, so the number of ops, not
  arithmetic, sets its cost.

  Args:
    num_blocks: rounds; each has its own satellite attention and, but the
      last (whose centre nothing reads), its own centre attention.
    num_heads: h.
  """

  def __init__(self, num_blocks: int = NUM_BLOCKS,
               num_heads: int = NUM_HEADS, **kwargs):
    super().__init__(**kwargs)
    self.num_blocks = num_blocks
    self.num_heads = num_heads

  def build(self, input_shape):
    dim = int(input_shape[-1])
    self.head_dim = max(1, dim // self.num_heads)
    self.width = self.num_heads * self.head_dim

    def attention(name: str, rounds: int) -> dict:
      # Per round: projections [d, query | key | value], output [width, d].
      return {
          "kernel": self.add_weight(
              name=f"{name}_kernel", shape=(rounds, dim, 3 * self.width),
              initializer=_glorot(dim, self.width)),
          "bias": self.add_weight(name=f"{name}_bias",
                                  shape=(rounds, 3 * self.width),
                                  initializer="zeros"),
          "output_kernel": self.add_weight(
              name=f"{name}_output_kernel", shape=(rounds, self.width, dim),
              initializer=_glorot(self.width, dim)),
          "output_bias": self.add_weight(name=f"{name}_output_bias",
                                         shape=(rounds, dim),
                                         initializer="zeros"),
      }

    self.satellite_weights = attention("satellites", self.num_blocks)
    self.centre_weights = attention("centre", self.num_blocks - 1)
    super().build(input_shape)

  @tf.autograph.experimental.do_not_convert
  def _project(self, weights: dict, block: int, nodes: tf.Tensor,
               first: int, count: int) -> List[tf.Tensor]:
    """nodes float [..., d] -> `count` of their projections (0 query, 1 key,
    2 value) from `first`, each float [..., h, d / h]."""
    columns = slice(first * self.width, (first + count) * self.width)
    projected = (_matmul_last(nodes, weights["kernel"][block, :, columns]) +
                 weights["bias"][block, columns])
    shape = tf.concat([tf.shape(nodes)[:-1],
                       [self.num_heads, self.head_dim]], 0)
    return [tf.reshape(part, shape)
            for part in tf.split(projected, count, axis=-1)]

  @tf.autograph.experimental.do_not_convert
  def _attend(self, weights: dict, block: int, query: tf.Tensor,
              keys: tf.Tensor, values: tf.Tensor,
              mask: tf.Tensor) -> tf.Tensor:
    """query float [..., h, d / h]; keys, values float [..., C, h, d / h];
    mask float [..., C] (1: attend) -> float [..., d]."""
    # Elementwise products: with C = 5 and d / h = 8, batched matrix
    # products of these shapes cost many times more on CPU.
    logits = tf.reduce_sum(query[..., None, :, :] * keys, axis=-1)
    attention = masked_softmax(
        tf.linalg.matrix_transpose(logits) * self.head_dim**-0.5,
        mask[..., None, :])  # [..., h, C]
    attended = tf.reduce_sum(
        tf.linalg.matrix_transpose(attention)[..., None] * values, axis=-3)
    attended = tf.reshape(attended, tf.concat(
        [tf.shape(attended)[:-2], [self.width]], 0))
    return (_matmul_last(attended, weights["output_kernel"][block]) +
            weights["output_bias"][block])

  def call(self, nodes: tf.Tensor, items: tf.Tensor,
           mask: tf.Tensor) -> tf.Tensor:
    """nodes float [B, n, d] (items with their periodicity), items float
    [B, n, d] (item and position embeddings), mask float [B, n]; padding
    rows zero.

    Returns:
      float [B, n, d], the items after the last round; padding rows zero.
    """
    length = tf.reduce_sum(mask, axis=1, keepdims=True)
    centre = tf.reduce_sum(nodes, axis=1) / tf.maximum(length, 1.0)  # [B, d]
    ones = tf.ones_like(mask)
    # Previous item, itself, next item, centre, own input (`_neighbourhood`).
    satellite_mask = tf.stack(
        [tf.pad(mask[:, :-1], [[0, 0], [1, 0]]), ones,
         tf.pad(mask[:, 1:], [[0, 0], [0, 1]]), ones, ones], axis=2)
    centre_mask = tf.concat([ones[:, :1], mask], axis=1)  # [B, n + 1]
    hidden = nodes
    for block in range(self.num_blocks):
      satellites = self.satellite_weights
      query, key, value = self._project(satellites, block, hidden, 0, 3)
      centre_key, centre_value = self._project(satellites, block, centre, 1, 2)
      item_key, item_value = self._project(satellites, block, items, 1, 2)
      updated = self._attend(satellites, block, query,
                             _neighbourhood(key, centre_key, item_key),
                             _neighbourhood(value, centre_value, item_value),
                             satellite_mask)
      hidden = tf.nn.relu(updated) * mask[..., None]
      if block < self.num_blocks - 1:
        star = self.centre_weights
        (query,) = self._project(star, block, centre, 0, 1)
        keys, values = self._project(
            star, block, tf.concat([centre[:, None], hidden], axis=1), 1, 2)
        centre = tf.nn.relu(self._attend(star, block, query, keys, values,
                                         centre_mask))
    return hidden


class PIMIRec(tf.keras.layers.Layer):
  """The PIMIRec multi-interest encoder (reads the history's times).

  Args:
    num_interests: K.
    seq_len: n, the number of learned positions.
    time_span: the largest interval, in units (`Periodicity`).
    interval_seconds: one interval unit, in seconds.
    num_blocks: rounds of the star graph (`StarInteraction`).
    num_heads: heads of the graph's attentions.
  """

  uses_times = True

  def __init__(self, num_interests: int, seq_len: int,
               time_span: int = TIME_SPAN,
               interval_seconds: int = INTERVAL_SECONDS,
               num_blocks: int = NUM_BLOCKS, num_heads: int = NUM_HEADS,
               **kwargs):
    super().__init__(**kwargs)
    self.num_interests = num_interests
    self.seq_len = seq_len
    self.time_span = time_span
    self.interval_seconds = interval_seconds
    self.interaction = StarInteraction(num_blocks, num_heads,
                                       name="interaction")
    self.routing = SelfAttentiveRouting(num_interests, name="routing")

  def build(self, input_shape):
    dim = int(input_shape[-1])
    self.positions = self.add_weight(
        name="position_embeddings", shape=(self.seq_len, dim),
        initializer="glorot_normal")
    self.periodicity = Periodicity(dim, self.time_span, self.interval_seconds,
                                   name="periodicity")
    super().build(input_shape)

  def call(self, history: tf.Tensor, mask: tf.Tensor, times: tf.Tensor):
    """history float [B, n, d] (padding rows zero), mask float [B, n],
    times int64 [B, n] (seconds; negative: not known).

    Returns:
      interests float [B, K, d], routing float [B, K, n].
    """
    items = (history + self.positions[None]) * mask[..., None]
    known = mask * tf.cast(times >= 0, mask.dtype)
    nodes = items + self.periodicity(times, known)
    hidden = self.interaction(nodes, items, mask)
    routing = self.routing(hidden, mask)
    return tf.matmul(routing, history), routing
