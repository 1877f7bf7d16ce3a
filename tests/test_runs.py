"""A run's phases resume: a run killed (SIGKILL) in training, in the final
evaluation and in the export, each time re-run with the same command, ends
exactly as an uninterrupted run of the same seed in another process; exact
step counts; the same command finds the run and leaves a complete one
alone."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import BOOKS_SLICE, ROOT, TINY_RUN_FLAGS, run_pipeline
from remi_tf import evaluation, layout, runs, training

# Wall-clock figures differ between any two runs.
WALL_CLOCK = ("train_seconds", "samples_per_second")


def _without_wall_clock(record):
  return {key: value for key, value in record.items()
          if key not in WALL_CLOCK}


def _history(run_dir):
  return [_without_wall_clock(row)
          for row in training.read_history(str(run_dir))]


def _train(flags, cache, monkeypatch, crash_at=None):
  """train.py with `flags`; with `crash_at`, it must die of SIGKILL there."""
  if crash_at:
    monkeypatch.setenv(training.CRASH_AT, crash_at)
  else:
    monkeypatch.delenv(training.CRASH_AT, raising=False)
  process = run_pipeline("train.py", *flags, cache_dir=cache, check=False)
  expected = -signal.SIGKILL if crash_at else 0
  assert process.returncode == expected, process.stderr[-3000:]
  return process


def _kill_once_export_is_staged(flags, cache, export_dir, monkeypatch):
  """train.py with `flags`, SIGKILLed as soon as its export is staged."""
  monkeypatch.delenv(training.CRASH_AT, raising=False)
  process = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "pipelines", "train.py"), *flags],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
      env={**os.environ, "REMI_TF_HOME": str(cache)})
  deadline = time.time() + 240
  while not glob.glob(os.path.join(export_dir, ".staging-*")):
    assert process.poll() is None, "the run ended before its export was staged"
    assert time.time() < deadline
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()


def test_run_killed_in_every_phase_ends_as_an_uninterrupted_run(
    tiny_run, tmp_path, monkeypatch):
  reference_dir, _, cache = tiny_run
  run_dir, export_dir = tmp_path / "run", tmp_path / "export"
  flags = [*TINY_RUN_FLAGS, "--output", str(run_dir),
           "--export-dir", str(export_dir)]

  # Training: interval 2 validated and logged, killed before its backup.
  _train(flags, cache, monkeypatch, crash_at="backup-2")
  assert len(_history(run_dir)) == 2
  # Training: all 3 intervals trained (interval 2 again, from the backup of
  # interval 1: its row is not logged twice), killed before it is recorded.
  _train(flags, cache, monkeypatch, crash_at="trained")
  assert [row["epoch"] for row in _history(run_dir)] == [0, 1, 2]
  assert not (run_dir / training.TRAINING_FILE).exists()
  # Final evaluation: computed, killed before metrics.json.
  _train(flags, cache, monkeypatch, crash_at="tested")
  assert (run_dir / training.TRAINING_FILE).exists()
  assert not (run_dir / training.BACKUP_DIR).exists()
  assert not (run_dir / training.METRICS_FILE).exists()
  # Export: killed while it is being written.
  _kill_once_export_is_staged(flags, cache, export_dir, monkeypatch)
  assert layout.complete_versions(str(export_dir)) == []
  # Export: published, killed before the run returned.
  _train(flags, cache, monkeypatch, crash_at="exported")
  # Complete: the same command says so and changes nothing.
  metrics_written = os.path.getmtime(run_dir / training.METRICS_FILE)
  finished = _train(flags, cache, monkeypatch)
  assert "is complete" in finished.stdout
  assert os.path.getmtime(run_dir / training.METRICS_FILE) == metrics_written

  with open(run_dir / training.METRICS_FILE) as stored:
    metrics = json.load(stored)
  with open(reference_dir / training.METRICS_FILE) as stored:
    reference = json.load(stored)
  assert metrics["steps"] == 300
  assert _without_wall_clock(metrics) == _without_wall_clock(reference)
  assert _history(run_dir) == _history(reference_dir)
  assert layout.complete_versions(str(export_dir)) == [1]
  assert layout.find_run_version(str(export_dir), runs.run_id(run_dir)) == 1


def test_last_interval_is_shorter_so_exactly_max_steps_are_trained(tiny_run,
                                                                  tmp_path):
  _, _, cache = tiny_run
  run_config = runs.resolve_config(
      "csv", BOOKS_SLICE, max_steps=50, eval_every=20, embedding_dim=8,
      negatives=64, batch_size=16)
  metrics = runs.train_run(run_config, str(tmp_path / "run"),
                           cache_dir=str(cache))
  assert metrics["steps"] == 50
  history = training.read_history(str(tmp_path / "run"))
  assert [int(row["step"]) for row in history] == [20, 40, 50]
  assert all("val_recall@50" in row for row in history)


def test_eval_users_bounds_validation_and_test(tiny_run, tmp_path,
                                               monkeypatch):
  _, _, cache = tiny_run
  evaluated = []
  evaluate = evaluation.evaluate

  def counting_evaluate(tower, examples, *args, **kwargs):
    evaluated.append(examples.num_users)
    return evaluate(tower, examples, *args, **kwargs)

  monkeypatch.setattr(evaluation, "evaluate", counting_evaluate)
  run_config = runs.resolve_config(
      "csv", BOOKS_SLICE, max_steps=20, eval_every=10, embedding_dim=8,
      negatives=64, batch_size=16, eval_users=3)
  metrics = runs.train_run(run_config, str(tmp_path / "run"),
                           cache_dir=str(cache))
  # Two validations and the test, each on 3 of the split's users.
  assert evaluated == [3, 3, 3]
  assert metrics["config"]["train"]["eval_users"] == 3


def test_complete_run_is_found_by_the_same_command(tmp_path):
  run_config = runs.resolve_config("csv", "x.csv", max_steps=10)
  older, newer = tmp_path / "csv-comirec-sa-1", tmp_path / "csv-comirec-sa-2"
  other = tmp_path / "csv-comirec-sa-3"
  for folder, settings in ((older, {}), (newer, {}), (other, {"seed": 1})):
    folder.mkdir()
    training.write_json(
        str(folder / training.CONFIG_FILE),
        runs.resolve_config("csv", "x.csv", max_steps=10, **settings
                            ).to_json())
  os.utime(older / training.CONFIG_FILE, (1, 1))
  assert runs.default_run_dir(run_config, str(tmp_path)) == str(newer)
  training.write_json(str(newer / training.METRICS_FILE), {})
  assert runs.default_run_dir(run_config, str(tmp_path)) == str(newer)
  assert runs.is_complete(run_config, str(newer))
  assert not runs.is_complete(run_config, str(newer),
                              str(tmp_path / "export"))
  assert not runs.is_complete(run_config, str(older))
  fresh = runs.default_run_dir(run_config, str(tmp_path / "elsewhere"))
  assert not os.path.exists(fresh)


def test_run_of_an_older_version_without_a_newer_setting_still_resumes(
    tmp_path):
  run_config = runs.resolve_config("csv", "x.csv", max_steps=10)
  older_version = run_config.to_json()
  del older_version["model"]["candidate_scoring"]  # added after it
  folder = tmp_path / "csv-comirec-sa-1"
  folder.mkdir()
  training.write_json(str(folder / training.CONFIG_FILE), older_version)
  assert runs.default_run_dir(run_config, str(tmp_path)) == str(folder)
  harder = runs.resolve_config("csv", "x.csv", max_steps=10,
                               candidate_scoring="max-interest")
  assert runs.default_run_dir(harder, str(tmp_path)) != str(folder)
  assert not run_config.matches({"not": "a run config"})


def test_a_folder_of_another_configuration_is_refused(tmp_path):
  run_config = runs.resolve_config("csv", "x.csv", max_steps=10)
  assert runs.check_config(run_config, str(tmp_path)) is None
  training.write_json(str(tmp_path / training.CONFIG_FILE),
                      run_config.to_json())
  assert runs.check_config(run_config, str(tmp_path)) == run_config.to_json()
  other = runs.resolve_config("csv", "x.csv", max_steps=10, seed=1)
  with pytest.raises(ValueError, match="holds a trial with another"):
    runs.check_config(other, str(tmp_path), "a trial")
  with pytest.raises(ValueError, match="holds a run with another"):
    runs.is_complete(other, str(tmp_path))
