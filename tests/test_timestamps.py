"""Interaction times through the pipeline: the protocol keeps each
interaction's time with its item, the cache stores them and reads them only
when asked (a cache of the format before times is never read), the training
batches and evaluation examples carry each history item's time at its
position (0 at padding), and an export made before times serves as it did,
ignoring the times of a request. (PIMIRec, which reads the times, and its
exports: tests/test_pimirec.py.)"""

import collections
import dataclasses
import json
import os
import shutil

from fastapi import testclient
import numpy as np
import pandas as pd
import tensorflow as tf

from conftest import BOOKS_SLICE
from remi_tf import config, layout, runs, serving
from remi_tf.data import UserSequences, cache, load_dataset, preprocess
from remi_tf.data.inputs import evaluation_examples, training_dataset
from remi_tf.data.parsing import interaction_log

SPLITS = ("train", "valid", "test")


def _times_by_user(dataset, rows):
  """{user: [(time, raw item)]} of the kept interactions of `rows` [(user,
  item, time)], times relative to the log's earliest, sorted."""
  earliest = min(time for _, _, time in rows)
  kept = set(dataset.item_vocab.tolist())
  by_user = collections.defaultdict(list)
  for user, item, time in rows:
    if item in kept:
      by_user[user].append((time - earliest, item))
  return {user: sorted(pairs) for user, pairs in by_user.items()}


def _split_pairs(dataset, split):
  """{user: [(time, raw item)]} of a split, in its order."""
  return {str(user): list(zip(split.times[split.offsets[u]:
                                           split.offsets[u + 1]].tolist(),
                              dataset.item_vocab[split.sequence(u) - 1]))
          for u, user in enumerate(split.users)}


def test_the_protocol_keeps_each_interaction_time_with_its_item():
  rng = np.random.default_rng(0)
  times = 10**9 + rng.choice(10**9, 600, replace=False)
  rows = [(f"u{rng.integers(30)}", f"i{rng.integers(12)}", int(time))
          for time in times]
  dataset = preprocess(interaction_log(*zip(*rows)), threshold=2)
  expected = _times_by_user(dataset, rows)
  for name in SPLITS:
    split = getattr(dataset, name)
    assert split.times.dtype == np.int32  # a span of 32 years fits
    for user, pairs in _split_pairs(dataset, split).items():
      assert pairs == expected[user]  # distinct times: one order


def test_times_beyond_the_int32_range_are_kept_as_int64():
  # Milliseconds over more than 25 days do not fit in int32.
  rows = [(f"u{u}", f"i{i}", (u * 7 + i) * 10**9) for u in range(10)
          for i in range(3)]
  dataset = preprocess(interaction_log(*zip(*rows)), threshold=1)
  expected = _times_by_user(dataset, rows)
  for name in SPLITS:
    split = getattr(dataset, name)
    assert split.times.dtype == np.int64
    assert _split_pairs(dataset, split) == {
        user: expected[user] for user in split.users.tolist()}


def test_the_cache_gives_the_times_of_the_raw_file_only_when_asked(tmp_path):
  home = str(tmp_path)
  built = load_dataset("csv", BOOKS_SLICE, cache_dir=home, times=True)
  cached = load_dataset("csv", BOOKS_SLICE, cache_dir=home, times=True)
  without = [load_dataset("csv", BOOKS_SLICE, cache_dir=home),  # cached
             load_dataset("csv", BOOKS_SLICE,  # built
                          cache_dir=str(tmp_path / "other"))]
  raw = pd.read_csv(BOOKS_SLICE, dtype=str)
  rows = list(zip(raw.user_id, raw.item_id, raw.timestamp.astype(int)))
  expected = _times_by_user(built, rows)
  for name in SPLITS:
    split = getattr(built, name)
    np.testing.assert_array_equal(getattr(cached, name).times, split.times)
    assert all(getattr(dataset, name).times is None for dataset in without)
    for user, pairs in _split_pairs(built, split).items():
      # Equal times keep file order: compare as sorted pairs.
      assert sorted(pairs) == expected[user]
      assert [time for time, _ in pairs] == sorted(time for time, _ in pairs)


def test_a_cache_of_the_format_before_times_is_not_read(tmp_path,
                                                        monkeypatch):
  threshold = config.DATASET_DEFAULTS["csv"].threshold
  with monkeypatch.context() as patch:
    patch.setattr(cache, "FORMAT_VERSION", 3)
    old_key = cache.cache_key(BOOKS_SLICE, dataset="csv", threshold=threshold,
                              seed=config.SPLIT_SEED)
  os.makedirs(tmp_path / "preprocessed")
  (tmp_path / "preprocessed" / f"csv-{old_key}.npz").write_bytes(
      b"a cache without times")
  dataset = load_dataset("csv", BOOKS_SLICE, cache_dir=str(tmp_path),
                         times=True)
  assert len(dataset.train.times) == len(dataset.train.items)


def _split(lengths):
  """A split whose every item id appears once, each interaction's time
  1000 * item + 7 (so a time names the item it belongs to)."""
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  items = np.random.default_rng(0).permutation(int(offsets[-1])) + 1
  return UserSequences(offsets=offsets, items=items.astype(np.int32),
                       users=np.array([f"u{i}" for i in range(len(lengths))]),
                       times=(items * 1000 + 7).astype(np.int32))


def test_training_batches_carry_each_history_item_time():
  split = _split((3, 5, 6, 9, 30, 50))
  with_times = training_dataset(split, seq_len=8, batch_size=64, seed=3)
  without = training_dataset(dataclasses.replace(split, times=None),
                             seq_len=8, batch_size=64, seed=3)
  for batch, plain in zip(with_times.take(4), without.take(4)):
    history, times = batch["history"].numpy(), batch["times"].numpy()
    assert times.dtype == np.int64
    np.testing.assert_array_equal(times,
                                  np.where(history > 0, history * 1000 + 7, 0))
    assert set(plain) == {"history", "target"}
    np.testing.assert_array_equal(plain["history"], history)


def test_evaluation_examples_carry_each_history_item_time():
  split = _split((3, 5, 6, 9, 30, 50))
  examples = evaluation_examples(split, seq_len=8)
  assert examples.times.dtype == np.int64
  np.testing.assert_array_equal(
      examples.times,
      np.where(examples.histories > 0, examples.histories * 1000 + 7, 0))
  first = examples.first(2)
  np.testing.assert_array_equal(first.times, examples.times[:2])
  assert evaluation_examples(dataclasses.replace(split, times=None),
                             seq_len=8).times is None


def test_an_export_from_before_times_serves_as_before(tiny_run, tmp_path):
  """A version without "time_input" in its metadata (exported before times;
  the tiny run's ComiRec-SA takes no times either): its tower takes the
  history only, and the service answers a request with times as without.
  The schema states the times' bounds."""
  old = tmp_path / "export"
  shutil.copytree(tiny_run[1], old)
  path = layout.metadata_path(str(old), 1)
  with open(path) as stored:
    metadata = json.load(stored)
  assert metadata.pop("time_input") is False
  with open(path, "w") as out:
    json.dump(metadata, out)
  serve = tf.saved_model.load(layout.piece_dir(
      str(old), layout.USER_TOWER, 1)).signatures["serving_default"]
  assert set(serve.structured_input_signature[1]) == {"history"}
  model = serving.ServedModel(str(old), lambda version: serving.Recommender(
      serving.load_artifacts(str(old), None, version)))
  assert model.current.artifacts.time_input is False
  history = model.current.artifacts.vocabulary.raw_ids[:5].tolist()
  with testclient.TestClient(serving.create_app(
      model, poll_seconds=None)) as client:
    answers = [client.post("/v1/recommend", json=body) for body in (
        {"history": history, "k": 10},
        {"history": history, "k": 10, "times": [1, 2, 3, 4, 5]})]
    batch = client.post("/v1/recommend:batch", json={"requests": [
        {"history": history, "k": 10, "times": [9]}]})
    negative = client.post("/v1/recommend", json={"history": history,
                                                  "times": [-1]})
    schema = client.get("/openapi.json").json()["components"]["schemas"]
  times = schema["RecommendRequest"]["properties"]["times"]["anyOf"][0]
  assert times["items"]["minimum"] == 0
  assert times["items"]["maximum"] == 2**53 - 1
  assert negative.status_code == 422
  assert [answer.status_code for answer in answers] == [200, 200]
  assert answers[0].json() == answers[1].json()
  assert batch.json()["results"] == [answers[0].json()]


def test_a_run_loads_times_only_for_a_tower_that_reads_them(tmp_path):
  home = str(tmp_path)
  for model in config.MODELS:
    dataset = runs.run_dataset(runs.resolve_config("csv", BOOKS_SLICE,
                                                   model=model), home)
    assert (dataset.train.times is not None) == (model in config.TIME_MODELS)
