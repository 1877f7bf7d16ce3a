"""Each tower: shapes, padding invariance, K = 1; the routing encoders'
pieces against the reference's; Pop on the training split."""

import collections
import functools

import numpy as np
import pytest
import tensorflow as tf

from remi_tf import config, training
from remi_tf.data import parsing, preprocess
from remi_tf.losses import routing_regularization
from remi_tf.models import build_user_tower, capsule
from remi_tf.models.capsule import routing_weights, squash
from remi_tf.models.self_attentive import masked_softmax, narrow_matmul

NUM_ITEMS, SEQ_LEN, DIM = 50, 8, 16
MODELS = [m for m in config.MODELS if m != "pop"]
MULTI = config.REMI_MODELS  # the multi-interest towers


def _tower(model, interests=3):
  tf.keras.utils.set_random_seed(0)
  return build_user_tower(
      config.ModelConfig(model=model, interests=interests, embedding_dim=DIM,
                         seq_len=SEQ_LEN), NUM_ITEMS)


def _histories():
  return tf.constant([[3, 9, 4, 0, 0, 0, 0, 0],
                      [1, 2, 3, 4, 5, 6, 7, 8],
                      [7, 0, 0, 0, 0, 0, 0, 0]], tf.int32)


@pytest.mark.parametrize("model", MODELS)
def test_shapes(model):
  k = 3 if model in MULTI else 1
  out = _tower(model)(_histories())
  assert out["interests"].shape == (3, k, DIM)
  assert out["routing"].shape == (3, k, SEQ_LEN)
  assert np.all(np.isfinite(out["interests"].numpy()))


@pytest.mark.parametrize("model", MODELS)
def test_routing_is_zero_on_padding(model):
  routing = _tower(model)(_histories())["routing"].numpy()
  assert np.all(routing[0, :, 3:] == 0)
  assert np.all(routing[2, :, 1:] == 0)
  if model in ("comirec-sa", "youtube-dnn"):
    np.testing.assert_allclose(routing.sum(-1), 1.0, rtol=1e-5)
  if model in ("comirec-dr", "mind"):
    # Softmax over all n positions, padding zeroed without renormalising:
    # full histories sum to 1, padded ones to less.
    np.testing.assert_allclose(routing[1].sum(-1), 1.0, rtol=1e-5)
    assert np.all(routing[[0, 2]].sum(-1) < 0.9)


@pytest.mark.parametrize("model", MODELS)
def test_padding_never_changes_the_output(model):
  tower = _tower(model)
  histories = _histories()
  before = tower(histories)
  table = tower.item_table()
  # Change what padding looks like: its embedding row.
  saved = table.numpy()
  table.assign(tf.tensor_scatter_nd_update(
      table, [[0]], tf.fill([1, DIM], 7.0)))
  after = tower(histories)
  table.assign(saved)
  for key in ("interests", "routing"):
    np.testing.assert_allclose(before[key].numpy(), after[key].numpy(),
                               atol=1e-6)


@pytest.mark.parametrize("model", MULTI)
def test_single_interest_works(model):
  out = _tower(model, interests=1)(_histories())
  assert out["interests"].shape == (3, 1, DIM)


def test_comirec_sa_interests_are_routing_times_history():
  tower = _tower("comirec-sa")
  histories = _histories()
  out = tower(histories)
  embedded = tf.gather(tower.item_table(), histories) * tf.cast(
      histories > 0, tf.float32)[..., None]
  np.testing.assert_allclose(out["interests"].numpy(),
                             tf.matmul(out["routing"], embedded).numpy(),
                             rtol=1e-5, atol=1e-6)


def test_comirec_sa_routing_is_the_masked_softmax_of_its_mlp_everywhere():
  """The MLP runs on real positions only; the routing must equal the
  formula A = masked softmax(W2 tanh(W1 (H + P))) computed on all of them,
  and so must its gradient."""
  tower = _tower("comirec-sa")
  histories = _histories()
  mask = tf.cast(histories > 0, tf.float32)
  routing_layer = tower.encoder.routing

  def by_the_formula():
    embedded = tf.gather(tower.item_table(), histories) * mask[..., None]
    hidden = tf.tanh(tf.matmul(embedded + tower.encoder.positions[None],
                               routing_layer.hidden.kernel))
    logits = tf.transpose(tf.matmul(hidden, routing_layer.logits.kernel),
                          [0, 2, 1])
    return masked_softmax(logits, mask[:, None, :])

  routings, gradients = [], []
  for routing_of in (lambda: tower(histories)["routing"], by_the_formula):
    with tf.GradientTape() as tape:
      routing = routing_of()
      weighted = tf.reduce_sum(routing * tf.range(1.0, SEQ_LEN + 1))
    routings.append(routing.numpy())
    gradients.append([tf.convert_to_tensor(g).numpy() for g in tape.gradient(
        weighted, [routing_layer.hidden.kernel, routing_layer.logits.kernel,
                   tower.encoder.positions])])
  np.testing.assert_allclose(routings[0], routings[1], rtol=1e-5, atol=1e-6)
  for ours, formula in zip(*gradients):
    np.testing.assert_allclose(ours, formula, rtol=1e-4, atol=1e-6)


def _history_lookup(tower, histories):
  """The history's embeddings and the item table's gradient of a sum."""
  with tf.GradientTape() as tape:
    embedded = tower.embed_history(histories)
    total = tf.reduce_sum(embedded * tf.range(1.0, DIM + 1))
  return embedded, tape.gradient(total, tower.item_table())


def test_history_embedding_looks_up_only_the_real_positions():
  tower = _tower("comirec-sa")
  histories = _histories()
  embedded, gradient = _history_lookup(tower, histories)
  np.testing.assert_array_equal(
      embedded, tf.gather(tower.item_table(), histories) *
      tf.cast(histories > 0, tf.float32)[..., None])
  assert isinstance(gradient, tf.IndexedSlices)
  np.testing.assert_array_equal(np.sort(gradient.indices),
                                np.sort(histories.numpy()[histories > 0]))


def test_history_lookup_is_whole_under_multi_worker_mirrored_strategy():
  """That strategy all-gathers the sparse gradient, which needs the same
  row count on every worker: all B * n positions, padding zeroed."""
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  with strategy.scope():
    tower = _tower("comirec-sa")
  histories = _histories()
  embedded, gradient = strategy.run(_history_lookup, (tower, histories))
  assert gradient.indices.shape[0] == histories.shape[0] * histories.shape[1]
  _, sparse_gradient = _history_lookup(tower, histories)
  np.testing.assert_array_equal(embedded, tower.embed_history(histories))
  np.testing.assert_allclose(
      tf.convert_to_tensor(gradient), tf.convert_to_tensor(sparse_gradient))


def test_narrow_matmul_has_matmuls_value_and_gradients():
  rng = np.random.default_rng(0)
  inputs = tf.constant(rng.normal(size=(7, 5)), tf.float32)
  kernel = tf.constant(rng.normal(size=(5, 3)), tf.float32)
  upstream = tf.constant(rng.normal(size=(7, 3)), tf.float32)
  results = []
  for product in (narrow_matmul, tf.matmul):
    with tf.GradientTape() as tape:
      tape.watch([inputs, kernel])
      value = product(inputs, kernel)
    results.append([value, *tape.gradient(value, [inputs, kernel],
                                          output_gradients=upstream)])
  for ours, matmul in zip(*results):
    np.testing.assert_allclose(ours, matmul, rtol=1e-5, atol=1e-6)


def test_position_embeddings_enter_routing_only():
  tower = _tower("comirec-sa")
  histories = _histories()
  tower(histories)
  positions = tower.encoder.positions
  positions.assign(positions * 0)
  flat = tower(histories)
  positions.assign(tf.random.normal(positions.shape))
  moved = tower(histories)
  # Positions change the routing but interests stay in the span of H.
  assert not np.allclose(flat["routing"], moved["routing"])
  embedded = tf.gather(tower.item_table(), histories[1])
  coefficients = moved["routing"][1]
  np.testing.assert_allclose(moved["interests"][1],
                             tf.matmul(coefficients, embedded), atol=1e-5)


def test_capsule_routing_weights_are_the_references():
  # 5 real items of 20 with equal logits: 1/20 each, not 1/5.
  mask = tf.constant([[1.0] * 5 + [0.0] * 15])
  weights = routing_weights(tf.zeros([1, 20]), mask).numpy()
  np.testing.assert_allclose(weights[0, :5], 0.05, rtol=1e-6)
  assert np.all(weights[0, 5:] == 0.0)
  np.testing.assert_allclose(weights.sum(), 0.25, rtol=1e-6)


def test_per_position_predictions_map_each_position_by_its_own_maps():
  # u_hat[b, k, i] = W_{i, k} e_{b, i}: the k-th d columns of position i's
  # d x (K d) map (ComiRec-DR's bilinear layer).
  tf.keras.utils.set_random_seed(0)
  layer = capsule.PerPositionBilinear(3, 5)
  history = tf.random.normal([2, 5, DIM])
  predictions = layer(history).numpy()
  maps = layer.maps.numpy().reshape(5, DIM, 3, DIM)
  expected = np.einsum("bnd,ndke->bkne", history.numpy(), maps)
  assert predictions.shape == (2, 3, 5, DIM)
  np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-5)


def test_first_routing_step_squashes_one_nth_of_each_prediction():
  tf.keras.utils.set_random_seed(0)
  layer = capsule.DynamicRouting(capsule.PerPositionBilinear(2, 20), 2, 20,
                                 iterations=1)
  mask = tf.constant([[1.0] * 5 + [0.0] * 15])
  history = tf.random.normal([1, 20, DIM]) * mask[..., None]
  interests, routing = layer(history, mask)
  predictions = layer.predictor(history)
  np.testing.assert_allclose(routing.numpy()[0, :, :5], 0.05, rtol=1e-6)
  assert np.all(routing.numpy()[0, :, 5:] == 0.0)
  expected = squash(0.05 * tf.reduce_sum(predictions[:, :, :5], axis=2))
  np.testing.assert_allclose(interests.numpy(), expected.numpy(), rtol=1e-5,
                             atol=1e-7)


@pytest.mark.parametrize("model", ["comirec-dr", "mind"])
def test_capsule_routing_keeps_its_gradient(model):
  # REMI's routing regularizer trains the predictions through the routing.
  tower = _tower(model)
  with tf.GradientTape() as tape:
    routing = tower(_histories())["routing"]
    penalty = tf.reduce_sum(tf.square(routing))
  predictor = tower.encoder.predictor.trainable_variables
  gradients = tape.gradient(penalty, predictor)
  assert predictor and all(g is not None and np.any(g.numpy() != 0)
                           for g in gradients)


def _einsum_pool(routing, predictions):
  return tf.einsum("bkn,bknd->bkd", routing, predictions)


def _einsum_agreement(predictions, interests):
  return tf.einsum("bknd,bkd->bkn", predictions, interests)


@pytest.mark.parametrize("predictor", [capsule.PerPositionBilinear,
                                       capsule.SharedBilinear])
def test_routing_products_equal_einsum_with_gradients(predictor):
  rng = np.random.default_rng(0)
  shared = predictor is capsule.SharedBilinear
  routing, interests = (tf.constant(rng.random(shape), tf.float32)
                        for shape in ([3, 4, 5], [3, 4, 6]))
  predictions = tf.constant(rng.normal(size=[3, 5, 6] if shared
                                       else [3, 4, 5, 6]), tf.float32)
  tiled = ((lambda p: tf.tile(p[:, None], [1, 4, 1, 1])) if shared
           else tf.identity)
  results = []
  for pool, agreement in ((predictor.pool, predictor.agreement),
                          (lambda r, p: _einsum_pool(r, tiled(p)),
                           lambda p, i: _einsum_agreement(tiled(p), i))):
    with tf.GradientTape(persistent=True) as tape:
      tape.watch([routing, predictions, interests])
      pooled = pool(routing, predictions)
      agreed = agreement(predictions, interests)
      pooled_total = tf.reduce_sum(tf.sin(pooled))
      agreed_total = tf.reduce_sum(tf.sin(agreed))
    results.append([pooled, agreed,
                    *tape.gradient(pooled_total, [routing, predictions]),
                    *tape.gradient(agreed_total, [predictions, interests])])
  assert results[0][0].shape == [3, 4, 6] and results[0][1].shape == [3, 4, 5]
  for product, reference in zip(*results):
    np.testing.assert_allclose(product, reference, rtol=1e-5, atol=1e-6)


def _routing_by_autodiff(encoder, history, mask):
  """The routing iterations written out, differentiated by TensorFlow: the
  reference of `DynamicRouting`'s hand-written gradient of b."""
  predictions = encoder.predictor(history)
  frozen = tf.stop_gradient(predictions)
  logits = tf.tile(encoder.initial_logits[None], [tf.shape(history)[0], 1, 1])
  mask = mask[:, None, :]
  for iteration in range(encoder.iterations):
    routing = routing_weights(logits, mask)
    if iteration == encoder.iterations - 1:
      return squash(encoder.predictor.pool(tf.stop_gradient(routing),
                                           predictions)), routing
    interests = tf.stop_gradient(
        squash(encoder.predictor.pool(routing, frozen)))
    logits += encoder.predictor.agreement(predictions, interests)


@pytest.mark.parametrize("model", ["comirec-dr", "mind"])
@pytest.mark.parametrize("iterations", [1, 3])
def test_capsule_routing_gradient_equals_autodiff(model, iterations):
  tower = _tower(model)
  encoder = tower.encoder
  encoder.iterations = iterations
  histories = _histories()
  mask = tf.cast(histories > 0, tf.float32)
  embedded = tf.gather(tower.item_table(), histories) * mask[..., None]
  results = []
  for route in (encoder, functools.partial(_routing_by_autodiff, encoder)):
    with tf.GradientTape() as tape:
      tape.watch(embedded)
      interests, routing = route(embedded, mask)
      total = (tf.reduce_sum(tf.sin(interests)) +
               100.0 * routing_regularization(routing, DIM))
    results.append([interests, routing, *tape.gradient(
        total, [embedded, *encoder.predictor.trainable_variables])])
  for hand_written, autodiff in zip(*results):
    np.testing.assert_allclose(hand_written, autodiff, rtol=1e-4, atol=1e-6)


class _TiledPredictions(tf.keras.layers.Layer):
  """A shared predictor's u_hat copied for each of K interests, as MIND's
  reference builds it, routed with einsums."""

  pool = staticmethod(_einsum_pool)
  agreement = staticmethod(_einsum_agreement)

  def __init__(self, shared, num_interests):
    super().__init__()
    self.shared = shared
    self.num_interests = num_interests

  def call(self, history):
    return tf.tile(self.shared(history)[:, None],
                   [1, self.num_interests, 1, 1])


def test_mind_routes_one_shared_prediction_as_k_copies():
  tower = _tower("mind")
  histories = _histories()
  mind = tower.encoder
  copies = capsule.DynamicRouting(
      _TiledPredictions(mind.predictor, mind.num_interests),
      mind.num_interests, SEQ_LEN, random_init=True)
  mask = tf.cast(histories > 0, tf.float32)
  embedded = tf.gather(tower.item_table(), histories) * mask[..., None]
  copies(embedded, mask)
  copies.initial_logits.assign(mind.initial_logits)
  results = []
  for encoder in (mind, copies):
    with tf.GradientTape() as tape:
      interests, routing = encoder(embedded, mask)
      total = tf.reduce_sum(interests) + tf.reduce_sum(tf.square(routing))
    results.append([interests, routing, *tape.gradient(
        total, mind.predictor.trainable_variables)])
  for shared, tiled in zip(*results):
    np.testing.assert_allclose(shared, tiled, rtol=1e-5, atol=1e-6)


def _mean_interest_cosine(tower, histories):
  interests = tower(histories)["interests"].numpy()
  unit = interests / np.linalg.norm(interests, axis=-1, keepdims=True)
  cosines = np.einsum("bkd,bjd->bkj", unit, unit)
  upper = np.triu_indices(interests.shape[1], 1)
  return cosines[:, upper[0], upper[1]].mean()


def test_mind_interests_start_apart_and_deterministic():
  tf.keras.utils.set_random_seed(0)
  seq_len = 20
  tower = build_user_tower(config.ModelConfig(
      model="mind", interests=4, embedding_dim=64, seq_len=seq_len), 1000)
  rng = np.random.default_rng(0)
  lengths = rng.integers(5, seq_len + 1, size=256)
  histories = rng.integers(1, 1001, size=(256, seq_len))
  histories[np.arange(seq_len)[None] >= lengths[:, None]] = 0
  histories = tf.constant(histories, tf.int32)

  initial = tower.encoder.initial_logits
  assert abs(np.std(initial.numpy()) - 1.0) < 0.25
  assert not initial.trainable
  spread = _mean_interest_cosine(tower, histories)
  np.testing.assert_array_equal(tower(histories)["interests"].numpy(),
                                tower(histories)["interests"].numpy())
  initial.assign(initial * 0.05)  # the std the interests used to start from
  collapsed = _mean_interest_cosine(tower, histories)
  assert spread < 0.8 and collapsed > 0.95, (spread, collapsed)


def test_pop_ranks_by_the_given_ranking():
  tower = build_user_tower(config.ModelConfig(model="pop", seq_len=SEQ_LEN),
                           5, np.array([2, 4, 1, 5, 3]))
  interests = tower(_histories())["interests"]
  scores = tf.einsum("bkd,nd->bkn", interests, tower.item_table())[0, 0]
  assert list(np.argsort(-scores.numpy()[1:]) + 1) == [2, 4, 1, 5, 3]
  with pytest.raises(ValueError, match="needs"):
    build_user_tower(config.ModelConfig(model="pop"), 5)
  with pytest.raises(ValueError, match="each item id"):
    build_user_tower(config.ModelConfig(model="pop"), 5, np.array([1, 1, 2]))


def _log(rows):
  users, items, stamps = zip(*rows)
  return parsing.interaction_log(users, items, stamps)


def test_pop_counts_the_training_users_only():
  # 20 users (split 16/2/2); every user sees "a", users see "c0".."c3".
  rows = [(f"u{i}", "a", i) for i in range(20)]
  rows += [(f"u{i}", f"c{i % 4}", 100 + i) for i in range(20)]
  split = preprocess(_log(rows), threshold=1)
  train, held_out = list(split.train.users), (list(split.valid.users) +
                                              list(split.test.users))
  # "hot" is the log's most frequent item, seen by held-out users only.
  rows += [(user, "hot", 200 + j) for user in held_out for j in range(6)]
  # "t1" and "t2" tie among training users, t1 first in the training split;
  # held-out users make t2 more frequent in the log (a lower id).
  rows += [(train[0], "t1", 300), (train[1], "t1", 301),
           (train[2], "t2", 302), (train[3], "t2", 303)]
  rows += [(user, "t2", 304) for user in held_out]
  dataset = preprocess(_log(rows), threshold=1)
  assert list(dataset.train.users) == train  # same split as before
  assert dataset.item_vocab[0] == "hot"
  assert list(dataset.item_vocab).index("t2") < list(
      dataset.item_vocab).index("t1")

  model = training.build_model(dataset, config.ModelConfig(
      model="pop", seq_len=SEQ_LEN), learning_rate=1e-3, seed=0)
  scores = model.tower.item_table().numpy()[1:, 0]
  ranked = [str(dataset.item_vocab[i]) for i in np.argsort(-scores)]
  # ComiRec's Pop (src/mostpop.py): counts over the training file, a stable
  # sort by count of the items in order of first occurrence there.
  counts = collections.Counter()
  for user in range(split.train.num_users):
    for item in dataset.train.sequence(user):
      counts[str(dataset.item_vocab[item - 1])] += 1
  expected = sorted(counts, key=counts.get, reverse=True)
  assert ranked[:len(expected)] == expected
  assert ranked[0] == "a" and ranked[-1] == "hot"
  assert ranked.index("t1") < ranked.index("t2")


def test_unknown_model_lists_choices():
  with pytest.raises(ValueError, match="comirec-sa"):
    build_user_tower(config.ModelConfig(model="bert4rec"), 10)


def test_masked_softmax_and_squash():
  weights = masked_softmax(tf.constant([[1.0, 5.0, 2.0]]),
                           tf.constant([[1.0, 0.0, 1.0]])).numpy()
  np.testing.assert_allclose(weights, [[np.exp(1) / (np.exp(1) + np.exp(2)),
                                        0.0,
                                        np.exp(2) / (np.exp(1) + np.exp(2))]],
                             rtol=1e-6)
  vector = tf.constant([[3.0, 4.0]])
  np.testing.assert_allclose(tf.norm(squash(vector)).numpy(), 25.0 / 26.0,
                             rtol=1e-5)


def test_embedding_initializers():
  he = build_user_tower(config.ModelConfig(
      embedding_dim=DIM, seq_len=SEQ_LEN, embedding_init="he"), 2000)
  glorot = build_user_tower(config.ModelConfig(embedding_dim=DIM,
                                               seq_len=SEQ_LEN), 2000)
  np.testing.assert_allclose(np.std(he.item_table().numpy()),
                             (2.0 / DIM)**0.5, rtol=0.05)
  np.testing.assert_allclose(np.std(glorot.item_table().numpy()),
                             (2.0 / (2001 + DIM))**0.5, rtol=0.1)
  with pytest.raises(ValueError, match="glorot"):
    build_user_tower(config.ModelConfig(embedding_init="zeros"), 10)
