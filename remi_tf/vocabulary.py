"""The raw-id vocabulary: the one mapping between the ids users send (raw
item ids, strings) and the model's item ids (1..N, 0 = padding/unknown)."""

from typing import Iterable, List, Sequence

import numpy as np
import tensorflow as tf

PADDING = ""  # the raw id that pads a history


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

  def to_raw(self, ids: Iterable[int]) -> List[str]:
    """Raw ids of item ids 1..N."""
    return [str(self.raw_ids[i - 1]) for i in ids]

  def lookup_table(self) -> tf.lookup.StaticHashTable:
    """The same mapping as an in-graph table (core TF ops), default 0."""
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(self.raw_ids, tf.string),
            tf.range(1, len(self.raw_ids) + 1, dtype=tf.int32)),
        default_value=0)


def pad_history(raw_ids: Sequence[str], seq_len: int) -> List[str]:
  """A request history as the user tower takes it: the last `seq_len` raw
  ids, oldest first, right-padded with "" (as the training histories)."""
  kept = [str(raw) for raw in raw_ids][-seq_len:] if seq_len else []
  return kept + [PADDING] * (seq_len - len(kept))
