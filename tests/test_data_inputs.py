"""tf.data input: training batches and evaluation examples, checked by brute
force against the split's sequences."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from remi_tf.data import UserSequences
from remi_tf.data.inputs import evaluation_examples, training_dataset

SEQ_LEN = 8
# Users with <= 4 items cannot give a training example.
LENGTHS = (3, 4, 5, 6, 9, 30, 50)


def make_split(lengths, items=None):
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  if items is None:
    # Every item id appears once: an example's target names its user and k.
    items = np.random.default_rng(0).permutation(int(offsets[-1])) + 1
  return UserSequences(offsets=offsets,
                       items=np.asarray(items, dtype=np.int32),
                       users=np.array([f"u{i}" for i in range(len(lengths))]))


@pytest.fixture(name="split", scope="module")
def fixture_split():
  return make_split(LENGTHS)


def batches(split, count, batch_size=64, seed=5, start_step=0,
            seq_len=SEQ_LEN):
  dataset = training_dataset(split, seq_len=seq_len, batch_size=batch_size,
                             seed=seed, start_step=start_step)
  return [{key: value.numpy() for key, value in batch.items()}
          for batch in dataset.take(count)]


def expected_history(sequence, k, seq_len):
  window = list(sequence[max(0, k - seq_len):k])
  return window + [0] * (seq_len - len(window))


def locate(split, examples):
  """(user, k) of every example, asserting its history is the right one."""
  where = {}
  for user in range(split.num_users):
    for k, item in enumerate(split.sequence(user)):
      where[int(item)] = (user, k)
  found = []
  for history, target in zip(examples["history"], examples["target"]):
    user, k = where[int(target)]
    sequence = split.sequence(user)
    assert 4 <= k < len(sequence)
    assert list(history) == expected_history(sequence, k, len(history))
    found.append((user, k))
  return found


def test_shapes_and_dtypes(split):
  dataset = training_dataset(split, seq_len=SEQ_LEN, batch_size=32, seed=1)
  assert dataset.element_spec == {
      "history": tf.TensorSpec([32, SEQ_LEN], tf.int32),
      "target": tf.TensorSpec([32], tf.int32)}
  (batch,) = batches(split, 1, batch_size=32)
  assert batch["history"].shape == (32, SEQ_LEN)
  assert batch["history"].dtype == np.int32
  assert batch["target"].shape == (32,)
  assert batch["target"].dtype == np.int32


def test_every_example_is_a_target_and_the_items_before_it(split):
  found = []
  for batch in batches(split, 4, batch_size=1024):
    found += locate(split, batch)
  users = collections.Counter(user for user, _ in found)
  # Only users with more than 4 items, drawn uniformly (819 expected each).
  assert set(users) == {2, 3, 4, 5, 6}
  assert all(700 < count < 940 for count in users.values()), users
  # Every target position in [4, len) of every usable user is drawn.
  assert set(found) == {(user, k) for user, length in enumerate(LENGTHS)
                        for k in range(4, length) if length > 4}
  # Both short (padded) and long (truncated) histories occur.
  assert any(k < SEQ_LEN for _, k in found)
  assert any(k > SEQ_LEN for _, k in found)


def test_history_longer_than_every_sequence(split):
  (batch,) = batches(split, 1, batch_size=256, seq_len=64)
  assert batch["history"].shape == (256, 64)
  locate(split, batch)
  assert np.all(batch["history"][:, 49:] == 0)


def test_same_seed_and_step_same_batch(split):
  first = batches(split, 3, seed=11)
  second = batches(split, 3, seed=11)
  for left, right in zip(first, second):
    for key in ("history", "target"):
      np.testing.assert_array_equal(left[key], right[key])
  # Different steps and seeds give different batches.
  assert not np.array_equal(first[0]["target"], first[1]["target"])
  other = batches(split, 1, seed=12)[0]
  assert not np.array_equal(first[0]["target"], other["target"])


def test_start_step_continues_the_stream(split):
  stream = batches(split, 5, seed=3)
  resumed = batches(split, 2, seed=3, start_step=3)
  for offset, batch in enumerate(resumed):
    for key in ("history", "target"):
      np.testing.assert_array_equal(batch[key], stream[3 + offset][key])


def test_no_usable_training_user():
  with pytest.raises(ValueError, match="more than 4"):
    training_dataset(make_split((1, 4, 3)), seq_len=4, batch_size=2, seed=0)


def test_evaluation_examples():
  lengths = (1, 2, 4, 5, 10, 23, 7)
  rng = np.random.default_rng(1)
  # Repeats allowed: targets keep them.
  items = rng.integers(1, 6, size=sum(lengths))
  split = make_split(lengths, items)
  examples = evaluation_examples(split, seq_len=4)
  cuts = [int(0.8 * length) for length in lengths]
  assert cuts == [0, 1, 3, 4, 8, 18, 5]
  assert examples.num_users == len(lengths)
  assert examples.histories.dtype == np.int32
  assert examples.target_offsets.dtype == np.int64
  assert examples.target_items.dtype == np.int32
  assert examples.histories.shape == (len(lengths), 4)
  assert examples.target_offsets.shape == (len(lengths) + 1,)
  for user, cut in enumerate(cuts):
    sequence = list(split.sequence(user))
    assert list(examples.histories[user]) == expected_history(sequence, cut, 4)
    assert list(examples.targets(user)) == sequence[cut:]
  assert examples.target_items.shape == (
      sum(length - cut for length, cut in zip(lengths, cuts)),)


def test_evaluation_targets_are_not_padded_to_the_longest_list():
  # One user with 100,000 targets beside two with one: a [users, longest]
  # array would hold 300,000 ids; the examples hold the 100,002 targets.
  lengths = (5, 5, 500_000)
  examples = evaluation_examples(make_split(lengths), seq_len=4)
  assert examples.histories.shape == (3, 4)
  np.testing.assert_array_equal(examples.target_offsets,
                                [0, 1, 2, 100_002])
  assert examples.target_items.shape == (100_002,)


def test_evaluation_examples_match_a_loop_on_random_splits():
  rng = np.random.default_rng(2)
  lengths = rng.integers(1, 60, size=40)
  split = make_split(lengths)
  for seq_len in (1, 5, 20, 80):
    examples = evaluation_examples(split, seq_len=seq_len)
    for user, length in enumerate(lengths):
      sequence = list(split.sequence(user))
      cut = int(0.8 * length)
      assert list(examples.histories[user]) == expected_history(
          sequence, cut, seq_len)
      assert list(examples.targets(user)) == sequence[cut:]


@pytest.mark.parametrize("users", [1, 3, 7, 100, None])
def test_first_users_keep_their_histories_and_targets(users):
  lengths = (5, 9, 12, 6, 30, 8, 11)
  examples = evaluation_examples(make_split(lengths), seq_len=4)
  first = examples.first(users)
  kept = len(lengths) if users is None else min(users, len(lengths))
  assert first.num_users == kept
  assert len(first.target_items) == first.target_offsets[-1]
  for user in range(kept):
    np.testing.assert_array_equal(first.histories[user],
                                  examples.histories[user])
    np.testing.assert_array_equal(first.targets(user), examples.targets(user))
