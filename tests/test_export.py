"""The export: TF Serving's user tower equals the Keras tower, loads with
plain TensorFlow, the retrieval model equals brute force, versions published
as matching pairs, metadata without machine paths, and the ScaNN recall
check."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

from conftest import BOOKS_SLICE, GOWALLA_SLICE, ROOT, pipeline_main, run_pipeline
from remi_tf import export, layout, runs, serving
from remi_tf import index as index_module
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


def test_unknown_ids_are_dropped_wherever_they_are(trained):
  export_dir, tower, _, histories, raw = trained
  serve = tf.saved_model.load(str(export_dir / "user_tower" / "1")
                              ).signatures["serving_default"]
  # Unknown ids between known ones: the tower sees the known ones, in order.
  rng = np.random.default_rng(0)
  noisy = np.full(raw.shape, "no-such-item", dtype=object)
  for row, ids in enumerate(histories):
    known = raw[row][ids > 0][:10]
    noisy[row, np.sort(rng.choice(20, size=len(known), replace=False))] = known
  compacted = np.zeros_like(histories)
  for row, ids in enumerate(histories):
    known = ids[ids > 0][:10]
    compacted[row, :len(known)] = known
  np.testing.assert_allclose(serve(history=tf.constant(noisy))["interests"],
                             tower(tf.constant(compacted))["interests"],
                             atol=1e-5)


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


def _strings(value):
  if isinstance(value, dict):
    return [s for v in value.values() for s in _strings(v)]
  if isinstance(value, list):
    return [s for v in value for s in _strings(v)]
  return [value] if isinstance(value, str) else []


def test_metadata_names_the_pair_and_the_raw_file_without_paths(trained):
  export_dir = trained[0]
  metadata = layout.read_metadata(str(export_dir), 1)
  assert metadata["version"] == 1
  assert metadata["index"]["recall"] >= 0.99
  assert set(metadata["test_metrics"]) >= {"recall@50", "hr@50"}
  assert {"tensorflow", "scann", "tensorflow_recommenders"} <= set(
      metadata["versions_of_libraries"])
  assert metadata["seq_len"] == 20 and metadata["interests"] == 4
  with open(BOOKS_SLICE, "rb") as raw:
    digest = hashlib.sha256(raw.read()).hexdigest()
  name = os.path.basename(BOOKS_SLICE)
  assert metadata["raw_file"] == {"name": name, "sha256": digest,
                                  "bytes": os.path.getsize(BOOKS_SLICE)}
  assert metadata["config"]["raw_file"] == name
  with open(export_dir / "metadata.json") as stored:
    summary = json.load(stored)
  assert summary["latest"] == 1
  assert summary["versions"]["1"]["user_tower"] == "user_tower/1"
  assert summary["versions"]["1"]["item_index"] == "item_index/1"
  for text in _strings(metadata) + _strings(summary):
    assert not os.path.isabs(text) and ROOT not in text, text


def test_reexport_publishes_only_matching_pairs_to_a_polling_reader(
    tiny_run, tmp_path):
  """Readers (the service's loader; TF Serving, which loads any
  user_tower/<v>) polling while versions are written into the folder only
  ever find a tower with the index of its own version."""
  run_dir, _, cache = tiny_run
  run_config, dataset, model, metrics = runs.load_run(str(run_dir),
                                                      str(cache))
  tower = model.tower
  history = evaluation_examples(dataset.test, 20).histories[:2]
  raw = np.concatenate([[""], dataset.item_vocab])[history].tolist()
  target = str(tmp_path / "model")
  exported = []  # (item embeddings [N, d], interests of `history`) per model
  stop, seen, failures = threading.Event(), [], []

  def poll():
    while True:
      finished = stop.is_set()
      for version in layout.numbered_folders(
          os.path.join(target, layout.USER_TOWER)):
        if not os.path.exists(layout.metadata_path(target, version)):
          failures.append(f"user_tower/{version} without its item index")
      try:
        artifacts = serving.load_artifacts(target)
      except serving.ModelFolderError as error:
        if seen or not ("no complete" in str(error)
                        or "does not exist" in str(error)):
          failures.append(str(error))
      else:
        embeddings, interests = exported[artifacts.version - 1]
        if not (np.array_equal(artifacts.index.embeddings, embeddings) and
                np.allclose(artifacts.user_tower.interests(raw), interests,
                            atol=1e-5)):
          failures.append(f"version {artifacts.version} is a mixed pair")
        seen.append(artifacts.version)
      if finished:
        return

  reader = threading.Thread(target=poll)
  reader.start()
  item_embeddings = [v for v in tower.variables
                     if "item_embeddings" in v.name][0]
  try:
    for _ in range(2):
      exported.append((tower.item_table().numpy()[1:],
                       tower(tf.constant(history))["interests"].numpy()))
      export.export_model(tower, dataset, run_config, metrics, target)
      item_embeddings.assign(-item_embeddings)  # the next model differs
  finally:
    stop.set()
    reader.join()
  assert not failures, failures[:5]
  assert seen and seen == sorted(seen) and seen[-1] == 2
  assert layout.complete_versions(target) == [1, 2]
  assert not [n for n in os.listdir(target) if n.startswith(".")]


def _make_version(export_dir, version, piece_names=("user_tower",
                                                    "item_index"), **meta):
  for piece in piece_names:
    os.makedirs(layout.piece_dir(str(export_dir), piece, version))
  if "item_index" in piece_names:
    with open(layout.metadata_path(str(export_dir), version), "w") as out:
      json.dump({"version": version, **meta}, out)


def test_layout_readers_take_only_complete_versions(tmp_path):
  folder = tmp_path / "model"
  with pytest.raises(layout.ModelFolderError, match="does not exist"):
    layout.resolve_version(str(folder))
  folder.mkdir()
  with pytest.raises(layout.ModelFolderError, match="no complete"):
    layout.resolve_version(str(folder))
  _make_version(folder, 1, run_id="run-a")
  _make_version(folder, 2, run_id="run-b")
  _make_version(folder, 3, ("user_tower",))  # tower without its index
  _make_version(folder, 4, ("item_index", "retrieval"))  # index, no tower
  os.makedirs(folder / "user_tower" / "5")
  os.makedirs(folder / "item_index" / "5")
  (folder / "item_index" / "5" / "metadata.json").write_text("{")
  assert layout.complete_versions(str(folder)) == [1, 2]
  assert layout.latest_version(str(folder)) == 2
  assert layout.resolve_version(str(folder)) == 2
  assert layout.resolve_version(str(folder), 1) == 1
  with pytest.raises(layout.ModelFolderError, match="no complete version 3"):
    layout.resolve_version(str(folder), 3)
  assert layout.next_version(str(folder)) == 6  # numbers are never reused
  assert layout.find_run_version(str(folder), "run-a") == 1
  assert layout.find_run_version(str(folder), "run-c") is None
  assert layout.find_run_version(str(tmp_path / "none"), "run-a") is None


def test_layout_publishes_the_tower_last_and_cleans_up(tmp_path, monkeypatch):
  folder = str(tmp_path / "model")
  renamed = []
  rename = os.rename
  monkeypatch.setattr(os, "rename", lambda a, b: (renamed.append(b),
                                                  rename(a, b)))
  with layout.staging_dir(folder) as staging:
    for piece in ("user_tower", "item_index", "retrieval"):
      os.makedirs(os.path.join(staging, piece))
    assert layout.publish(staging, folder, {"run_id": "r"}) == 1
  assert [os.path.relpath(p, folder) for p in renamed] == [
      "item_index/1", "retrieval/1", "user_tower/1"]
  assert layout.read_metadata(folder, 1) == {"run_id": "r", "version": 1}
  os.makedirs(os.path.join(folder, ".staging-left-by-a-crash"))
  with layout.staging_dir(folder):
    pass
  assert sorted(os.listdir(folder)) == ["item_index", "metadata.json",
                                        "retrieval", "user_tower"]


def test_layout_rejects_old_exports_and_other_folders(tmp_path):
  old = tmp_path / "old"
  os.makedirs(old / "item_index")
  (old / "item_index" / "index.json").write_text("{}")
  with pytest.raises(layout.ModelFolderError, match="old layout"):
    layout.resolve_version(str(old))
  with pytest.raises(layout.ModelFolderError, match="old layout"):
    with layout.staging_dir(str(old)):
      pass
  other = tmp_path / "other"
  other.mkdir()
  (other / "config.json").write_text("{}")
  with pytest.raises(layout.ModelFolderError, match="not an export folder"):
    with layout.staging_dir(str(other)):
      pass
  assert os.listdir(other) == ["config.json"]


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


def test_exact_neighbours_in_bounded_batches_equal_a_full_sort(
    monkeypatch):
  rng = np.random.default_rng(7)
  embeddings = rng.normal(size=(1000, 8)).astype(np.float32)
  queries = rng.normal(size=(25, 8)).astype(np.float32)
  # 2,500 scores at once: 2 queries a batch, a short last batch.
  monkeypatch.setattr(index_module, "EXACT_SCORE_BUDGET", 2500)
  found = index_module.exact_neighbours(queries, embeddings, 50)
  expected = np.argsort(-(queries @ embeddings.T), axis=1)[:, :50] + 1
  np.testing.assert_array_equal(found, expected)


@pytest.mark.parametrize("budget", [index_module.MERGE_BUDGET, 100])
def test_index_merge_equals_exact_search_with_brute_force_scann(
    tmp_path, monkeypatch, budget):
  monkeypatch.setattr(index_module, "MERGE_BUDGET", budget)  # 100: 1 user
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
  for flags in (["--run", str(run_dir)],
                ["--model-dir", str(export_dir), "--raw-file", BOOKS_SLICE]):
    done = run_pipeline("evaluate.py", *flags, cache_dir=cache)
    measured = json.loads(done.stdout[done.stdout.index("{"):])
    for name, value in expected.items():
      assert measured[name] == pytest.approx(value, abs=1e-6), (flags, name)


def _one_line_error(capsys):
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err, err
  return err


def test_evaluating_an_export_checks_its_raw_file(tiny_run, capsys):
  _, export_dir, cache = tiny_run
  evaluate = pipeline_main("evaluate.py")
  common = ["--model-dir", str(export_dir), "--cache-dir", str(cache)]
  assert evaluate(common) == 2
  assert "--raw-file" in _one_line_error(capsys)
  assert evaluate(common + ["--raw-file", GOWALLA_SLICE]) == 2
  error = _one_line_error(capsys)
  assert "not the file the export was trained on" in error
  assert os.path.basename(BOOKS_SLICE) in error
  assert evaluate(common + ["--raw-file", str(export_dir / "nothing")]) == 2
  assert "no such file" in _one_line_error(capsys)


def test_export_and_evaluate_reject_folders_that_are_not_runs_or_exports(
    tiny_run, tmp_path, capsys):
  run_dir, export_dir, cache = tiny_run
  evaluate = pipeline_main("evaluate.py")
  export_cli = pipeline_main("export.py")
  empty = tmp_path / "empty"
  empty.mkdir()
  for folder in (empty, tmp_path / "missing", export_dir):
    assert export_cli(["--run", str(folder), "--export-dir",
                   str(tmp_path / "out")]) == 2
    assert "not a run folder" in _one_line_error(capsys)
    assert evaluate(["--run", str(folder)]) == 2
    _one_line_error(capsys)
  for folder in (empty, tmp_path / "missing", run_dir):
    assert evaluate(["--model-dir", str(folder)]) == 2
    error = _one_line_error(capsys)
    assert "no complete export version" in error or "does not exist" in error
  assert export_cli(["--run", str(run_dir), "--export-dir", str(run_dir),
                 "--cache-dir", str(cache)]) == 2
  assert "not an export folder" in _one_line_error(capsys)


def test_export_cli_writes_the_next_version(tiny_run, tmp_path):
  run_dir, export_dir, cache = tiny_run
  target = tmp_path / "cli-export"
  shutil.copytree(export_dir, target)
  done = run_pipeline("export.py", "--run", str(run_dir), "--export-dir",
                      str(target), cache_dir=cache)
  assert json.loads(done.stdout[done.stdout.index("{"):])["version"] == 2
  assert layout.complete_versions(str(target)) == [1, 2]
