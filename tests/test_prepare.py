"""pipelines/prepare.py: preprocess and cache only, the cache train.py reads,
one-line errors."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURES, GOWALLA_SLICE, ROOT, load_script, run_pipeline
from remi_tf import cli, config
from remi_tf.data import load_dataset, preprocess, registry


@pytest.fixture(name="prepare", scope="module")
def fixture_prepare():
  """The pipeline module, imported in this process (logging left as is)."""
  original = cli.configure_logging
  cli.configure_logging = lambda argv=None: False
  try:
    module = load_script("pipelines/prepare.py")
  finally:
    cli.configure_logging = original
  return module


def test_prepare_caches_what_training_loads(tmp_path, monkeypatch):
  home = tmp_path / "home"
  process = run_pipeline("prepare.py", "--dataset", "gowalla", "--raw-file",
                         GOWALLA_SLICE, "--threshold", "10", cache_dir=home)
  report = json.loads(process.stdout)
  assert process.stderr == ""
  assert report["dataset"] == "gowalla"
  assert report["seconds"] >= 0 and report["peak_rss_mb"] > 0
  (cached,) = os.listdir(home / "preprocessed")
  assert cached.startswith("gowalla-")

  # Training's loader (same defaults: seed, threshold) finds that cache and
  # does not parse the raw file again.
  def not_parsed(path):
    raise AssertionError(f"{path} parsed again")

  monkeypatch.setitem(registry.SOURCES, "gowalla", dataclasses.replace(
      registry.SOURCES["gowalla"], read=not_parsed))
  dataset = load_dataset("gowalla", raw_file=GOWALLA_SLICE, threshold=10,
                         cache_dir=str(home))
  assert {key: report[key] for key in dataset.stats} == dataset.stats
  assert os.listdir(home / "preprocessed") == [cached]


@pytest.mark.parametrize("flags,words", [
    (["--dataset", "taobao"], ["UserBehavior.csv", "--raw-file"]),
    (["--dataset", "gowalla", "--raw-file", "missing.txt"],
     ["missing.txt", "no such file"]),
    (["--dataset", "taobao", "--raw-file",
      os.path.join(FIXTURES, "raw", "UserBehavior_bad_item.csv")],
     ["UserBehavior_bad_item.csv, line 4", "item"]),
    (["--dataset", "gowalla", "--raw-file", GOWALLA_SLICE, "--threshold",
      "0"], ["--threshold must be >= 1"]),
])
def test_bad_input_is_one_line_exit_2(prepare, tmp_path, capsys, flags,
                                      words):
  assert prepare.main(flags + ["--cache-dir", str(tmp_path)]) == 2
  captured = capsys.readouterr()
  assert captured.out == ""
  (line,) = captured.err.splitlines()
  assert line.startswith("error: ")
  for word in words:
    assert word in line
  assert not os.path.exists(tmp_path / "preprocessed")


@pytest.fixture(name="scale", scope="module")
def fixture_scale():
  """benchmarks/scale.py as a module (its writers; main is not run)."""
  return load_script("benchmarks/scale.py")


@pytest.mark.parametrize("dataset", ["amazon-books", "gowalla",
                                     "retailrocket", "taobao"])
def test_synthetic_raw_files_keep_the_real_survivors(scale, tmp_path,
                                                     dataset):
  rows = 6000
  path = scale.write_raw_file(dataset, rows, str(tmp_path), seed=3)
  assert os.listdir(tmp_path) == [scale.SHAPES[dataset].file_name]
  log = registry.source(dataset).read(path)  # the real format's parser
  sizes = scale.scaled_sizes(scale.SHAPES[dataset], rows)
  assert len(log) == sizes["click_rows"]
  assert len(log.user_vocab) == sizes["raw_users"]
  processed = preprocess(log, threshold=config.DATASET_DEFAULTS[
      dataset].threshold)
  assert processed.stats["users"] == sizes["users"]
  assert processed.stats["items"] == sizes["items"]
  # Heavy-tailed popularity: the top 1% of the kept items take several
  # times their share of the interactions.
  counts = np.sort(processed.item_counts[1:])[::-1]
  top = max(1, len(counts) // 100)
  assert counts[:top].sum() / counts.sum() > 3 * top / len(counts)
  # Seeded: the same file again.
  again = scale.write_raw_file(dataset, rows, str(tmp_path / "again"), seed=3)
  with open(path, "rb") as first, open(again, "rb") as second:
    assert first.read() == second.read()


def test_scale_benchmark_runs_every_phase_of_the_job(tmp_path):
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "scale.py"),
       "--dataset", "taobao", "--rows", "3000", "--out", str(tmp_path),
       "--train-steps", "10", "--requests", "10", "--valid-users", "2"],
      capture_output=True, text=True, timeout=600, cwd=ROOT, check=True)
  (line,) = process.stdout.splitlines()
  result = json.loads(line)
  phases = result["phases"]
  assert result["rows"] == 3000
  assert phases["prepare"]["users"] == result["built_to_keep"]["users"]
  assert phases["prepare"]["items"] == result["built_to_keep"]["items"]
  assert phases["train"]["embedding_rows"] == phases["prepare"]["items"] + 1
  assert phases["train"]["steps"] == 10
  assert phases["prepare"]["valid_users"] > 2
  assert phases["validate"]["users"] == 2
  assert phases["validate"]["pass_memory_mb"] >= 0
  assert phases["export"]["items"] == phases["prepare"]["items"]
  assert phases["serve"]["completed"] == 10 and phases["serve"]["errors"] == 0
  assert phases["serve"]["history_source"] != "random"
  for phase in ("prepare", "train", "validate", "export"):
    assert phases[phase]["peak_rss_mb"] > 0
  assert result["targets"] == {}  # checked at the real size only
  # Nothing left behind but the raw file.
  assert os.listdir(tmp_path) == ["taobao-3000-seed0"]


def test_peak_memory_of_a_child_is_its_own_not_its_parents():
  """prepare.py and the scale phases run as children of a large benchmark
  process: their peak must not include the parent's memory at fork."""
  ballast = np.ones(400 * 2**20 // 8)  # 400 MB, touched  # noqa: F841
  child = subprocess.run(
      [sys.executable, "-c",
       "import resource, sys; sys.path.insert(0, sys.argv[1]); "
       "from remi_tf import cli; "
       "print(cli.memory_mb(), "
       "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)", ROOT],
      capture_output=True, text=True, check=True,
      preexec_fn=lambda: None)  # a real fork, as a large parent's may be
  own_peak, inherited_peak = map(float, child.stdout.split())
  assert inherited_peak > 400  # what getrusage reports
  assert own_peak < 200
