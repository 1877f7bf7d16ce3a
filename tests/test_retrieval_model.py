"""The training model: loss through the TFRS task equals TF's sampled
softmax, hard readout, gradients, and a planted-structure test."""

import numpy as np
import pytest
import tensorflow as tf

from remi_tf import config, evaluation
from remi_tf.data.inputs import EvaluationExamples
from remi_tf.models import RetrievalModel, build_user_tower, hard_readout
from remi_tf.models.sampling import CandidateSampler, Candidates
from remi_tf.optimizers import LazyAdam

NUM_ITEMS, SEQ_LEN, DIM = 40, 6, 8


class ReplayedSampler(tf.keras.layers.Layer):
  """Returns a fixed `sampled_values` triple, so TF's loss can see it too."""

  def __init__(self, sampled_values):
    super().__init__()
    self.sampled_values = sampled_values

  def call(self, positive_ids):
    sampled, true_expected, sampled_expected = self.sampled_values
    return Candidates(tf.cast(sampled, tf.int32) + 1, sampled_expected,
                      tf.reshape(true_expected, [-1]))


def _features(batch=12, seed=0):
  rng = np.random.default_rng(seed)
  history = rng.integers(1, NUM_ITEMS + 1, size=(batch, SEQ_LEN))
  history[:, 4:] = 0
  return {"history": tf.constant(history, tf.int32),
          "target": tf.constant(rng.integers(1, 4, size=batch), tf.int32)}


@pytest.mark.parametrize("distribution", ["uniform", "log-uniform"])
def test_model_loss_equals_tf_sampled_softmax(distribution):
  tf.keras.utils.set_random_seed(1)
  model_config = config.ModelConfig(interests=3, embedding_dim=DIM,
                                    seq_len=SEQ_LEN)
  tower = build_user_tower(model_config, NUM_ITEMS)
  features = _features()
  sampled_values = CandidateSampler(NUM_ITEMS, 20, distribution, seed=4).sample(
      features["target"])
  assert np.isin(features["target"].numpy() - 1, sampled_values[0]).any()
  model = RetrievalModel(tower, ReplayedSampler(sampled_values), beta=0.0,
                         rr_lambda=0.0)
  ours = model.compute_loss(features)

  interests = tower(features["history"])["interests"]
  table = tower.item_table()
  query = hard_readout(interests, tf.gather(table, features["target"]))
  reference = tf.reduce_mean(tf.nn.sampled_softmax_loss(
      weights=table[1:], biases=tf.zeros(NUM_ITEMS),
      labels=tf.cast(features["target"][:, None] - 1, tf.int64),
      inputs=query, num_sampled=20, num_classes=NUM_ITEMS,
      sampled_values=sampled_values, remove_accidental_hits=True))
  np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_uniform_negatives_need_no_log_q_correction(beta):
  """A uniform sampler leaves its (constant) expected counts out: the loss
  is the one corrected by them."""
  tf.keras.utils.set_random_seed(1)
  tower = build_user_tower(config.ModelConfig(
      interests=3, embedding_dim=DIM, seq_len=SEQ_LEN), NUM_ITEMS)
  features = _features()
  assert CandidateSampler(NUM_ITEMS, 20, seed=4)(
      features["target"]).expected_counts is None
  corrected = RetrievalModel(
      tower, ReplayedSampler(CandidateSampler(NUM_ITEMS, 20, seed=4).sample(
          features["target"])), beta=beta, rr_lambda=0.0)
  uncorrected = RetrievalModel(tower, CandidateSampler(NUM_ITEMS, 20, seed=4),
                               beta=beta, rr_lambda=0.0)
  np.testing.assert_allclose(uncorrected.compute_loss(features).numpy(),
                             corrected.compute_loss(features).numpy(),
                             rtol=1e-5)


def test_full_softmax_equals_softmax_over_the_catalog():
  tf.keras.utils.set_random_seed(2)
  model_config = config.ModelConfig(interests=2, embedding_dim=DIM,
                                    seq_len=SEQ_LEN, sampler="full")
  tower = build_user_tower(model_config, NUM_ITEMS)
  from remi_tf.models.sampling import FullCatalog
  model = RetrievalModel(tower, FullCatalog(NUM_ITEMS), 0.0, 0.0)
  features = _features()
  interests = tower(features["history"])["interests"]
  table = tower.item_table()
  query = hard_readout(interests, tf.gather(table, features["target"]))
  logits = tf.matmul(query, table[1:], transpose_b=True)
  reference = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      features["target"] - 1, logits))
  np.testing.assert_allclose(model.compute_loss(features).numpy(),
                             reference.numpy(), rtol=1e-5)


def test_max_interest_scoring_scores_each_candidate_by_its_closest_interest():
  tf.keras.utils.set_random_seed(2)
  model_config = config.ModelConfig(interests=3, embedding_dim=DIM,
                                    seq_len=SEQ_LEN, sampler="full")
  tower = build_user_tower(model_config, NUM_ITEMS)
  from remi_tf.models.sampling import FullCatalog
  harder = RetrievalModel(tower, FullCatalog(NUM_ITEMS), 0.0, 0.0,
                          candidate_scoring="max-interest")
  features = _features()
  interests = tower(features["history"])["interests"]
  logits = tf.reduce_max(tf.einsum("bkd,nd->bkn", interests,
                                   tower.item_table()[1:]), axis=1)
  reference = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      features["target"] - 1, logits))
  harder_loss = harder.compute_loss(features).numpy()
  np.testing.assert_allclose(harder_loss, reference.numpy(), rtol=1e-5)
  # The positive keeps its score and no negative's score falls, so the
  # loss rises: these are the "harder" negatives.
  plain = RetrievalModel(tower, FullCatalog(NUM_ITEMS), 0.0, 0.0)
  assert harder_loss > plain.compute_loss(features).numpy() + 1e-4
  with pytest.raises(ValueError, match="candidate scoring"):
    RetrievalModel(tower, FullCatalog(NUM_ITEMS), 0.0, 0.0,
                   candidate_scoring="min-interest")


def test_hard_readout_picks_the_argmax_interest():
  interests = tf.constant([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]],
                           [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
  positives = tf.constant([[0.1, 2.0], [-3.0, 0.5]])
  np.testing.assert_array_equal(hard_readout(interests, positives).numpy(),
                                [[0.0, 1.0], [-1.0, 0.0]])


def test_gradients_reach_embeddings_and_routing_weights():
  tf.keras.utils.set_random_seed(3)
  model_config = config.ModelConfig(interests=3, embedding_dim=DIM,
                                    seq_len=SEQ_LEN, beta=1.0)
  tower = build_user_tower(model_config, NUM_ITEMS)
  model = RetrievalModel(tower, CandidateSampler(NUM_ITEMS, 10, seed=1),
                         beta=1.0, rr_lambda=100.0)
  with tf.GradientTape() as tape:
    loss = model.compute_loss(_features())
  variables = tower.trainable_variables
  gradients = dict(zip([v.name for v in variables],
                       tape.gradient(loss, variables)))
  names = " ".join(gradients)
  assert "item_embeddings" in names and "w1" in names and "w2" in names
  for name, gradient in gradients.items():
    assert gradient is not None, name
    values = gradient.values if isinstance(gradient, tf.IndexedSlices) else (
        gradient)
    assert np.any(values.numpy() != 0), name


def test_routing_regularization_enters_the_loss():
  tf.keras.utils.set_random_seed(5)
  model_config = config.ModelConfig(interests=3, embedding_dim=DIM,
                                    seq_len=SEQ_LEN)
  tower = build_user_tower(model_config, NUM_ITEMS)
  features = _features()
  sampled_values = CandidateSampler(NUM_ITEMS, 10, seed=2).sample(
      features["target"])
  plain = RetrievalModel(tower, ReplayedSampler(sampled_values), 0.0, 0.0)
  regularized = RetrievalModel(tower, ReplayedSampler(sampled_values), 0.0,
                               1000.0)
  difference = (regularized.compute_loss(features) -
                plain.compute_loss(features)).numpy()
  rr = regularized.trackers["rr_loss"].result().numpy()
  assert rr > 0
  np.testing.assert_allclose(difference, 1000.0 * rr, rtol=1e-4)


def _planted_histories(seed, num_users, clusters, cluster_size, length):
  """int32 [num_users, length]: users interleaving two of the item clusters.

  Item ids are 1 + cluster * cluster_size + offset.
  """
  pair = tf.random.stateless_uniform([num_users, 2], [seed, 0], 0, clusters,
                                     tf.int32)
  second = (pair[:, 0] + 1 + pair[:, 1] % (clusters - 1)) % clusters
  chosen = tf.stack([pair[:, 0], second], axis=1)
  which = tf.random.stateless_uniform([num_users, length], [seed, 1], 0, 2,
                                      tf.int32)
  offset = tf.random.stateless_uniform([num_users, length], [seed, 2], 0,
                                       cluster_size, tf.int32)
  return 1 + tf.gather(chosen, which, batch_dims=1) * cluster_size + offset


@pytest.mark.parametrize("model_name", ["comirec-sa", "comirec-dr", "mind"])
def test_planted_clusters_are_learned(model_name):
  tf.keras.utils.set_random_seed(7)
  clusters, cluster_size, seq_len = 10, 20, 20
  num_items = clusters * cluster_size
  test_users = _planted_histories(10**6, 200, clusters, cluster_size,
                                  seq_len + 10).numpy()
  model_config = config.ModelConfig(model=model_name, interests=4,
                                    embedding_dim=16, seq_len=seq_len,
                                    beta=1.0)
  tower = build_user_tower(model_config, num_items)
  targets = test_users[:, seq_len:]
  examples = EvaluationExamples(
      histories=test_users[:, :seq_len],
      target_offsets=np.arange(0, targets.size + 1, targets.shape[1]),
      target_items=targets.ravel())
  untrained = evaluation.evaluate(tower, examples, cutoffs=(20,))

  def batches(step):
    users = _planted_histories(step, 64, clusters, cluster_size, seq_len + 1)
    return {"history": users[:, :seq_len], "target": users[:, seq_len]}

  model = RetrievalModel(tower, CandidateSampler(num_items, 64, seed=3),
                         beta=1.0, rr_lambda=100.0)
  model.compile(optimizer=LazyAdam(5e-3))
  model.fit(tf.data.Dataset.counter().map(batches), steps_per_epoch=500,
            epochs=1, verbose=0)
  trained = evaluation.evaluate(tower, examples, cutoffs=(20,))
  print(f"{model_name} planted recall@20: untrained "
        f"{untrained['recall@20']:.3f}, trained {trained['recall@20']:.3f}; "
        f"hr@20 {untrained['hr@20']:.3f} -> {trained['hr@20']:.3f}")
  # A random ranking finds 20/200 of the targets; the user's two clusters
  # hold 40 items, so a model that learned them finds about half.
  assert trained["recall@20"] > 0.25
  assert trained["recall@20"] > 2 * untrained["recall@20"]
