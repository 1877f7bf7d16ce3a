"""pipelines/prepare.py: preprocess and cache only, the cache train.py reads,
one-line errors."""

import dataclasses
import importlib.util
import json
import os

import pytest

from conftest import FIXTURES, GOWALLA_SLICE, ROOT, run_pipeline
from remi_tf import cli
from remi_tf.data import load_dataset, registry


@pytest.fixture(name="prepare", scope="module")
def fixture_prepare():
  """The pipeline module, imported in this process (logging left as is)."""
  original = cli.configure_logging
  cli.configure_logging = lambda argv=None: False
  try:
    spec = importlib.util.spec_from_file_location(
        "pipeline_prepare", os.path.join(ROOT, "pipelines", "prepare.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
