"""The raw-id vocabulary: the one mapping between the ids users send (raw
item ids, strings) and the model's item ids (1..N, 0 = padding/unknown)."""

from typing import Iterable, List, Sequence

import numpy as np
import tensorflow as tf

PADDING = ""  # the raw id that pads a history
# The time of a history item whose time is not known (real times are >= 0):
# the towers that read time intervals leave it out of them.
NO_TIME = -1


class ItemVocabulary:
  """Raw ids <-> item ids.

  Args:
    raw_ids: str [N]; raw id of item id i is raw_ids[i - 1].
  """

  def __init__(self, raw_ids: Sequence[str]):
    self.raw_ids = np.asarray(raw_ids).astype(str)
    self._index = {raw: i + 1 for i, raw in enumerate(self.raw_ids)}
    if len(self._index) != len(self.raw_ids):
      raise ValueError("the vocabulary holds duplicate raw ids")

  def __len__(self) -> int:
    return len(self.raw_ids)

  def to_ids(self, raw_ids: Iterable[str]) -> List[int]:
    """Item ids of raw ids; unknown ids (and "") map to 0."""
    return [self._index.get(str(raw), 0) for raw in raw_ids]

  def to_raw(self, ids: Sequence[int]) -> List[str]:
    """Raw ids of item ids 1..N."""
    return self.raw_ids[np.asarray(ids, np.int64) - 1].tolist()

  def tower_input(self, ids: Sequence[int], seq_len: int) -> List[str]:
    """A history as the user tower takes it: unknown ids (0) dropped
    first, then the last `seq_len` known ones as raw ids, oldest first,
    right-padded with "" (as the training histories).

    Args:
      ids: a history's item ids (`to_ids`), oldest first.
      seq_len: the tower's history length.
    """
    known = [i for i in ids if i][-seq_len:] if seq_len else []
    return self.to_raw(known) + [PADDING] * (seq_len - len(known))

  def lookup_table(self) -> tf.lookup.StaticHashTable:
    """The same mapping as an in-graph table (core TF ops), default 0."""
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(self.raw_ids, tf.string),
            tf.range(1, len(self.raw_ids) + 1, dtype=tf.int32)),
        default_value=0)


def compact_order(ids: tf.Tensor) -> tf.Tensor:
  """int32 [B, L]: for item ids int [B, L], the order that puts the known
  ones first, in their order, and the 0s (padding, unknown ids) after them:
  gathered by it, the ids (and their times) are histories as the towers were
  trained on, wherever a client put the unknown ids."""
  return tf.argsort(tf.cast(tf.equal(ids, 0), tf.int32), axis=1, stable=True)
