"""Negatives for the sampled softmax, drawn with TensorFlow's candidate
samplers and shared by every example of a batch.

Item ids are 1..N (0 is padding); the samplers draw classes 0..N-1, i.e.
item id - 1, so log-uniform favours the most popular ids and never draws
padding.
"""

import dataclasses
from typing import Optional

import tensorflow as tf


@dataclasses.dataclass
class Candidates:
  """One batch's negatives.

  Attributes:
    ids: int [S], the negatives' item ids.
    expected_counts: float [S] or None, the sampler's expected count of each
      (None: no log-Q correction, as for the full softmax).
    positive_expected_counts: float [B] or None, the same for the positives.
  """

  ids: tf.Tensor
  expected_counts: Optional[tf.Tensor]
  positive_expected_counts: Optional[tf.Tensor]


class CandidateSampler(tf.keras.layers.Layer):
  """Draws S distinct negatives per batch with a TF candidate sampler.

  Args:
    num_items: N.
    num_negatives: S.
    distribution: "uniform" or "log-uniform" (over popularity-ordered ids).
    seed: op seed of the sampler.
  """

  _SAMPLERS = {
      "uniform": tf.random.uniform_candidate_sampler,
      "log-uniform": tf.random.log_uniform_candidate_sampler,
  }

  def __init__(self, num_items: int, num_negatives: int,
               distribution: str = "uniform", seed: Optional[int] = None,
               **kwargs):
    super().__init__(trainable=False, **kwargs)
    if distribution not in self._SAMPLERS:
      raise ValueError(f"unknown sampler {distribution!r}; choose one of "
                       f"{sorted(self._SAMPLERS)} or 'full'")
    if not 0 < num_negatives <= num_items:
      raise ValueError(f"--negatives must be in [1, {num_items}] (the number "
                       f"of items), got {num_negatives}")
    self.num_items = num_items
    self.num_negatives = num_negatives
    self.distribution = distribution
    self.seed = seed

  def sample(self, positive_ids: tf.Tensor):
    """TF's `sampled_values` triple for these positives, in class space."""
    classes = tf.cast(tf.reshape(positive_ids, [-1, 1]), tf.int64) - 1
    return self._SAMPLERS[self.distribution](
        true_classes=classes, num_true=1, num_sampled=self.num_negatives,
        unique=True, range_max=self.num_items, seed=self.seed)

  def call(self, positive_ids: tf.Tensor) -> Candidates:
    """Draws the negatives of a batch with positives int [B]."""
    sampled, true_expected, sampled_expected = self.sample(positive_ids)
    return Candidates(ids=tf.cast(sampled, tf.int32) + 1,
                      expected_counts=sampled_expected,
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
                 seed: Optional[int] = None) -> tf.keras.layers.Layer:
  """The sampler called `name`: "uniform", "log-uniform" or "full"."""
  if name == "full":
    return FullCatalog(num_items)
  return CandidateSampler(num_items, num_negatives, name, seed)
