"""The ComiRec protocol (`preprocess`), the npz cache and `load_dataset`,
against a plain-Python reference of the protocol."""

import calendar
import collections
import dataclasses
import gzip
import hashlib
import os
import random
import shutil
import time

import numpy as np
import pytest

from conftest import FIXTURES
from remi_tf import config
from remi_tf.data import (EmptyDatasetError, ProcessedDataset, cache,
                          load_dataset, parsing, preprocess, registry)

GOWALLA_SLICE = os.path.join(FIXTURES, "gowalla-slice",
                             "loc-gowalla_totalCheckins.80-users.txt.gz")
AMAZON_SLICE = os.path.join(FIXTURES, "amazon-books-slice",
                            "interactions.2k-users.csv.gz")
SPLITS = ("train", "valid", "test")


def make_log(rows):
  """An interaction log from [(user, item, timestamp)], in that order."""
  users, items, stamps = zip(*rows)
  return parsing.interaction_log(users, items, stamps)


def reference(rows, threshold):
  """The protocol in plain Python, without the split.

  Returns:
    (item ids in order 1..N, raw count of every item, {user: raw items
    oldest first}).
  """
  counts = collections.Counter(item for _, item, _ in rows)
  first = {}
  for index, (_, item, _) in enumerate(rows):
    first.setdefault(item, index)
  kept_items = {item for item, count in counts.items() if count >= threshold}
  per_user = collections.Counter(user for user, item, _ in rows
                                 if item in kept_items)
  kept_users = {user for user, count in per_user.items() if count >= threshold}
  vocab = sorted(kept_items, key=lambda item: (-counts[item], first[item]))
  sequences = collections.defaultdict(list)
  for user, item, stamp in rows:
    if user in kept_users and item in kept_items:
      sequences[user].append((stamp, item))
  return vocab, counts, {
      user: [item for _, item in sorted(events, key=lambda pair: pair[0])]
      for user, events in sequences.items()}


def decoded(dataset):
  """{raw user: raw items oldest first} over all splits (checks they are a
  partition of the users and the CSR layout)."""
  out = {}
  for name in SPLITS:
    split = getattr(dataset, name)
    assert split.offsets.dtype == np.int64
    assert split.items.dtype == np.int32
    assert split.offsets[0] == 0 and split.offsets[-1] == len(split.items)
    assert np.all(np.diff(split.offsets) >= 0)
    assert len(split.offsets) == split.num_users + 1
    for index, user in enumerate(split.users):
      assert user not in out, f"user {user} in two splits"
      out[str(user)] = [str(dataset.item_vocab[item - 1])
                        for item in split.sequence(index)]
  return out


def assert_matches_reference(dataset, rows, threshold):
  vocab, counts, sequences = reference(rows, threshold)
  assert list(dataset.item_vocab) == vocab
  assert dataset.num_items == len(vocab)
  assert dataset.item_counts.dtype == np.int64
  assert list(dataset.item_counts) == [0] + [counts[item] for item in vocab]
  assert decoded(dataset) == sequences
  assert_stats_consistent(dataset)


def assert_stats_consistent(dataset):
  stats = dataset.stats
  splits = [getattr(dataset, name) for name in SPLITS]
  total = sum(len(split.items) for split in splits)
  assert stats["users"] == sum(split.num_users for split in splits)
  assert stats["items"] == dataset.num_items == len(dataset.item_counts) - 1
  assert stats["interactions"] == total
  assert stats["mean_sequence_length"] == pytest.approx(total /
                                                        stats["users"])
  for name, split in zip(SPLITS, splits):
    assert stats[f"{name}_users"] == split.num_users
    if len(split.items):
      assert split.items.min() >= 1
      assert split.items.max() <= dataset.num_items
  n = stats["users"]
  assert stats["train_users"] == int(0.8 * n)
  assert stats["valid_users"] == int(0.9 * n) - int(0.8 * n)


def random_rows(seed, num_users=40, num_items=30, length=12):
  """A random log with repeats, popularity skew and many equal times."""
  rng = np.random.default_rng(seed)
  weights = 1.0 / np.arange(1, num_items + 1)
  rows = []
  for _ in range(num_users * length):
    user = f"u{rng.integers(num_users)}"
    item = f"i{rng.choice(num_items, p=weights / weights.sum())}"
    rows.append((user, item, int(rng.integers(0, 6))))
  return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [1, 3, 6])
def test_preprocess_matches_plain_python_reference(seed, threshold):
  rows = random_rows(seed)
  dataset = preprocess(make_log(rows), threshold=threshold)
  assert_matches_reference(dataset, rows, threshold)


def one_pass_rows():
  """A log where one pass and an iterated k-core differ (threshold 2).

  Ten core users see X and Y. Item Z has count 3 (w1, w2, v), so it is
  kept; w1 and w2 have only one interaction on kept items (P1, P2 have
  count 1), so they are dropped, although they have 2 raw interactions. An
  iterated 2-core would then drop Z (count 1 left) and with it user v.
  """
  rows = []
  for index in range(10):
    rows += [(f"c{index}", "X", 2 * index), (f"c{index}", "Y", 2 * index + 1)]
  rows += [("w1", "Z", 100), ("w1", "P1", 101), ("w2", "P2", 102),
           ("w2", "Z", 103), ("v", "X", 104), ("v", "Z", 105)]
  return rows


def test_item_then_user_threshold_in_one_pass_each():
  dataset = preprocess(make_log(one_pass_rows()), threshold=2)
  sequences = decoded(dataset)
  assert list(dataset.item_vocab) == ["X", "Y", "Z"]
  assert list(dataset.item_counts) == [0, 11, 10, 3]
  assert sequences["v"] == ["X", "Z"]  # kept: Z survived the item pass
  assert "w1" not in sequences and "w2" not in sequences
  assert sorted(sequences) == sorted([f"c{i}" for i in range(10)] + ["v"])
  assert dataset.stats == {
      "users": 11, "items": 3, "interactions": 22,
      "mean_sequence_length": 2.0, "train_users": 8, "valid_users": 1,
      "test_users": 2, "threshold": 2}


def test_item_ids_by_descending_count_ties_by_first_appearance():
  # Counts: b 3, d 3, a 3, c 5, e 1; first appearance b, d, a, c, e.
  items = ["b", "d", "a", "c", "c", "b", "d", "a", "c", "b", "d", "a", "c",
           "c", "e"]
  rows = [(f"u{index % 10}", item, index) for index, item in
          enumerate(items)]
  dataset = preprocess(make_log(rows), threshold=1)
  assert list(dataset.item_vocab) == ["c", "b", "d", "a", "e"]
  assert list(dataset.item_counts) == [0, 5, 3, 3, 3, 1]
  assert dataset.item_vocab.dtype.kind == "U"
  assert_matches_reference(dataset, rows, 1)


def test_repeat_interactions_count():
  # r is seen 3 times by one user: with threshold 3 it is kept, and that
  # user has 3 interactions on kept items.
  rows = [(f"u{i}", "common", i) for i in range(10)]
  rows += [("u0", "r", 20), ("u0", "r", 21), ("u0", "r", 22)]
  rows += [(f"u{i}", "common", 30 + i) for i in range(10)]
  rows += [(f"u{i}", "common", 40 + i) for i in range(10)]
  dataset = preprocess(make_log(rows), threshold=3)
  assert list(dataset.item_vocab) == ["common", "r"]
  assert list(dataset.item_counts) == [0, 30, 3]
  assert decoded(dataset)["u0"] == ["common", "r", "r", "r", "common",
                                    "common"]


def test_each_users_items_sorted_by_time_stably():
  # u's file order: (a 5) (b 3) (c 5) (d 3) (e 1); fillers make c and d more
  # popular than a and b, so sorting ties by item id would reorder them.
  rows = [("u", "a", 5), ("u", "b", 3), ("u", "c", 5), ("u", "d", 3),
          ("u", "e", 1)]
  for index in range(10):
    rows += [(f"f{index}", "c", 0), (f"f{index}", "d", 0)]
  dataset = preprocess(make_log(rows), threshold=1)
  assert dataset.item_vocab[0] in ("c", "d")
  assert decoded(dataset)["u"] == ["e", "b", "d", "a", "c"]


@pytest.mark.parametrize("num_users", [10, 11, 19, 23, 57, 100])
def test_split_sizes(num_users):
  rows = [(f"user{index}", "item", index) for index in range(num_users)]
  dataset = preprocess(make_log(rows), threshold=1)
  sizes = [getattr(dataset, name).num_users for name in SPLITS]
  first_valid, first_test = int(0.8 * num_users), int(0.9 * num_users)
  assert sizes == [first_valid, first_test - first_valid,
                   num_users - first_test]
  assert sorted(sum((list(getattr(dataset, name).users) for name in SPLITS),
                    [])) == sorted(f"user{i}" for i in range(num_users))


def split_users(dataset):
  return [list(getattr(dataset, name).users) for name in SPLITS]


def reference_split(rows, threshold, seed=config.SPLIT_SEED):
  """The user split of the reference script (ComiRec preprocess/data.py,
  REMI process/data.py), step by step: users in a dict in order of first
  appearance, one filter pass, `random.seed(1230)`, `random.shuffle`, cuts at
  int(n * 0.8) and int(n * 0.9)."""
  users = {}
  item_count = collections.Counter()
  for user, item, _ in rows:
    item_count[item] += 1
    users.setdefault(user, []).append(item)
  kept_items = {item for item, count in item_count.items()
                if count >= threshold}
  user_ids = [user for user, items in users.items()
              if sum(item in kept_items for item in items) >= threshold]
  state = random.getstate()
  try:
    random.seed(seed)
    random.shuffle(user_ids)
  finally:
    random.setstate(state)
  split_1, split_2 = int(len(user_ids) * 0.8), int(len(user_ids) * 0.9)
  return [user_ids[:split_1], user_ids[split_1:split_2], user_ids[split_2:]]


def interleaved_rows():
  """23 kept users whose first appearance is neither sorted nor numeric,
  some first seen on a dropped item, and two dropped users early in the
  file (threshold 2)."""
  names = ["q", "b7", "a", "zz", "m1", "c", "b10", "x", "k", "b2", "f", "y",
           "n", "e", "w", "g", "b1", "p", "d", "s", "h", "t", "j"]
  rows = [("dropped1", "hot", 0), ("dropped2", "warm", 1)]
  for index, name in enumerate(names):
    first_item = "rare" if index % 3 == 0 else "hot"
    rows.append((name, first_item + (str(index) if first_item == "rare"
                                     else ""), 10 + index))
  for index, name in enumerate(reversed(names)):
    rows += [(name, "hot", 100 + index), (name, "warm", 200 + index)]
  return names, rows


def test_user_split_is_the_reference_scripts():
  names, rows = interleaved_rows()
  expected = reference_split(rows, threshold=2)
  # The list the reference shuffles: kept users by first appearance.
  assert sorted(sum(expected, [])) == sorted(names)
  dataset = preprocess(make_log(rows), threshold=2)
  assert split_users(dataset) == expected
  assert [len(users) for users in expected] == [18, 2, 3]
  # Users keep the shuffled order inside each split, as the reference's
  # user ids do.
  for name, users in zip(SPLITS, expected):
    assert list(getattr(dataset, name).users) == users


def test_user_split_follows_first_appearance_in_the_file():
  names, rows = interleaved_rows()
  base = split_users(preprocess(make_log(rows), threshold=2))
  # Moving later rows around keeps every user's first appearance: same split.
  head, tail = rows[:25], rows[25:]
  assert split_users(preprocess(make_log(head + tail[::-1]), threshold=2)) \
      == base
  # Reversing who appears first changes the shuffled list, as in the
  # reference: the split is a function of first-appearance order.
  swapped = head[:2] + head[2:][::-1] + tail
  moved = split_users(preprocess(make_log(swapped), threshold=2))
  assert moved == reference_split(swapped, threshold=2)
  assert moved != base


def test_split_is_determined_by_the_seed():
  rows = [(f"user{index}", f"item{index % 3}", index) for index in range(100)]
  log = make_log(rows)
  default = preprocess(log, threshold=1)
  assert split_users(default) == split_users(
      preprocess(log, threshold=1, seed=config.SPLIT_SEED))
  assert split_users(default) == split_users(preprocess(make_log(rows),
                                                        threshold=1))
  other = preprocess(log, threshold=1, seed=7)
  assert split_users(other) == split_users(preprocess(log, threshold=1,
                                                      seed=7))
  assert split_users(other) != split_users(default)
  # A real shuffle, not the order of first appearance.
  assert split_users(default)[0] != [f"user{i}" for i in range(80)]
  # The seed moves users between splits, it does not change what they are.
  assert decoded(other) == decoded(default)
  assert list(other.item_vocab) == list(default.item_vocab)


@pytest.mark.parametrize("seed", [0, 1])
def test_training_item_counts_and_popularity_order(seed):
  rows = random_rows(seed, num_items=60)
  held_out = str(preprocess(make_log(rows), threshold=3).test.users[0])
  rows += [(held_out, "unseen in training", 10 + index) for index in range(3)]
  dataset = preprocess(make_log(rows), threshold=3)
  sequences = decoded(dataset)
  counts = collections.Counter()  # insertion order: first occurrence
  for user in dataset.train.users:
    counts.update(sequences[str(user)])
  vocab = list(dataset.item_vocab)
  train_counts = dataset.train.item_counts(dataset.num_items)
  assert train_counts.dtype == np.int64
  assert list(train_counts) == [0] + [counts[item] for item in vocab]
  assert np.all(train_counts <= dataset.item_counts)
  ranking = dataset.train.items_by_popularity(dataset.num_items)
  absent = [item for item in vocab if item not in counts]
  assert [vocab[i - 1] for i in ranking] == sorted(
      counts, key=counts.get, reverse=True) + absent
  assert "unseen in training" in absent


def test_threshold_removing_every_item_names_it():
  # Ten users with 4 interactions each; each item has 10.
  rows = [(f"u{index % 10}", f"i{index % 4}", index) for index in range(40)]
  with pytest.raises(EmptyDatasetError, match=r"threshold 11\b") as error:
    preprocess(make_log(rows), threshold=11)
  assert "at least 11" in str(error.value)
  assert "users" not in str(error.value)  # the item threshold did it
  assert isinstance(error.value, ValueError)
  assert preprocess(make_log(rows), threshold=4).stats["items"] == 4


def test_fewer_than_ten_users_is_an_error():
  rows = [(f"u{index}", "i", index) for index in range(9)]
  with pytest.raises(EmptyDatasetError, match="threshold 1") as error:
    preprocess(make_log(rows), threshold=1)
  assert "9 users" in str(error.value) and "10" in str(error.value)


def test_user_threshold_leaving_fewer_than_ten_users():
  # 12 users; only 9 have 2 interactions.
  rows = [(f"u{index}", "i", index) for index in range(12)]
  rows += [(f"u{index}", "j", 20 + index) for index in range(9)]
  with pytest.raises(EmptyDatasetError, match="threshold 2") as error:
    preprocess(make_log(rows), threshold=2)
  assert "9 users" in str(error.value)
  assert preprocess(make_log(rows), threshold=1).stats["users"] == 12


@pytest.mark.parametrize("threshold", [0, -3])
def test_threshold_must_be_positive(threshold):
  rows = [(f"u{index}", "i", index) for index in range(12)]
  with pytest.raises(ValueError, match="threshold"):
    preprocess(make_log(rows), threshold=threshold)


# ----------------------------------------------------------------- the cache


def assert_same_dataset(left, right):
  assert isinstance(right, ProcessedDataset)
  for field in ("item_vocab", "item_counts"):
    a, b = getattr(left, field), getattr(right, field)
    assert a.dtype == b.dtype and np.array_equal(a, b), field
  for name in SPLITS:
    for field in ("offsets", "items", "users"):
      a = getattr(getattr(left, name), field)
      b = getattr(getattr(right, name), field)
      assert a.dtype == b.dtype and np.array_equal(a, b), (name, field)
  assert left.stats == right.stats


@pytest.fixture(name="counted_csv_reader")
def fixture_counted_csv_reader(monkeypatch):
  """Counts the calls of the csv parser (through the registry)."""
  calls = []
  original = registry.SOURCES["csv"]

  def read(path):
    calls.append(path)
    return original.read(path)

  monkeypatch.setitem(registry.SOURCES, "csv",
                      dataclasses.replace(original, read=read))
  return calls


def cache_files(home):
  directory = os.path.join(home, "preprocessed")
  return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def test_load_dataset_caches(tmp_path, counted_csv_reader):
  home = str(tmp_path)
  first = load_dataset("csv", raw_file=AMAZON_SLICE, threshold=5,
                       cache_dir=home)
  assert counted_csv_reader == [AMAZON_SLICE]
  (name,) = cache_files(home)
  assert name.startswith("csv-") and name.endswith(".npz")
  path = os.path.join(home, "preprocessed", name)
  stamp = os.stat(path).st_mtime_ns

  second = load_dataset("csv", raw_file=AMAZON_SLICE, threshold=5,
                        cache_dir=home)
  assert counted_csv_reader == [AMAZON_SLICE]  # not parsed again
  assert os.stat(path).st_mtime_ns == stamp
  assert cache_files(home) == [name]
  assert_same_dataset(first, second)
  assert_same_dataset(first, preprocess(
      registry.SOURCES["csv"].read(AMAZON_SLICE), threshold=5))


def test_cache_key_covers_parameters_and_file(tmp_path, counted_csv_reader):
  home = str(tmp_path / "home")
  raw_file = str(tmp_path / "log.csv.gz")
  shutil.copy(AMAZON_SLICE, raw_file)
  base = load_dataset("csv", raw_file=raw_file, threshold=5, cache_dir=home)
  other_threshold = load_dataset("csv", raw_file=raw_file, threshold=4,
                                 cache_dir=home)
  other_seed = load_dataset("csv", raw_file=raw_file, threshold=5, seed=1,
                            cache_dir=home)
  assert len(counted_csv_reader) == 3 and len(cache_files(home)) == 3
  assert other_threshold.stats["threshold"] == 4
  assert other_threshold.stats["users"] > base.stats["users"]
  assert split_users(other_seed) != split_users(base)
  # A changed raw file (new mtime) is parsed again.
  status = os.stat(raw_file)
  os.utime(raw_file, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
  again = load_dataset("csv", raw_file=raw_file, threshold=5, cache_dir=home)
  assert len(counted_csv_reader) == 4 and len(cache_files(home)) == 4
  assert_same_dataset(base, again)


def test_default_threshold_is_the_datasets(tmp_path):
  dataset = load_dataset("csv", raw_file=AMAZON_SLICE, cache_dir=str(tmp_path))
  assert dataset.stats["threshold"] == config.DATASET_DEFAULTS["csv"].threshold


def test_missing_raw_file(tmp_path):
  missing = str(tmp_path / "nope.csv")
  with pytest.raises(FileNotFoundError, match="--raw-file"):
    load_dataset("csv", raw_file=missing, cache_dir=str(tmp_path))
  assert cache_files(str(tmp_path)) == []


def test_failed_parse_leaves_no_cache(tmp_path, monkeypatch):
  def broken(path):
    raise RuntimeError(f"parser crashed on {path}")

  monkeypatch.setitem(registry.SOURCES, "csv", dataclasses.replace(
      registry.SOURCES["csv"], read=broken))
  with pytest.raises(RuntimeError, match="parser crashed"):
    load_dataset("csv", raw_file=AMAZON_SLICE, threshold=5,
                 cache_dir=str(tmp_path))
  assert cache_files(str(tmp_path)) == []


def test_filtered_out_dataset_leaves_no_cache(tmp_path):
  with pytest.raises(EmptyDatasetError):
    load_dataset("csv", raw_file=AMAZON_SLICE, threshold=100000,
                 cache_dir=str(tmp_path))
  assert cache_files(str(tmp_path)) == []


def small_dataset():
  rows = random_rows(0)
  return preprocess(make_log(rows), threshold=2)


def test_cache_round_trip_without_pickle(tmp_path):
  dataset = small_dataset()
  path = str(tmp_path / "sub" / "dir" / "data.npz")
  cache.save(dataset, path)
  assert os.listdir(tmp_path / "sub" / "dir") == ["data.npz"]
  with np.load(path, allow_pickle=False) as arrays:
    assert all(arrays[key].dtype != object for key in arrays.files)
  assert_same_dataset(dataset, cache.load(path))


def test_failed_save_is_atomic(tmp_path, monkeypatch):
  dataset = small_dataset()
  path = str(tmp_path / "data.npz")
  cache.save(dataset, path)
  good = open(path, "rb").read()

  def savez_then_fail(out, **arrays):
    out.write(b"PK\x03\x04 half an npz")
    raise OSError("No space left on device")

  monkeypatch.setattr(cache.np, "savez", savez_then_fail)
  with pytest.raises(OSError, match="No space"):
    cache.save(small_dataset(), path)
  assert os.listdir(tmp_path) == ["data.npz"]  # no .tmp left over
  assert open(path, "rb").read() == good
  with pytest.raises(OSError):
    cache.save(dataset, str(tmp_path / "other.npz"))
  assert os.listdir(tmp_path) == ["data.npz"]


# ------------------------------------------------------- real data, end to end


def gowalla_rows(path):
  """The slice's check-ins as (user, location, unix seconds), in plain
  Python."""
  rows = []
  with gzip.open(path, "rt") as lines:
    for line in lines:
      user, when, _, _, location = line.rstrip("\n").split("\t")
      stamp = calendar.timegm(time.strptime(when, "%Y-%m-%dT%H:%M:%SZ"))
      rows.append((user, location, stamp))
  return rows


def test_gowalla_slice_end_to_end(tmp_path):
  dataset = load_dataset("gowalla", raw_file=GOWALLA_SLICE, threshold=10,
                         cache_dir=str(tmp_path))
  # The numbers in tests/fixtures/gowalla-slice/README.md.
  assert dataset.stats == {
      "users": 58, "items": 204, "interactions": 4756,
      "mean_sequence_length": 82.0, "train_users": 46, "valid_users": 6,
      "test_users": 6, "threshold": 10}
  rows = gowalla_rows(GOWALLA_SLICE)
  assert_matches_reference(dataset, rows, 10)
  assert split_users(dataset) == reference_split(rows, 10)
  assert len(dataset.item_vocab) == dataset.num_items == 204
  assert_same_dataset(dataset, load_dataset(
      "gowalla", raw_file=GOWALLA_SLICE, threshold=10,
      cache_dir=str(tmp_path)))


def test_amazon_slice_as_csv_end_to_end(tmp_path):
  dataset = load_dataset("csv", raw_file=AMAZON_SLICE, threshold=5,
                         cache_dir=str(tmp_path))
  assert dataset.stats == {
      "users": 215, "items": 545, "interactions": 1868,
      "mean_sequence_length": pytest.approx(1868 / 215),
      "train_users": 172, "valid_users": 21, "test_users": 22,
      "threshold": 5}
  rows = [(user, item, int(stamp)) for user, item, stamp in
          (line.split(",") for line in
           gzip.open(AMAZON_SLICE, "rt").read().splitlines()[1:])]
  assert_matches_reference(dataset, rows, 5)
  assert split_users(dataset) == reference_split(rows, 5)
  assert dataset.train.lengths.min() >= 5


def digest(dataset):
  """A hash of every array of a processed dataset, dtypes included."""
  hasher = hashlib.sha256()
  arrays = [dataset.item_vocab, dataset.item_counts] + [
      getattr(getattr(dataset, name), field) for name in SPLITS
      for field in ("offsets", "items", "users")]
  for array in arrays:
    hasher.update(str(array.dtype).encode())
    hasher.update(array.tobytes())
  return hasher.hexdigest()[:16]


@pytest.mark.parametrize("dataset,path,threshold,expected", [
    ("csv", AMAZON_SLICE, 2, "23aada6e1fbcbb7c"),
    ("gowalla", GOWALLA_SLICE, 10, "e120fe0a0b92325e"),
])
def test_output_is_the_pandas_implementations(dataset, path, threshold,
                                              expected):
  # Digests of the output of the earlier implementation (parsers returning
  # str DataFrames, ids factorized by pandas in the protocol), frozen before
  # the parsers were made to stream: the streamed, interned path gives the
  # same item ids, split and sequences, byte for byte.
  processed = preprocess(registry.source(dataset).read(path),
                         threshold=threshold)
  assert digest(processed) == expected
