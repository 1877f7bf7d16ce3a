"""train.py end to end on the committed fixtures: outputs, resume after a
kill, seeded reproducibility, configuration errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, TINY_RUN_FLAGS, run_pipeline
from remi_tf import runs, training

METRIC_KEYS = {"recall@20", "hr@20", "ndcg@20", "recall@50", "hr@50",
               "ndcg@50"}


def test_tiny_run_writes_metrics_checkpoint_logs_and_export(tiny_run):
  run_dir, export_dir, _ = tiny_run
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
  backup = run_dir / "backup"
  assert not backup.exists() or not os.listdir(backup)  # emptied when done
  assert (export_dir / "metadata.json").exists()
  # A trained model ranks far better than chance on the test users.
  assert metrics["test"]["hr@50"] > 0.05


def _history_rows(run_dir):
  path = os.path.join(run_dir, training.HISTORY_FILE)
  if not os.path.exists(path):
    return 0
  with open(path) as rows:
    return max(sum(1 for _ in rows) - 1, 0)


def test_killed_run_resumes_with_the_same_final_step_count(tmp_path):
  run_dir = tmp_path / "run"
  flags = [*TINY_RUN_FLAGS[:4], "--max-steps", "600", "--eval-every", "100",
           "--embedding-dim", "16", "--negatives", "256", "--batch-size",
           "64", "--output", str(run_dir), "--no-export"]
  env = {**os.environ, "REMI_TF_HOME": str(tmp_path / "cache")}
  process = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "pipelines", "train.py"), *flags],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
  deadline = time.time() + 240
  while _history_rows(run_dir) < 2 and time.time() < deadline:
    assert process.poll() is None, "the run ended before it could be killed"
    time.sleep(0.2)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  done_before_kill = _history_rows(run_dir)
  assert 2 <= done_before_kill < 6
  assert not (run_dir / "metrics.json").exists()

  run_pipeline("train.py", *flags, cache_dir=tmp_path / "cache")
  with open(run_dir / "metrics.json") as stored:
    metrics = json.load(stored)
  assert metrics["steps"] == 600
  history = training.read_history(str(run_dir))
  assert [int(row["epoch"]) for row in history] == list(range(6))
  assert [int(row["step"]) for row in history] == list(range(100, 700, 100))


def test_same_command_finds_the_unfinished_run(tmp_path):
  run_config = runs.resolve_config("csv", "x.csv", max_steps=10)
  unfinished = tmp_path / "csv-comirec-sa-1"
  unfinished.mkdir()
  training.write_json(str(unfinished / training.CONFIG_FILE),
                      run_config.to_json())
  assert runs.default_run_dir(run_config, str(tmp_path)) == str(unfinished)
  training.write_json(str(unfinished / training.METRICS_FILE), {})
  assert runs.default_run_dir(run_config, str(tmp_path)) != str(unfinished)


def test_seeded_runs_reproduce_their_metrics(tmp_path):
  flags = [*TINY_RUN_FLAGS[:4], "--max-steps", "100", "--eval-every", "100",
           "--embedding-dim", "16", "--negatives", "256", "--batch-size",
           "64", "--no-export", "--seed", "11"]
  results = []
  for name in ("a", "b"):
    run_pipeline("train.py", *flags, "--output", str(tmp_path / name),
                 cache_dir=tmp_path / "cache")
    with open(tmp_path / name / "metrics.json") as stored:
      results.append(json.load(stored))
  assert results[0]["test"] == results[1]["test"]
  assert results[0]["valid"] == results[1]["valid"]


def test_configuration_errors_are_clear(tmp_path):
  with pytest.raises(ValueError, match="gowalla"):
    runs.resolve_config("netflix")
  with pytest.raises(ValueError, match="--eval-every"):
    runs.resolve_config("csv", eval_every=0)
  failed = run_pipeline("train.py", "--dataset", "csv", "--raw-file",
                        str(tmp_path / "missing.csv"), "--no-export",
                        "--output", str(tmp_path / "r"),
                        cache_dir=tmp_path / "cache", check=False)
  assert failed.returncode != 0
  assert "missing.csv" in failed.stderr


def test_defaults_come_from_the_dataset_table():
  gowalla = runs.resolve_config("gowalla")
  assert (gowalla.model.seq_len, gowalla.threshold, gowalla.model.beta) == (
      40, 10, 1.0)
  books = runs.resolve_config("amazon-books", beta=0.0, rr_lambda=0.0)
  assert (books.model.seq_len, books.model.beta, books.model.rr_lambda) == (
      20, 0.0, 0.0)
  assert runs.resolve_config("retailrocket").model.beta == 0.1


@pytest.mark.parametrize("setting, value", [
    ("model", "bert4rec"), ("sampler", "zipf"), ("optimizer", "sgd"),
    ("embedding_init", "zeros")])
def test_unknown_choices_list_the_valid_ones(setting, value):
  with pytest.raises(ValueError, match=f"unknown .*{value}.*choose one of"):
    runs.resolve_config("csv", **{setting: value})


@pytest.mark.parametrize("model", ["youtube-dnn", "gru4rec", "mind",
                                   "comirec-dr", "pop"])
def test_every_tower_trains_end_to_end(model, tmp_path):
  run_pipeline("train.py", *TINY_RUN_FLAGS[:4], "--model", model,
               "--max-steps", "40", "--eval-every", "20", "--embedding-dim",
               "8", "--negatives", "64", "--batch-size", "32", "--no-export",
               "--output", str(tmp_path / "run"),
               cache_dir=tmp_path / "cache")
  with open(tmp_path / "run" / "metrics.json") as stored:
    metrics = json.load(stored)
  assert metrics["steps"] == (0 if model == "pop" else 40)
  assert 0.0 <= metrics["test"]["hr@50"] <= 1.0
