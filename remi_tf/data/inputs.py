"""tf.data input: training examples and evaluation examples.

Histories are right-padded with the padding id 0: the kept items come
first, oldest first, then zeros (as the ComiRec/REMI reference iterators do,
so learned position embeddings index positions from the oldest kept item).

When the split holds its interactions' times (`UserSequences.times`), every
history comes with its items' times, aligned position by position and 0 at
padding (int64; only differences between a history's times matter).
"""

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from remi_tf import config
from remi_tf.data.protocol import UserSequences


def training_dataset(split: UserSequences, seq_len: int, batch_size: int,
                     seed: int, start_step: int = 0) -> tf.data.Dataset:
  """An endless stream of training batches, built a whole batch at a time.

  Each example, as in the reference code: a uniformly random training user,
  a target position k uniform in [4, len), the history the up to `seq_len`
  items before k. Batch `step` depends only on (seed, step), so a resumed run
  continues the same stream from `start_step`.

  Args:
    split: the training users; users with fewer than 5 items cannot give an
      example and are skipped.
    seq_len: history length n.
    batch_size: examples per batch B.
    seed: the stream's seed.
    start_step: index of the first batch.

  Returns:
    A dataset of {"history": int32 [B, n], "target": int32 [B]}, and
    "times": int64 [B, n] (the history items' times, 0 at padding) when
    the split holds times.
  """
  usable = np.flatnonzero(split.lengths > config.MIN_TARGET_POSITION)
  if len(usable) == 0:
    raise ValueError("no training user has more than "
                     f"{config.MIN_TARGET_POSITION} interactions")
  starts = tf.constant(split.offsets[usable], tf.int64)
  lengths = tf.constant(split.lengths[usable], tf.int64)
  items = tf.constant(split.items, tf.int32)
  times = None if split.times is None else tf.constant(split.times)
  positions = tf.range(seq_len, dtype=tf.int64)

  def make_batch(step):
    user_seed = tf.stack([tf.cast(seed, tf.int64), step])
    user = tf.random.stateless_uniform([batch_size], user_seed, 0,
                                       len(usable), dtype=tf.int64)
    length = tf.gather(lengths, user)
    fraction = tf.random.stateless_uniform([batch_size], user_seed + [0, 1],
                                           dtype=tf.float64)
    span = tf.cast(length - config.MIN_TARGET_POSITION, tf.float64)
    target_position = config.MIN_TARGET_POSITION + tf.minimum(
        tf.cast(fraction * span, tf.int64), length - 1 -
        config.MIN_TARGET_POSITION)
    first = tf.maximum(target_position - seq_len, 0)
    start = tf.gather(starts, user)
    index = first[:, None] + positions[None, :]
    valid = index < target_position[:, None]
    flat_index = tf.where(valid, start[:, None] + index, 0)
    batch = {
        "history": tf.where(valid, tf.gather(items, flat_index), 0),
        "target": tf.gather(items, start + target_position),
    }
    if times is not None:
      batch["times"] = tf.where(
          valid, tf.cast(tf.gather(times, flat_index), tf.int64), 0)
    return batch

  # One map call builds a whole batch thousands of times faster than a
  # training step consumes it; tf.data's autotuning threads would only
  # compete with the training step for the cores (a third of the step rate
  # on 2 cores), so it is off and a short fixed prefetch suffices.
  options = tf.data.Options()
  options.autotune.enabled = False
  # range, not Dataset.counter: counter is a scan, which calls a function
  # for every step (0.7 ms of a core per Gowalla-sized batch).
  return (tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
          .map(make_batch).prefetch(4).with_options(options))


@dataclasses.dataclass(frozen=True)
class EvaluationExamples:
  """Validation/test users as (history, held-out targets).

  The targets are held sparsely (CSR), as one user may have thousands.

  Attributes:
    histories: int32 [U, n], the last n items of each user's first
      int(0.8 * len) items, right-padded with 0.
    target_offsets: int64 [U + 1]; user u's targets are
      `target_items[target_offsets[u]:target_offsets[u + 1]]`.
    target_items: int32 [total targets], each user's remaining items in time
      order (repeats kept).
    times: int64 [U, n], the times of the histories' items (0 at padding),
      or None when the split holds no times.
  """

  histories: np.ndarray
  target_offsets: np.ndarray
  target_items: np.ndarray
  times: Optional[np.ndarray] = None

  @property
  def num_users(self) -> int:
    return len(self.histories)

  def targets(self, user: int) -> np.ndarray:
    """int32 [T_u]: the held-out items of one user, in time order."""
    return self.target_items[self.target_offsets[user]:
                             self.target_offsets[user + 1]]

  def first(self, users: Optional[int]) -> "EvaluationExamples":
    """The examples of the first `users` users (all of them if None). The
    protocol's splits list users in a seeded shuffled order, so these are
    a random sample of the split."""
    if users is None or users >= self.num_users:
      return self
    return EvaluationExamples(
        histories=self.histories[:users],
        target_offsets=self.target_offsets[:users + 1],
        target_items=self.target_items[:self.target_offsets[users]],
        times=None if self.times is None else self.times[:users])


def evaluation_examples(split: UserSequences,
                        seq_len: int) -> EvaluationExamples:
  """Builds the evaluation examples of a validation or test split."""
  lengths = split.lengths
  cut = (lengths * config.HISTORY_FRACTION).astype(np.int64)
  history_start = np.maximum(cut - seq_len, 0)
  histories = _gather_windows(split.items, split.offsets, history_start,
                              cut - history_start, seq_len).astype(np.int32)
  times = None
  if split.times is not None:
    times = _gather_windows(split.times, split.offsets, history_start,
                            cut - history_start, seq_len).astype(np.int64)
  num_targets = lengths - cut
  target_offsets = np.zeros(len(lengths) + 1, np.int64)
  np.cumsum(num_targets, out=target_offsets[1:])
  # Targets are each sequence's tail: target t of user u is split item
  # offsets[u] + cut[u] + (t - target_offsets[u]).
  shift = np.repeat(split.offsets[:-1] + cut - target_offsets[:-1],
                    num_targets)
  target_items = split.items[shift + np.arange(target_offsets[-1])]
  return EvaluationExamples(histories=histories, target_offsets=target_offsets,
                            target_items=target_items.astype(np.int32),
                            times=times)


def _gather_windows(values: np.ndarray, offsets: np.ndarray,
                    first: np.ndarray, count: np.ndarray,
                    width: int) -> np.ndarray:
  """[U, width]: values first..first+count of each user (a split's items or
  times, CSR by `offsets`), right-padded with 0."""
  columns = np.arange(width)[None, :]
  valid = columns < count[:, None]
  index = offsets[:-1, None] + first[:, None] + columns
  index = np.where(valid, index, 0)
  return np.where(valid, values[index], 0)
