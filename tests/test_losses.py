"""The loss against its references: tf.nn.sampled_softmax_loss, a NumPy
Algorithm 1, and a NumPy routing regularizer; the stateless negative
sampler against TF's candidate samplers."""

import numpy as np
import pytest
import tensorflow as tf

from remi_tf import losses
from remi_tf.models import sampling

NUM_ITEMS, DIM, BATCH, NEGATIVES = 60, 8, 16, 40


def numpy_algorithm1(positive, negatives, valid, beta):
  """REMI Algorithm 1 in float64: imp = exp(beta s), Ng = sum(imp e^s) /
  mean(imp), loss = -log(e^s+ / (e^s+ + Ng)), negatives where `valid`."""
  out = []
  for s_pos, s_neg, ok in zip(positive, negatives, valid):
    s = s_neg[ok].astype(np.float64)
    imp = np.exp(beta * s)
    ng = np.sum(imp * np.exp(s)) / np.mean(imp)
    out.append(-np.log(np.exp(s_pos) / (np.exp(s_pos) + ng)))
  return np.array(out)


def _problem(seed):
  rng = np.random.default_rng(seed)
  table = tf.constant(rng.normal(size=(NUM_ITEMS + 1, DIM)), tf.float32)
  queries = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
  # Positives among the most popular ids, so log-uniform samples hit them.
  positives = tf.constant(rng.integers(1, 6, size=BATCH), tf.int32)
  return table, queries, positives


def _our_loss(table, queries, positives, sampled_values, beta):
  """Our loss through the task's layout: [positives; negatives] columns."""
  sampled, true_expected, sampled_expected = sampled_values
  ids = tf.concat([positives, tf.cast(sampled, tf.int32) + 1], 0)
  scores = tf.matmul(queries, tf.gather(table, ids), transpose_b=True)
  log_q = tf.math.log(tf.concat([tf.reshape(true_expected, [-1]),
                                 sampled_expected], 0))
  scores -= log_q
  labels = tf.eye(BATCH, BATCH + NEGATIVES)
  own = tf.concat([tf.eye(BATCH, dtype=tf.bool),
                   tf.ones([BATCH, NEGATIVES], tf.bool)], 1)
  hit = tf.equal(positives[:, None], ids[None, :]) & (labels == 0)
  scores = tf.where(own & ~hit, scores, losses.MIN_FLOAT)
  return losses.SampledSoftmaxIHN(beta)(labels, scores), scores, labels


@pytest.mark.parametrize("distribution", ["uniform", "log-uniform"])
def test_beta_zero_equals_tf_sampled_softmax(distribution):
  table, queries, positives = _problem(0)
  sampler = sampling.CandidateSampler(NUM_ITEMS, NEGATIVES, distribution,
                                      seed=3)
  sampled_values = sampler.sample(positives)
  hits = np.isin(positives.numpy() - 1, sampled_values[0].numpy())
  assert hits.any(), "the sample must contain accidental hits"
  reference = tf.reduce_mean(tf.nn.sampled_softmax_loss(
      weights=table[1:], biases=tf.zeros(NUM_ITEMS),
      labels=tf.cast(positives[:, None] - 1, tf.int64), inputs=queries,
      num_sampled=NEGATIVES, num_classes=NUM_ITEMS,
      sampled_values=sampled_values, remove_accidental_hits=True))
  ours, _, _ = _our_loss(table, queries, positives, sampled_values, 0.0)
  np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-5)


TF_SAMPLERS = {"uniform": tf.random.uniform_candidate_sampler,
               "log-uniform": tf.random.log_uniform_candidate_sampler}


@pytest.mark.parametrize("distribution", ["uniform", "log-uniform"])
def test_sampler_draws_distinct_negatives_of_the_catalog(distribution):
  _, _, positives = _problem(0)
  sampler = sampling.CandidateSampler(NUM_ITEMS, NEGATIVES, distribution,
                                      seed=1)
  for _ in range(3):
    sampled, true_expected, sampled_expected = sampler.sample(positives)
    assert sampled.shape == sampled_expected.shape == [NEGATIVES]
    assert true_expected.shape == [BATCH, 1]
    assert len(set(sampled.numpy())) == NEGATIVES
    assert sampled.numpy().min() >= 0 and sampled.numpy().max() < NUM_ITEMS
  everything = sampling.CandidateSampler(NUM_ITEMS, NUM_ITEMS, distribution)
  np.testing.assert_array_equal(np.sort(everything.sample(positives)[0]),
                                np.arange(NUM_ITEMS))


def test_sampler_draws_depend_only_on_seed_and_draw_count(tmp_path):
  _, _, positives = _problem(0)
  sampler = sampling.CandidateSampler(NUM_ITEMS, NEGATIVES, "log-uniform",
                                      seed=7)
  first = sampler.sample(positives)[0].numpy()
  saved = tf.train.Checkpoint(sampler=sampler).save(str(tmp_path / "ckpt"))
  following = [sampler.sample(positives)[0].numpy() for _ in range(2)]
  assert not np.array_equal(first, following[0])

  # A new process: the same seed draws the same sequence, and a restored
  # sampler continues where the saved one stood.
  fresh = sampling.CandidateSampler(NUM_ITEMS, NEGATIVES, "log-uniform",
                                    seed=7)
  np.testing.assert_array_equal(fresh.sample(positives)[0], first)
  restored = sampling.CandidateSampler(NUM_ITEMS, NEGATIVES, "log-uniform",
                                       seed=7)
  tf.train.Checkpoint(sampler=restored).restore(saved)
  for expected in following:
    np.testing.assert_array_equal(restored.sample(positives)[0], expected)
  other_seed = sampling.CandidateSampler(NUM_ITEMS, NEGATIVES, "log-uniform",
                                         seed=8)
  assert not np.array_equal(other_seed.sample(positives)[0], first)


def _inclusion_statistics(sample, num_items, draws):
  """Over `draws` draws of `sample` (TF's sampled_values triple, every item
  a positive): how often each class was drawn, and its mean expected count.
  """
  everything = tf.range(1, num_items + 1)

  @tf.function
  def run():
    included = tf.zeros([num_items], tf.float64)
    expected = tf.zeros([num_items], tf.float64)
    for _ in tf.range(draws):
      sampled, true_expected, _ = sample(everything)
      included = tf.tensor_scatter_nd_add(
          included, sampled[:, None], tf.ones_like(sampled, tf.float64))
      expected += tf.cast(true_expected[:, 0], tf.float64)
    return included / draws, expected / draws

  return [statistic.numpy() for statistic in run()]


@pytest.mark.parametrize("distribution", ["uniform", "log-uniform"])
def test_sampler_statistics_match_tf_candidate_samplers(distribution):
  num_items, num_negatives, draws = 50, 10, 4000
  ours = _inclusion_statistics(
      sampling.CandidateSampler(num_items, num_negatives, distribution,
                                seed=3).sample, num_items, draws)
  theirs = _inclusion_statistics(
      lambda ids: TF_SAMPLERS[distribution](
          tf.cast(ids[:, None] - 1, tf.int64), 1, num_negatives, True,
          num_items, seed=5), num_items, draws)
  (frequency, expected), (tf_frequency, tf_expected) = ours, theirs
  # Each class is drawn as often as by TF's sampler (4000 draws: a
  # frequency's standard error is below 0.01) ...
  np.testing.assert_allclose(frequency, tf_frequency, atol=0.05)
  # ... with the same expected counts ...
  np.testing.assert_allclose(expected, tf_expected, atol=0.02)
  # ... which are its inclusion frequencies as closely as TF's are (TF's
  # formula assumes a fixed number of tries: exact for uniform, about 0.1
  # off for log-uniform at this size).
  np.testing.assert_allclose(frequency - expected, tf_frequency - tf_expected,
                             atol=0.05)
  if distribution == "uniform":
    np.testing.assert_allclose(frequency, expected, atol=0.05)


@pytest.mark.parametrize("beta", [0.0, 0.1, 1.0, 4.0, 10.0])
def test_ihn_matches_numpy_algorithm1(beta):
  table, queries, positives = _problem(1)
  sampler = sampling.CandidateSampler(NUM_ITEMS, NEGATIVES, "log-uniform",
                                      seed=5)
  ours, scores, labels = _our_loss(table, queries, positives,
                                   sampler.sample(positives), beta)
  scores, labels = scores.numpy(), labels.numpy()
  positive = scores[labels > 0]
  valid = (labels == 0) & (scores > losses.REMOVED_LOGIT)
  reference = numpy_algorithm1(positive, scores, valid, beta).mean()
  np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-5)


def test_ihn_is_finite_with_large_beta_and_logits():
  logits = tf.constant([[300.0, -250.0, 280.0, 120.0],
                        [-400.0, 390.0, 10.0, 0.0]])
  mask = tf.constant([[False, True, True, True], [False, True, True, True]])
  with tf.GradientTape() as tape:
    tape.watch(logits)
    loss = losses.ihn_softmax_cross_entropy(logits[:, 0], logits, mask, 10.0)
  gradient = tape.gradient(loss, logits)
  assert np.all(np.isfinite(loss.numpy()))
  assert np.all(np.isfinite(gradient.numpy()))
  # The second example's positive is far below a negative: a large loss.
  assert loss.numpy()[1] > 100


def algorithm1_loss(positive, logits, mask, beta):
  """REMI Algorithm 1 in TF, float64, the weights and their mean written
  out (imp = exp(beta s), Ng = sum(imp e^s) / mean(imp)), per example."""
  mask = tf.cast(mask, tf.float64)
  importance = tf.exp(beta * logits) * mask
  mean_importance = tf.reduce_sum(importance, 1) / tf.reduce_sum(mask, 1)
  negative_mass = tf.reduce_sum(importance * tf.exp(logits), 1) / (
      mean_importance)
  return -tf.math.log(tf.exp(positive) / (tf.exp(positive) + negative_mass))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 3.0])
def test_ihn_gradient_equals_algorithm1s(beta):
  rng = np.random.default_rng(7)
  logits = tf.constant(rng.normal(scale=2.0, size=(6, 30)))
  mask = tf.constant(rng.random((6, 30)) < 0.8)
  mask = tf.tensor_scatter_nd_update(mask, [[b, 0] for b in range(6)],
                                     [False] * 6)
  gradients = []
  for loss_fn, dtype in ((losses.ihn_softmax_cross_entropy, tf.float32),
                         (algorithm1_loss, tf.float64)):
    x = tf.cast(logits, dtype)
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(loss_fn(x[:, 0], x, mask, beta))
    gradients.append(tf.cast(tape.gradient(loss, x), tf.float64).numpy())
  np.testing.assert_allclose(gradients[0], gradients[1], rtol=1e-4,
                             atol=1e-6)
  # The positive's gradient is -(1 - p+); a removed candidate gets none.
  assert np.all(gradients[0][:, 0] < 0)
  removed = ~mask.numpy()
  removed[:, 0] = False
  assert removed.any() and np.all(gradients[0][removed] == 0.0)


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.5])
def test_keras_loss_gradient_equals_algorithm1s_in_the_tasks_layout(beta):
  # TFRS's layout: example b's positive in column b, the other positives
  # and accidental hits removed (MIN_FLOAT); the gradient is written out.
  rng = np.random.default_rng(11)
  batch, columns = 6, 30
  logits = rng.normal(scale=2.0, size=(batch, columns))
  labels = np.eye(batch, columns)
  removed = (rng.random((batch, columns)) < 0.2) & (labels == 0)
  removed[:, :batch] |= labels[:, :batch] == 0
  scores = tf.constant(np.where(removed, losses.MIN_FLOAT, logits),
                       tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(scores)
    ours = losses.SampledSoftmaxIHN(beta)(tf.constant(labels, tf.float32),
                                          scores)
  gradient = tape.gradient(ours, scores).numpy()

  x = tf.constant(logits)
  with tf.GradientTape() as tape:
    tape.watch(x)
    reference = tf.reduce_mean(algorithm1_loss(
        tf.linalg.diag_part(x[:, :batch]), x, (labels == 0) & ~removed,
        beta))
  np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-5)
  np.testing.assert_allclose(gradient, tape.gradient(reference, x).numpy(),
                             rtol=1e-4, atol=1e-7)
  assert np.all(np.diag(gradient[:, :batch]) < 0)
  assert np.all(gradient[removed] == 0.0)


@pytest.mark.parametrize("beta", [0.0, 1.0, 200.0])
def test_an_example_without_negatives_costs_nothing(beta):
  logits = tf.constant([[2.0, 5.0, -1.0], [2.0, 5.0, -1.0]])
  mask = tf.constant([[False, True, True], [False, False, False]])
  with tf.GradientTape() as tape:
    tape.watch(logits)
    loss = losses.ihn_softmax_cross_entropy(logits[:, 0], logits, mask, beta)
  gradient = tape.gradient(loss, logits).numpy()
  assert loss.numpy()[0] > 1.0
  assert loss.numpy()[1] == 0.0
  assert np.all(np.isfinite(gradient)) and np.all(gradient[1] == 0.0)


def test_hard_negatives_weigh_more_with_larger_beta():
  positive = tf.constant([1.0])
  logits = tf.constant([[1.0, 2.0, -2.0, -2.0, -2.0]])
  mask = tf.constant([[False, True, True, True, True]])
  values = [losses.ihn_softmax_cross_entropy(positive, logits, mask, b)
            .numpy()[0] for b in (0.0, 1.0, 4.0)]
  assert values[0] < values[1] < values[2]


def numpy_routing_regularization(routing, dim):
  total = 0.0
  for user in routing:  # [K, n]
    a = user.T  # [n, K]
    centered = a - a.mean(axis=0, keepdims=True)
    c = centered.T @ centered / dim
    total += np.sum(np.diag(c) ** 2)
  return total


def test_routing_regularization_matches_numpy():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(5, 4, 12)) * 3
  routing = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  ours = losses.routing_regularization(tf.constant(routing, tf.float32), 64)
  np.testing.assert_allclose(ours.numpy(),
                             numpy_routing_regularization(routing, 64),
                             rtol=1e-5)


def test_routing_regularization_gradient_equals_autodiff():
  rng = np.random.default_rng(3)
  logits = tf.constant(rng.normal(size=(5, 4, 12)) * 3, tf.float32)
  mask = tf.constant(rng.random((5, 1, 12)) < 0.7, tf.float32)
  gradients = []
  for regularizer in (losses.routing_regularization, _written_out_rr):
    with tf.GradientTape() as tape:
      tape.watch(logits)
      routing = tf.nn.softmax(logits) * mask
      total = 3.0 * regularizer(routing, 16)
    gradients.append(tape.gradient(total, logits))
  np.testing.assert_allclose(gradients[0], gradients[1], rtol=1e-5,
                             atol=1e-9)
  assert np.abs(gradients[0]).max() > 1e-4


def _written_out_rr(routing, dim):
  centered = routing - tf.reduce_mean(routing, axis=2, keepdims=True)
  variances = tf.reduce_sum(tf.square(centered), axis=2) / dim
  return tf.reduce_sum(tf.square(variances))


def test_routing_regularization_penalizes_collapse():
  n = 10
  uniform = np.full((1, 2, n), 1.0 / n)
  collapsed = np.zeros((1, 2, n))
  collapsed[..., 0] = 1.0
  assert losses.routing_regularization(tf.constant(uniform), 8) == 0.0
  assert losses.routing_regularization(tf.constant(collapsed), 8) > 0.0


def test_routing_diagnostics_separate_spread_from_collapse():
  n = 8
  uniform = tf.fill([2, 3, n], 1.0 / n)
  collapsed = tf.one_hot(tf.zeros([2, 3], tf.int32), n)
  spread = losses.routing_diagnostics(uniform)
  peaked = losses.routing_diagnostics(collapsed)
  np.testing.assert_allclose(spread["routing_max_weight"], 1.0 / n, rtol=1e-6)
  np.testing.assert_allclose(spread["routing_entropy"], np.log(n), rtol=1e-6)
  np.testing.assert_allclose(peaked["routing_max_weight"], 1.0)
  np.testing.assert_allclose(peaked["routing_entropy"], 0.0, atol=1e-7)


def test_routing_diagnostics_read_capsule_routing_over_the_real_items():
  # Capsule routing of a 5-of-20 history: 0.05 on each real item (sum 0.25,
  # padding 0, as the reference), i.e. uniform over the 5 real items.
  capsule = np.zeros((1, 2, 20), np.float32)
  capsule[..., :5] = 0.05
  diagnostics = losses.routing_diagnostics(tf.constant(capsule))
  np.testing.assert_allclose(diagnostics["routing_max_weight"], 0.2,
                             rtol=1e-6)
  np.testing.assert_allclose(diagnostics["routing_entropy"], np.log(5),
                             rtol=1e-6)
