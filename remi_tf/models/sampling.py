"""Negatives for the sampled softmax, shared by every example of a batch.

`CandidateSampler` draws as TensorFlow's unique candidate samplers
(`tf.random.uniform_candidate_sampler`, `log_uniform_candidate_sampler`
with `unique=True`) do, but statelessly: TF's kernels keep their random state
in the process, so a resumed run would draw other negatives than an
uninterrupted one; here the k-th draw depends only on (seed, k), and k is a
variable of the layer, saved and restored with the model's weights.

Item ids are 1..N (0 is padding); the samplers draw classes 0..N-1, i.e.
item id - 1, so log-uniform favours the most popular ids and never draws
padding.
"""

import dataclasses
import math
from typing import Optional

import tensorflow as tf


@dataclasses.dataclass
class Candidates:
  """One batch's negatives.

  Attributes:
    ids: int [S], the negatives' item ids.
    expected_counts: float [S] or None, the sampler's expected count of each
      (None: no log-Q correction: the full softmax, or a uniform sampler,
      whose correction is the same for every candidate).
    positive_expected_counts: float [B] or None, the same for the positives.
  """

  ids: tf.Tensor
  expected_counts: Optional[tf.Tensor]
  positive_expected_counts: Optional[tf.Tensor]


class CandidateSampler(tf.keras.layers.Layer):
  """Draws S distinct negatives per batch, a pure function of (seed, draw).

  As TF's range samplers with `unique=True`: classes are drawn with
  replacement from the distribution until S distinct ones are found; they
  are kept in the order first drawn, and with T draws used, a class of
  probability p has expected count -expm1(T log1p(-p)) (p S when T = S).
  Log-uniform: P(c) = log((c + 2) / (c + 1)) / log(N + 1).

  Args:
    num_items: N.
    num_negatives: S.
    distribution: "uniform" or "log-uniform" (over popularity-ordered ids).
    seed: seed of the draws.
  """

  DISTRIBUTIONS = ("uniform", "log-uniform")

  def __init__(self, num_items: int, num_negatives: int,
               distribution: str = "uniform", seed: int = 0, **kwargs):
    super().__init__(trainable=False, **kwargs)
    if distribution not in self.DISTRIBUTIONS:
      raise ValueError(f"unknown sampler {distribution!r}; choose one of "
                       f"{sorted(self.DISTRIBUTIONS)} or 'full'")
    if not 0 < num_negatives <= num_items:
      raise ValueError(f"--negatives must be in [1, {num_items}] (the number "
                       f"of items), got {num_negatives}")
    self.num_items = num_items
    self.num_negatives = num_negatives
    self.distribution = distribution
    self.seed = seed
    # Classes drawn per round: one round finds S distinct ones almost
    # always (expected draws: about 1.0 S uniform, 1.65 S log-uniform at
    # Gowalla's size).
    self._round_size = 2 * num_negatives
    self.draws = self.add_weight(name="draws", shape=[], dtype=tf.int64,
                                 initializer="zeros", trainable=False)

  def _classes(self, key: tf.Tensor, count: int) -> tf.Tensor:
    """int64 [count] classes drawn with replacement."""
    if self.distribution == "uniform":
      return tf.random.stateless_uniform([count], key, 0, self.num_items,
                                         dtype=tf.int64)
    unit = tf.random.stateless_uniform([count], key, dtype=tf.float64)
    drawn = tf.cast(tf.exp(unit * math.log1p(self.num_items)), tf.int64) - 1
    return drawn % self.num_items

  def _probability(self, classes: tf.Tensor) -> tf.Tensor:
    """float64, the probability of drawing each class in one try."""
    if self.distribution == "uniform":
      return tf.fill(tf.shape(classes), tf.constant(1 / self.num_items,
                                                    tf.float64))
    classes = tf.cast(classes, tf.float64)
    return tf.math.log((classes + 2) / (classes + 1)) / math.log1p(
        self.num_items)

  def sample(self, positive_ids: tf.Tensor):
    """The next draw, as TF's `sampled_values` triple, in class space.

    Args:
      positive_ids: int [B], the batch's positive item ids.

    Returns:
      (sampled int64 [S], true_expected_count float32 [B, 1],
      sampled_expected_count float32 [S]).
    """
    draw = self.draws.assign_add(1) - 1
    key = tf.stack([tf.constant(self.seed, tf.int64), draw])

    def next_round(drawn):
      round_key = tf.random.experimental.stateless_fold_in(
          key, tf.size(drawn) // self._round_size)
      return [tf.concat([drawn, self._classes(round_key,
                                              self._round_size)], 0)]

    def too_few(drawn):
      return tf.size(tf.unique(drawn).y) < self.num_negatives

    drawn, = tf.while_loop(too_few, next_round,
                           [tf.zeros([0], tf.int64)],
                           shape_invariants=[tf.TensorShape([None])])
    distinct, position = tf.unique(drawn)  # distinct: in order first drawn
    tries = tf.reduce_min(tf.where(
        tf.equal(position, self.num_negatives - 1))) + 1
    sampled = tf.ensure_shape(distinct[:self.num_negatives],
                              [self.num_negatives])
    true_classes = tf.cast(tf.reshape(positive_ids, [-1, 1]), tf.int64) - 1
    return (sampled, self._expected_counts(true_classes, tries),
            self._expected_counts(sampled, tries))

  def _expected_counts(self, classes: tf.Tensor, tries: tf.Tensor
                       ) -> tf.Tensor:
    """float32, as TF's range_sampler: the chance a class is among S
    distinct ones if always `tries` draws were needed."""
    probability = self._probability(classes)
    tries = tf.cast(tries, tf.float64)
    return tf.cast(tf.where(
        tries == self.num_negatives, probability * self.num_negatives,
        -tf.math.expm1(tries * tf.math.log1p(-probability))), tf.float32)

  def call(self, positive_ids: tf.Tensor) -> Candidates:
    """Draws the negatives of a batch with positives int [B].

    Under the uniform distribution every candidate has the same expected
    count, so its log-Q correction would shift each example's logits by one
    constant, which the softmax (and IHN's re-weighting) cancels: the
    counts are left out (None), saving a pass over the logits.
    """
    sampled, true_expected, sampled_expected = self.sample(positive_ids)
    ids = tf.cast(sampled, tf.int32) + 1
    if self.distribution == "uniform":
      return Candidates(ids, expected_counts=None,
                        positive_expected_counts=None)
    return Candidates(ids, expected_counts=sampled_expected,
                      positive_expected_counts=tf.reshape(true_expected, [-1]))


class FullCatalog(tf.keras.layers.Layer):
  """Every item is a negative of every example: the exact softmax."""

  def __init__(self, num_items: int, **kwargs):
    super().__init__(trainable=False, **kwargs)
    self.num_items = num_items

  def call(self, positive_ids: tf.Tensor) -> Candidates:
    del positive_ids  # every item, whatever the positives
    return Candidates(ids=tf.range(1, self.num_items + 1, dtype=tf.int32),
                      expected_counts=None, positive_expected_counts=None)


def make_sampler(name: str, num_items: int, num_negatives: int,
                 seed: int = 0) -> tf.keras.layers.Layer:
  """The sampler called `name`: "uniform", "log-uniform" or "full"."""
  if name == "full":
    return FullCatalog(num_items)
  return CandidateSampler(num_items, num_negatives, name, seed)
