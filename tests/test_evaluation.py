"""Metrics against hand-computed cases and a dense reference; the merge
against brute force."""

import tracemalloc

import numpy as np
import pytest
import tensorflow as tf

from remi_tf import evaluation
from remi_tf.retrieval import (exact_top_n, is_member_of_row,
                               merge_over_interests,
                               merge_over_interests_numpy)


def _pad(rows, width):
  return np.array([r + [0] * (width - len(r)) for r in rows], np.int32)


def _csr(rows):
  """(target_offsets int64 [U + 1], target_items int32 [total]) of lists."""
  offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
  items = np.array([item for row in rows for item in row], np.int32)
  return offsets.astype(np.int64), items


def test_metrics_hand_computed_with_repeated_targets():
  # Hits at ranks 0 (item 7) and 2 (item 5); |T| = 3 counts the repeat.
  ranked = _pad([[7, 1, 5, 2]], 50)
  metrics = evaluation.ranking_metrics(ranked, *_csr([[5, 5, 7]]))
  dcg = 1.0 + 1.0 / np.log2(4)
  idcg = 1.0 + 1.0 / np.log2(3)
  for n in (20, 50):
    assert metrics[f"recall@{n}"] == pytest.approx(2 / 3)
    assert metrics[f"hr@{n}"] == 1.0
    assert metrics[f"ndcg@{n}"] == pytest.approx(dcg / idcg)


def test_metrics_respect_the_cutoff_and_average_over_users():
  hit_at_30 = list(range(100, 130)) + [4]  # item 4 at rank 30
  ranked = np.stack([_pad([hit_at_30], 50)[0], _pad([[4]], 50)[0]])
  metrics = evaluation.ranking_metrics(ranked, *_csr([[4], [4, 8]]))
  assert metrics["hr@20"] == pytest.approx((0 + 1) / 2)
  assert metrics["hr@50"] == 1.0
  assert metrics["recall@20"] == pytest.approx((0 + 0.5) / 2)
  assert metrics["recall@50"] == pytest.approx((1 + 0.5) / 2)
  assert metrics["ndcg@50"] == pytest.approx((1 / np.log2(32) + 1.0) / 2)


def test_metrics_with_no_hits_and_short_lists():
  ranked = _pad([[1, 2], []], 50)  # fewer than N items, padded with 0
  metrics = evaluation.ranking_metrics(ranked, *_csr([[3], [1]]))
  assert all(value == 0.0 for value in metrics.values())


def test_targets_count_only_for_their_own_user():
  # Item 1 is user 0's only target; user 1 ranks it but holds 2..99.
  ranked = _pad([[1], [1]], 50)
  metrics = evaluation.ranking_metrics(ranked,
                                       *_csr([[1], list(range(2, 100))]))
  assert metrics["recall@20"] == 0.5
  assert metrics["hr@20"] == 0.5


def _dense_metrics(ranked, rows, cutoffs):
  """The metrics by a [U, L, T] comparison of targets padded to the
  longest list."""
  targets = _pad(rows, max(len(r) for r in rows))
  hits = ((ranked[:, :, None] == targets[:, None, :]) &
          (targets[:, None, :] != 0)).any(axis=2) & (ranked != 0)
  num_targets = (targets != 0).sum(axis=1)
  metrics = {}
  for n in cutoffs:
    discount = 1.0 / np.log2(np.arange(n) + 2.0)
    num_hits = hits[:, :n].sum(axis=1)
    dcg = (hits[:, :n] * discount).sum(axis=1)
    ideal = np.array([discount[:k].sum() for k in num_hits])
    with np.errstate(invalid="ignore", divide="ignore"):
      metrics[f"recall@{n}"] = np.nan_to_num(num_hits / num_targets).mean()
      metrics[f"ndcg@{n}"] = np.nan_to_num(dcg / ideal).mean()
    metrics[f"hr@{n}"] = (num_hits > 0).mean()
  return metrics


def test_sparse_metrics_equal_a_dense_reference_on_uneven_lists():
  rng = np.random.default_rng(4)
  # Mostly 1-3 targets, some hundreds, one user with none; ids from a
  # small catalog so that hits and repeated targets are frequent.
  lengths = np.minimum(1 + rng.pareto(0.8, size=300).astype(int), 2000)
  lengths[[17, 200]] = (0, 2000)
  rows = [list(rng.integers(1, 80, size=k)) for k in lengths]
  ranked = np.stack([rng.permutation(80)[:50] for _ in lengths])
  ranked[::7, 30:] = 0  # short lists
  expected = _dense_metrics(ranked, rows, (5, 20, 50))
  for batch_size in (1, 7, 4096):  # batches that split the users unevenly
    metrics = evaluation.ranking_metrics(ranked, *_csr(rows), (5, 20, 50),
                                         batch_size=batch_size)
    assert metrics.keys() == expected.keys()
    for name, value in expected.items():
      assert metrics[name] == pytest.approx(value, abs=1e-12), name


def test_metrics_memory_does_not_grow_with_users_times_longest_list():
  # 2,000 users, one of them with 100,000 targets: a [users, T] boolean
  # would take 200 MB and a [users, 50, T] one 10 GB.
  rng = np.random.default_rng(5)
  rows = [[7]] * 1999 + [list(rng.integers(1, 10**6, size=100_000))]
  target_offsets, target_items = _csr(rows)
  ranked = rng.integers(1, 10**6, size=(2000, 50)).astype(np.int32)
  tracemalloc.start()
  evaluation.ranking_metrics(ranked, target_offsets, target_items)
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert peak < 20 * 2**20


def _brute_force(interests, table, n, exclude=()):
  scores = np.einsum("kd,nd->kn", interests, table).max(axis=0)
  scores[0] = -np.inf
  scores[list(exclude)] = -np.inf
  order = np.argsort(-scores, kind="stable")[:n]
  return order, scores[order]


def test_exact_top_n_equals_brute_force_max_over_interests():
  rng = np.random.default_rng(0)
  interests = rng.normal(size=(6, 4, 8)).astype(np.float32)
  table = rng.normal(size=(301, 8)).astype(np.float32)
  ids, scores = exact_top_n(tf.constant(interests), tf.constant(table), 50)
  for user in range(6):
    expected_ids, expected_scores = _brute_force(interests[user], table, 50)
    np.testing.assert_array_equal(ids[user].numpy(), expected_ids)
    np.testing.assert_allclose(scores[user].numpy(), expected_scores,
                               rtol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_ranking_in_batches_of_any_size_equals_brute_force(batch_size):
  rng = np.random.default_rng(2)
  interests = rng.normal(size=(7, 4, 8)).astype(np.float32)
  table = rng.normal(size=(120, 8)).astype(np.float32)
  histories = np.arange(7)[:, None]  # row u: user u
  ranked = evaluation.rank_by_interests(lambda batch, _: interests[batch[:, 0]], table,
                             histories, 20, batch_size)
  for user in range(7):
    np.testing.assert_array_equal(
        ranked[user], _brute_force(interests[user], table, 20)[0])


def test_exact_top_n_with_exclusions_and_a_small_catalog():
  rng = np.random.default_rng(1)
  interests = rng.normal(size=(3, 2, 4)).astype(np.float32)
  table = rng.normal(size=(8, 4)).astype(np.float32)
  exclude = np.array([[1, 2, 0], [7, 0, 0], [3, 4, 5]], np.int32)
  ids, scores = exact_top_n(tf.constant(interests), tf.constant(table), 10,
                            tf.constant(exclude))
  for user in range(3):
    excluded = [e for e in exclude[user] if e]
    expected, _ = _brute_force(interests[user], table, 7 - len(excluded),
                               excluded)
    got = ids[user].numpy()
    np.testing.assert_array_equal(got[:len(expected)], expected)
    assert np.all(got[len(expected):] == 0)
    assert np.all(np.isneginf(scores[user].numpy()[len(expected):]))


def _tensorflow_merge(ids, scores, n, exclude=None):
  return tuple(result.numpy() for result in merge_over_interests(
      tf.constant(ids), tf.constant(scores), n,
      None if exclude is None else tf.constant(exclude)))


@pytest.fixture(name="merge", params=["tensorflow", "numpy"])
def fixture_merge(request):
  """Both implementations of the merge rule, on numpy inputs."""
  return {"tensorflow": _tensorflow_merge,
          "numpy": merge_over_interests_numpy}[request.param]


def test_merge_removes_duplicates_keeping_the_best_score(merge):
  ids = np.array([[[5, 3, 0], [3, 9, 5]]], np.int32)
  scores = np.array([[[0.9, 0.5, 0.8], [0.7, 0.6, 0.1]]], np.float32)
  merged_ids, merged_scores = merge(ids, scores, 4)
  np.testing.assert_array_equal(merged_ids, [[5, 3, 9, 0]])
  np.testing.assert_allclose(merged_scores[0, :3], [0.9, 0.7, 0.6])
  assert merged_scores[0, 3] == -np.inf


def test_membership_is_per_row():
  values = np.array([[3, 7, 0], [3, 7, 9]], np.int32)
  # Row 0 holds 7; row 1 holds 3 and 9 (9 also beyond row 0's values).
  member_of = is_member_of_row(values, np.array([0, 1, 1]),
                               np.array([7, 3, 9], np.int32))
  np.testing.assert_array_equal(member_of, [[False, True, False],
                                            [True, False, True]])


def test_merge_never_lists_a_candidate_scored_minus_infinity(merge):
  ids = np.array([[[4, 2]]], np.int32)
  scores = np.array([[[1.0, -np.inf]]], np.float32)
  merged_ids, merged_scores = merge(ids, scores, 3)
  np.testing.assert_array_equal(merged_ids, [[4, 0, 0]])
  np.testing.assert_array_equal(merged_scores, [[1.0, -np.inf, -np.inf]])


def _merge_reference(ids, scores, n, exclude=()):
  """Candidates by score, best first (equal scores in candidate order); the
  first of each id kept unless it is padding or excluded."""
  order = np.argsort(-scores.ravel(), kind="stable")
  kept = []
  for position in order:
    item = ids.ravel()[position]
    if item and item not in exclude and item not in [k for k, _ in kept]:
      kept.append((item, scores.ravel()[position]))
  kept = kept[:n]
  return ([k for k, _ in kept] + [0] * (n - len(kept)),
          [s for _, s in kept] + [-np.inf] * (n - len(kept)))


def test_merge_equals_a_reference_with_duplicates_ties_and_exclusions(merge):
  rng = np.random.default_rng(2)
  ids = rng.integers(0, 40, size=(8, 3, 25)).astype(np.int32)
  scores = rng.integers(0, 10, size=(8, 3, 25)).astype(np.float32)  # ties
  exclude = _pad([list(rng.choice(40, size=e, replace=False))
                  for e in (0, 1, 5, 12, 39, 3, 3, 7)], 40)
  exclude[5, 1] = exclude[5, 0]  # a repeated exclusion
  merged_ids, merged_scores = merge(ids, scores, 30, exclude)
  for user in range(8):
    expected_ids, expected_scores = _merge_reference(
        ids[user], scores[user], 30, set(exclude[user]) - {0})
    np.testing.assert_array_equal(merged_ids[user], expected_ids)
    np.testing.assert_array_equal(merged_scores[user], expected_scores)


def test_merge_memory_is_linear_in_the_candidates(merge):
  # 4 interests x 60k candidates and 60k exclusions: a [w, w] or [w, E]
  # comparison would need tens of GB; sorting needs a few MB.
  rng = np.random.default_rng(3)
  ids = rng.integers(1, 100_000, size=(1, 4, 60_000)).astype(np.int32)
  scores = rng.normal(size=(1, 4, 60_000)).astype(np.float32)
  exclude = rng.integers(1, 100_000, size=(1, 60_000)).astype(np.int32)
  merged_ids, merged_scores = merge(ids, scores, 50, exclude)
  best = {}
  for item, score in zip(ids.ravel(), scores.ravel()):
    if item not in best or score > best[item]:
      best[item] = score
  excluded = set(exclude.ravel())
  expected = sorted(((s, i) for i, s in best.items() if i not in excluded),
                    reverse=True)[:50]
  np.testing.assert_array_equal(merged_ids[0], [i for _, i in expected])
  np.testing.assert_array_equal(merged_scores[0], [s for s, _ in expected])
