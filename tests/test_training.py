"""train.py end to end: outputs, quality against the real baselines (random
and untrained ranking of the same test users), flag ranges and
configuration errors, defaults. Seeded reproducibility across processes and
resume: tests/test_runs.py."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import BOOKS_SLICE, pipeline_main
from remi_tf import config, evaluation, runs, training
from remi_tf.data.inputs import evaluation_examples, training_dataset

METRIC_KEYS = {"recall@20", "hr@20", "ndcg@20", "recall@50", "hr@50",
               "ndcg@50"}
TOWER_STEPS = 200


def random_ranking_metrics(examples, num_items, n=50):
  """Recall@n and HR@n that a uniformly random ranking of the N items
  scores on these users, in expectation (exact: with k distinct targets,
  each target is among n random items with probability n / N, and none is
  with probability prod_{i<n} (N - k - i) / (N - i))."""
  recall, hit_rate = [], []
  for user in range(examples.num_users):
    targets = examples.targets(user)
    distinct = len(np.unique(targets))
    recall.append(distinct / len(targets) * n / num_items)
    draws = np.arange(n)
    miss = np.prod(np.clip((num_items - distinct - draws) /
                           (num_items - draws), 0, None))
    hit_rate.append(1 - miss)
  return {f"recall@{n}": float(np.mean(recall)),
          f"hr@{n}": float(np.mean(hit_rate))}


def baselines_of(run_dir, cache):
  """The real baselines of a finished run on its test users: random
  ranking, and an untrained model of the same configuration and seed (for
  Pop, which has nothing to train, random ranking only)."""
  run_config, dataset, _, _ = runs.load_run(str(run_dir), str(cache))
  examples = evaluation_examples(dataset.test, run_config.model.seq_len)
  baselines = {"random": random_ranking_metrics(examples, dataset.num_items)}
  if run_config.model.model != "pop":
    tf.keras.utils.set_random_seed(run_config.train.seed)
    untrained = training.build_model(
        dataset, run_config.model, run_config.train.learning_rate,
        run_config.train.seed, run_config.train.optimizer)
    baselines["untrained"] = evaluation.evaluate(untrained.tower, examples)
  return baselines


def assert_beats_baselines(test_metrics, baselines, factor):
  """Recall@50 and HR@50 at least `factor` times every baseline's."""
  for metric in ("recall@50", "hr@50"):
    best = max(baseline[metric] for baseline in baselines.values())
    assert test_metrics[metric] >= factor * best, (metric, test_metrics,
                                                    baselines)


def test_tiny_run_writes_metrics_checkpoint_logs_and_export(tiny_run):
  run_dir, export_dir, cache = tiny_run
  with open(run_dir / "metrics.json") as stored:
    metrics = json.load(stored)
  assert set(metrics["valid"]) == METRIC_KEYS
  assert set(metrics["test"]) == METRIC_KEYS
  assert metrics["steps"] == 300
  assert metrics["samples_per_second"] > 0
  assert metrics["dataset"]["users"] == sum(
      metrics["dataset"][f"{s}_users"] for s in ("train", "valid", "test"))
  assert metrics["config"]["model"]["embedding_dim"] == 16
  assert metrics["config"]["model"]["beta"] == 1.0  # the csv default
  assert len(training.read_history(str(run_dir))) == 3
  assert os.listdir(run_dir / "logs")  # TensorBoard
  assert (run_dir / "best").is_dir()
  assert (run_dir / training.TRAINING_FILE).exists()
  assert not (run_dir / training.BACKUP_DIR).exists()  # deleted when done
  assert (export_dir / "metadata.json").exists()
  # The trained model ranks clearly better than random ranking and than
  # the untrained model on the same test users.
  assert_beats_baselines(metrics["test"], baselines_of(run_dir, cache), 1.5)


@pytest.fixture(scope="module")
def train_main():
  """pipelines/train.py's `main`, run in this process."""
  return pipeline_main("train.py")


# One out-of-range value per numeric flag (some flags twice).
OUT_OF_RANGE = [
    ("--interests", "0"), ("--embedding-dim", "0"), ("--seq-len", "0"),
    ("--threshold", "0"), ("--negatives", "0"), ("--batch-size", "0"),
    ("--max-steps", "0"), ("--eval-every", "0"), ("--patience", "0"),
    ("--seed", "-1"), ("--seed", str(2**32)), ("--beta", "-0.5"),
    ("--beta", "inf"), ("--rr-lambda", "-1"), ("--learning-rate", "0"),
    ("--learning-rate", "-1"), ("--learning-rate", "nan"),
    ("--eval-users", "0"),
]


def test_every_numeric_flag_has_a_range_check():
  flags = {flag[2:].replace("-", "_") for flag, _ in OUT_OF_RANGE}
  assert flags == set(config.RANGES)


@pytest.mark.parametrize("flag, value", OUT_OF_RANGE)
def test_out_of_range_flags_are_one_line_errors_before_anything_is_written(
    train_main, flag, value, tmp_path, capsys):
  run_dir = tmp_path / "run"
  code = train_main(["--dataset", "csv", "--raw-file", BOOKS_SLICE,
                     "--output", str(run_dir), "--cache-dir",
                     str(tmp_path / "cache"), flag, value])
  error = capsys.readouterr().err.strip()
  assert code == 2
  assert error.startswith("error: ") and flag in error
  assert len(error.splitlines()) == 1
  assert not run_dir.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("data_flags", [
    ["--dataset", "retailrocket"],  # no download URL: a login is needed
    ["--dataset", "csv", "--raw-file", "missing.csv"]])
def test_a_run_that_cannot_get_its_data_leaves_no_run_folder(
    train_main, data_flags, tmp_path, capsys):
  run_dir = tmp_path / "run"
  code = train_main([*data_flags, "--output", str(run_dir), "--cache-dir",
                     str(tmp_path / "cache"), "--no-export"])
  error = capsys.readouterr().err.strip()
  assert code == 2
  assert error.startswith("error: ") and "--raw-file" in error
  assert not run_dir.exists()


def test_configuration_errors_are_clear():
  with pytest.raises(ValueError, match="gowalla"):
    runs.resolve_config("netflix")
  with pytest.raises(ValueError, match="--eval-every must be >= 1, got 0"):
    runs.resolve_config("csv", eval_every=0)
  with pytest.raises(ValueError, match="--learning-rate must be > 0"):
    runs.resolve_config("csv", learning_rate=0.0)


def test_defaults_come_from_the_dataset_table():
  gowalla = runs.resolve_config("gowalla")
  assert (gowalla.model.seq_len, gowalla.threshold, gowalla.model.beta) == (
      40, 10, 1.0)
  books = runs.resolve_config("amazon-books", beta=0.0, rr_lambda=0.0)
  assert (books.model.seq_len, books.model.beta, books.model.rr_lambda) == (
      20, 0.0, 0.0)
  assert runs.resolve_config("retailrocket").model.beta == 0.1


@pytest.mark.parametrize("model, objective", [
    ("comirec-sa", (10.0, 100.0)), ("comirec-dr", (10.0, 100.0)),
    ("mind", (10.0, 100.0)), ("youtube-dnn", (0.0, 0.0)),
    ("gru4rec", (0.0, 0.0)), ("pop", (0.0, 0.0))])
def test_objective_defaults_follow_the_model(model, objective):
  resolved = runs.resolve_config("amazon-books", model=model).model
  assert (resolved.beta, resolved.rr_lambda) == objective
  explicit = runs.resolve_config("amazon-books", model=model, beta=0.5,
                                 rr_lambda=3.0).model
  assert (explicit.beta, explicit.rr_lambda) == (0.5, 3.0)


@pytest.mark.parametrize("setting, value", [
    ("model", "bert4rec"), ("sampler", "zipf"), ("optimizer", "sgd"),
    ("embedding_init", "zeros")])
def test_unknown_choices_list_the_valid_ones(setting, value):
  with pytest.raises(ValueError, match=f"unknown .*{value}.*choose one of"):
    runs.resolve_config("csv", **{setting: value})


@pytest.fixture(scope="module")
def planted_log(tmp_path_factory):
  """A CSV log with structure to learn: 1,000 users, each 15 interactions
  drawn from two of ten 20-item clusters, items Zipf-popular within their
  cluster (so Pop has something to learn too); 100 test users."""
  rng = np.random.default_rng(0)
  clusters, cluster_size, length = 10, 20, 15
  popularity = 1 / np.arange(1, cluster_size + 1)
  rows = ["user_id,item_id,timestamp"]
  for user in range(1000):
    pair = rng.choice(clusters, 2, replace=False)
    items = pair[rng.integers(0, 2, length)] * cluster_size + rng.choice(
        cluster_size, length, p=popularity / popularity.sum())
    rows += [f"u{user},i{item},{time}" for time, item in enumerate(items)]
  path = tmp_path_factory.mktemp("planted") / "planted.csv"
  path.write_text("\n".join(rows) + "\n")
  return path


@pytest.mark.parametrize("model", ["youtube-dnn", "gru4rec", "mind",
                                   "comirec-dr", "pop"])
def test_every_tower_trains_end_to_end(model, planted_log, tmp_path):
  cache = planted_log.parent / "cache"
  run_config = runs.resolve_config(
      "csv", str(planted_log), model=model, max_steps=TOWER_STEPS,
      eval_every=TOWER_STEPS, seq_len=10, embedding_dim=16, negatives=64,
      batch_size=32, learning_rate=1e-2)
  metrics = runs.train_run(run_config, str(tmp_path / "run"),
                           cache_dir=str(cache))
  assert metrics["steps"] == (0 if model == "pop" else TOWER_STEPS)
  assert_beats_baselines(metrics["test"],
                         baselines_of(tmp_path / "run", cache), 1.5)


def test_steps_per_execution_divides_intervals_and_the_run():
  for eval_every, max_steps in ((1000, 1_000_000), (50, 130), (7, 1000)):
    steps = training.run_steps_per_execution(config.TrainConfig(
        eval_every=eval_every, max_steps=max_steps))
    assert 1 <= steps <= training.STEPS_PER_EXECUTION
    assert eval_every % steps == 0 and max_steps % steps == 0
  assert training.run_steps_per_execution(config.TrainConfig(
      eval_every=1000, max_steps=5000)) == training.STEPS_PER_EXECUTION


def test_several_steps_per_execution_train_as_one_step_per_call(tiny_run):
  """The same seed and batches give the same weights whether Keras runs 1
  or 5 training steps per call of its train function."""
  run_dir, _, cache = tiny_run
  run_config, dataset, _, _ = runs.load_run(str(run_dir), str(cache))
  stream = training_dataset(dataset.train, run_config.model.seq_len, 16,
                            run_config.train.seed)
  weights = []
  for steps_per_execution in (1, 5):
    tf.keras.utils.set_random_seed(run_config.train.seed)
    model = training.build_model(
        dataset, run_config.model, run_config.train.learning_rate,
        run_config.train.seed, run_config.train.optimizer,
        steps_per_execution)
    model.fit(stream, steps_per_epoch=10, epochs=2, verbose=0)
    assert training.optimizer_step(model) == 20
    weights.append([variable.numpy() for variable in model.variables])
  tf.keras.utils.set_random_seed(run_config.train.seed)
  untrained = training.build_model(
      dataset, run_config.model, run_config.train.learning_rate,
      run_config.train.seed, run_config.train.optimizer)
  assert any(not np.allclose(before.numpy(), after) for before, after in
             zip(untrained.variables, weights[0]))
  for one_step, five_steps in zip(*weights):
    np.testing.assert_allclose(one_step, five_steps, rtol=1e-5, atol=1e-6)
