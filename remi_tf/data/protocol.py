"""The ComiRec/REMI preprocessing protocol, exactly as the reference scripts.

The reference is `preprocess/data.py` of THUDM/ComiRec and its copy
`process/data.py` of Tokkiu/REMI (Python 3):

1. Count each item's interactions (repeats included); keep items with
   count >= threshold.
2. Keep users with >= threshold interactions on kept items (one pass each,
   in this order; not an iterated k-core).
3. Number kept items 1..N by descending count, ties in order of first
   appearance in the raw file (a stable sort of a dict in insertion order);
   0 is padding.
4. List the kept users in order of first appearance in the raw file, shuffle
   the list with Python's `random` seeded with 1230 (`random.seed(1230)`,
   then `random.shuffle`; nothing else draws from it before), and cut it at
   `int(n * 0.8)` and `int(n * 0.9)` into train, validation and test. Each
   user's interactions are sorted by time, stably (ties keep file order).

Each interaction's time is kept beside its item (`UserSequences.times`),
for the towers that read time intervals (PIMIRec); only differences between
times are meaningful, so they are stored relative to the log's earliest
time, in the raw file's unit (seconds for every dataset: the parsers convert
dates and milliseconds; a `csv` log's integers are taken as seconds).
"""

import dataclasses
import random
from typing import Dict, Optional

import numpy as np

from remi_tf import config
from remi_tf.data.parsing import InteractionLog


class EmptyDatasetError(ValueError):
  """Filtering left nothing to train on; says which threshold did it."""


@dataclasses.dataclass(frozen=True)
class UserSequences:
  """The time-ordered item sequences of one split's users (CSR layout).

  Attributes:
    offsets: int64 [num_users + 1]; user u's items are
      `items[offsets[u]:offsets[u + 1]]`.
    items: int32 [num_interactions], item ids in 1..N, oldest first.
    users: str [num_users], the users' raw ids.
    times: int32 (int64 when the log's time span does not fit in int32)
      [num_interactions], the time of each interaction of `items`, relative
      to the log's earliest time; None when not loaded (the towers that
      read times then have no time information).
  """

  offsets: np.ndarray
  items: np.ndarray
  users: np.ndarray
  times: Optional[np.ndarray] = None

  @property
  def num_users(self) -> int:
    return len(self.users)

  @property
  def lengths(self) -> np.ndarray:
    """int64 [num_users]: each user's sequence length."""
    return np.diff(self.offsets)

  def sequence(self, user: int) -> np.ndarray:
    """The item ids of one user, oldest first."""
    return self.items[self.offsets[user]:self.offsets[user + 1]]

  def item_counts(self, num_items: int) -> np.ndarray:
    """int64 [num_items + 1]: occurrences of each item id in these
    sequences, repeats included (0 for padding)."""
    return np.bincount(self.items, minlength=num_items + 1).astype(np.int64)

  def items_by_popularity(self, num_items: int) -> np.ndarray:
    """int64 [num_items]: the ids 1..N by descending `item_counts`.

    Ties in order of first occurrence (users in split order, each oldest
    first), as ComiRec's Pop (`src/mostpop.py`) counts its training file;
    items absent here last, by id.
    """
    counts = self.item_counts(num_items)
    first = np.full(num_items + 1, len(self.items), dtype=np.int64)
    seen, first_index = np.unique(self.items, return_index=True)
    first[seen] = first_index
    return np.lexsort((first[1:], -counts[1:])).astype(np.int64) + 1


@dataclasses.dataclass(frozen=True)
class ProcessedDataset:
  """The output of the protocol: splits, the raw-id vocabulary, statistics.

  Attributes:
    item_vocab: str [N]; the raw id of item id i is `item_vocab[i - 1]`.
    item_counts: int64 [N + 1]; raw interaction count of each item id
      (0 for padding), the popularity that ordered the ids. It counts the
      validation and test users too: a popularity model ranks by
      `train.items_by_popularity` instead.
    train, valid, test: the user splits.
    stats: users, items, interactions, mean sequence length, split sizes.
  """

  item_vocab: np.ndarray
  item_counts: np.ndarray
  train: UserSequences
  valid: UserSequences
  test: UserSequences
  stats: Dict[str, float]

  @property
  def num_items(self) -> int:
    """N, the number of real items (ids 1..N)."""
    return len(self.item_vocab)


def preprocess(log: InteractionLog, threshold: int,
               seed: int = config.SPLIT_SEED) -> ProcessedDataset:
  """Applies the protocol to an interaction log.

  Args:
    log: the interactions in file order; its vocabularies are in order of
      first appearance, which the item numbering and the split rely on.
    threshold: minimum interactions of a kept item and of a kept user.
    seed: seed of the user shuffle (Python's `random`, as the reference).

  Returns:
    The processed dataset.

  Raises:
    EmptyDatasetError: no item or no user passes the threshold, or too few
      users remain to split 8:1:1.
  """
  if threshold < 1:
    raise ValueError(f"threshold must be >= 1, got {threshold}")
  item_codes, raw_items = log.item_codes, log.item_vocab
  counts = np.bincount(item_codes, minlength=len(raw_items))
  by_popularity = np.argsort(-counts, kind="stable")
  num_kept = int(np.sum(counts >= threshold))
  if num_kept == 0:
    raise EmptyDatasetError(
        f"no item has at least {threshold} interactions (threshold "
        f"{threshold}, most popular item has {counts.max(initial=0)}); lower "
        "--threshold")
  new_id = np.zeros(len(raw_items), dtype=np.int32)
  new_id[by_popularity[:num_kept]] = np.arange(1, num_kept + 1, dtype=np.int32)

  item_ids = new_id[item_codes]
  on_kept = item_ids > 0
  user_codes, raw_users = log.user_codes, log.user_vocab
  kept_per_user = np.bincount(user_codes[on_kept], minlength=len(raw_users))
  kept_users = np.flatnonzero(kept_per_user >= threshold)
  if len(kept_users) < 10:
    raise EmptyDatasetError(
        f"{len(kept_users)} users have at least {threshold} interactions on "
        f"items kept by threshold {threshold}; the 8:1:1 split needs 10. "
        "Lower --threshold or use more data")

  shuffled = kept_users.tolist()
  random.Random(seed).shuffle(shuffled)
  shuffled = np.asarray(shuffled, dtype=np.int64)
  first_valid = int(len(shuffled) * config.TRAIN_FRACTION)
  first_test = int(len(shuffled) *
                   (config.TRAIN_FRACTION + config.VALID_FRACTION))
  timestamps = log.timestamps
  earliest = int(timestamps.min()) if len(timestamps) else 0
  splits = [
      _user_sequences(users, user_codes, item_ids, timestamps, earliest,
                      raw_users)
      for users in (shuffled[:first_valid], shuffled[first_valid:first_test],
                    shuffled[first_test:])
  ]
  item_counts = np.zeros(num_kept + 1, dtype=np.int64)
  item_counts[1:] = counts[by_popularity[:num_kept]]
  interactions = sum(len(split.items) for split in splits)
  stats = {
      "users": int(len(kept_users)),
      "items": int(num_kept),
      "interactions": int(interactions),
      "mean_sequence_length": float(interactions / len(kept_users)),
      "train_users": splits[0].num_users,
      "valid_users": splits[1].num_users,
      "test_users": splits[2].num_users,
      "threshold": int(threshold),
  }
  return ProcessedDataset(
      item_vocab=_narrowest(raw_items[by_popularity[:num_kept]]),
      item_counts=item_counts, train=splits[0], valid=splits[1],
      test=splits[2], stats=stats)


def _user_sequences(users: np.ndarray, user_codes: np.ndarray,
                    item_ids: np.ndarray, timestamps: np.ndarray,
                    earliest: int, raw_users) -> UserSequences:
  """Gathers the kept interactions of `users`, time-sorted per user, and
  their times relative to `earliest`."""
  # int32 positions: at 100M interactions every int64 temporary is 800 MB.
  position = np.full(len(raw_users), -1, dtype=np.int32)
  position[users] = np.arange(len(users), dtype=np.int32)
  rows = np.flatnonzero((item_ids > 0) & (position[user_codes] >= 0))
  row_positions = position[user_codes[rows]]
  order = np.lexsort((timestamps[rows], row_positions))
  rows = rows[order]
  lengths = np.bincount(row_positions[order], minlength=len(users))
  del row_positions, order
  offsets = np.zeros(len(users) + 1, dtype=np.int64)
  np.cumsum(lengths, out=offsets[1:])
  return UserSequences(offsets=offsets, items=item_ids[rows].astype(np.int32),
                       users=_narrowest(raw_users[users]),
                       times=_compact_times(timestamps[rows] - earliest))


def _compact_times(times: np.ndarray) -> np.ndarray:
  """int64 times >= 0 as int32 when they fit (seconds fit for 68 years)."""
  if times.max(initial=0) <= np.iinfo(np.int32).max:
    return times.astype(np.int32)
  return times


def _narrowest(strings: np.ndarray) -> np.ndarray:
  """The strings as a numpy str array as wide as its longest one (a
  vocabulary's slice keeps the width of the whole vocabulary)."""
  return np.array(strings.tolist(), dtype=str)
