"""The export: TF Serving's user tower equals the Keras tower, loads with
plain TensorFlow, the retrieval model equals brute force, versions, and the
ScaNN recall check."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_pipeline
from remi_tf import runs
from remi_tf.data.inputs import evaluation_examples
from remi_tf.index import IndexConfig, ItemIndex, default_config
from remi_tf.retrieval import exact_top_n


@pytest.fixture(scope="module")
def trained(tiny_run):
  run_dir, export_dir, cache = tiny_run
  run_config, dataset, model, metrics = runs.load_run(str(run_dir),
                                                      str(cache))
  histories = evaluation_examples(dataset.test,
                                  run_config.model.seq_len).histories[:64]
  raw = np.concatenate([[""], dataset.item_vocab])[histories]
  return export_dir, model.tower, dataset, histories, raw


def test_user_tower_savedmodel_matches_keras(trained):
  export_dir, tower, _, histories, raw = trained
  serving = tf.saved_model.load(str(export_dir / "user_tower" / "1"))
  outputs = serving.signatures["serving_default"](history=tf.constant(raw))
  expected = tower(tf.constant(histories))
  np.testing.assert_allclose(outputs["interests"].numpy(),
                             expected["interests"].numpy(), atol=1e-5)
  np.testing.assert_allclose(outputs["routing"].numpy(),
                             expected["routing"].numpy(), atol=1e-5)


def test_unknown_ids_are_padding(trained):
  export_dir, _, _, _, raw = trained
  serve = tf.saved_model.load(str(export_dir / "user_tower" / "1")
                              ).signatures["serving_default"]
  noisy = raw.copy()
  noisy[noisy == ""] = "no-such-item"
  np.testing.assert_allclose(serve(history=tf.constant(noisy))["interests"],
                             serve(history=tf.constant(raw))["interests"],
                             atol=1e-6)


def test_user_tower_loads_in_plain_tensorflow(trained):
  export_dir = trained[0]
  script = f"""
import sys, tensorflow as tf
serve = tf.saved_model.load({str(export_dir / 'user_tower' / '1')!r}).signatures['serving_default']
seq_len = serve.structured_input_signature[1]['history'].shape[1]
out = serve(history=tf.constant([[''] * seq_len]))
print(tuple(out['interests'].shape), tuple(out['routing'].shape))
loaded = [m for m in ('tf_keras', 'scann', 'tensorflow_recommenders', 'remi_tf') if m in sys.modules]
print('loaded:', loaded)
"""
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                        text=True, env=env, timeout=120, cwd="/")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "(1, 4, 16) (1, 4, 20)" in done.stdout
  assert "loaded: []" in done.stdout


def test_saved_model_cli_shows_the_signature(trained):
  export_dir = trained[0]
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  done = subprocess.run([cli, "show", "--dir",
                         str(export_dir / "user_tower" / "1"), "--tag_set",
                         "serve", "--signature_def", "serving_default"],
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  for expected in ("inputs['history']", "DT_STRING", "(-1, 20)",
                   "outputs['interests']", "(-1, 4, 16)",
                   "outputs['routing']", "(-1, 4, 20)"):
    assert expected in done.stdout


def test_retrieval_savedmodel_equals_brute_force(trained):
  export_dir, tower, dataset, histories, raw = trained
  retrieval = tf.saved_model.load(str(export_dir / "retrieval" / "1")
                                  ).signatures["serving_default"]
  answer = retrieval(history=tf.constant(raw))
  interests = tower(tf.constant(histories))["interests"]
  ids, scores = exact_top_n(interests, tower.item_table(), 100)
  expected = np.concatenate([[""], dataset.item_vocab])[ids.numpy()]
  np.testing.assert_array_equal(answer["items"].numpy().astype(str), expected)
  np.testing.assert_allclose(answer["scores"].numpy(), scores.numpy(),
                             rtol=1e-5)


def test_metadata_and_next_version(trained, tmp_path):
  export_dir = trained[0]
  with open(export_dir / "metadata.json") as stored:
    metadata = json.load(stored)
  assert metadata["versions"] == {"user_tower": 1, "retrieval": 1}
  assert metadata["index"]["recall"] >= 0.99
  assert set(metadata["test_metrics"]) >= {"recall@50", "hr@50"}
  assert {"tensorflow", "scann", "tensorflow_recommenders"} <= set(
      metadata["versions_of_libraries"])
  assert metadata["seq_len"] == 20 and metadata["interests"] == 4


def test_reexport_adds_versions_atomically(tiny_run, tmp_path):
  run_dir, _, cache = tiny_run
  target = tmp_path / "model"
  runs.export_run(str(run_dir), str(target), str(cache))
  second = runs.export_run(str(run_dir), str(target), str(cache))
  assert second["versions"] == {"user_tower": 2, "retrieval": 2}
  assert sorted(os.listdir(target / "user_tower")) == ["1", "2"]
  leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".")]
  leftovers += [n for n in os.listdir(target) if n.startswith(".")]
  assert not leftovers


def test_scann_tree_index_reaches_the_recall_target():
  rng = np.random.default_rng(0)
  num_items, dim = 25_000, 16
  centers = rng.normal(size=(50, dim))
  embeddings = (centers[rng.integers(0, 50, num_items)] +
                0.5 * rng.normal(size=(num_items, dim))).astype(np.float32)
  config = default_config(num_items)
  assert config.kind == "tree_ah" and config.num_leaves == 158
  # Start deliberately low so the check has to search more leaves.
  config.leaves_to_search, config.reorder = 2, 60
  index = ItemIndex.build(embeddings, config)
  queries = rng.normal(size=(600, dim)).astype(np.float32)
  tuned = index.tune(queries[:300], held_out=queries[300:])
  assert tuned.recall >= 0.98  # measured on queries it was not tuned on
  assert tuned.leaves_to_search > 2


def test_index_merge_equals_exact_search_with_brute_force_scann(tmp_path):
  rng = np.random.default_rng(1)
  embeddings = rng.normal(size=(500, 8)).astype(np.float32)
  index = ItemIndex.build(embeddings, IndexConfig(kind="brute_force"))
  index.save(str(tmp_path / "index"), np.arange(500).astype(str))
  loaded, raw_ids = ItemIndex.load(str(tmp_path / "index"))
  interests = rng.normal(size=(5, 3, 8)).astype(np.float32)
  exclude = np.array([[1, 2], [0, 0], [7, 0], [3, 9], [11, 12]], np.int32)
  ids, scores = loaded.top_n(interests, 30, exclude)
  table = np.concatenate([np.zeros((1, 8), np.float32), embeddings])
  expected_ids, expected_scores = exact_top_n(
      tf.constant(interests), tf.constant(table), 30, tf.constant(exclude))
  np.testing.assert_array_equal(ids, expected_ids.numpy())
  np.testing.assert_allclose(scores, expected_scores.numpy(), rtol=1e-4)
  assert list(raw_ids[:3]) == ["0", "1", "2"]


def test_evaluate_cli_on_run_and_export_match_the_run_metrics(tiny_run):
  run_dir, export_dir, cache = tiny_run
  with open(run_dir / "metrics.json") as stored:
    expected = json.load(stored)["test"]
  for flags in (["--run", str(run_dir)], ["--model-dir", str(export_dir)]):
    done = run_pipeline("evaluate.py", *flags, cache_dir=cache)
    measured = json.loads(done.stdout[done.stdout.index("{"):])
    for name, value in expected.items():
      assert measured[name] == pytest.approx(value, abs=1e-6), (flags, name)


def test_export_cli_writes_the_next_version(tiny_run, tmp_path):
  run_dir, _, cache = tiny_run
  target = tmp_path / "cli-export"
  for version in (1, 2):
    done = run_pipeline("export.py", "--run", str(run_dir), "--export-dir",
                        str(target), cache_dir=cache)
    assert f'"user_tower": {version}' in done.stdout
