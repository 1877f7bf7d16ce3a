"""Shared fixtures. Importing remi_tf first sets TF_USE_LEGACY_KERAS."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import remi_tf  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
BOOKS_SLICE = os.path.join(FIXTURES, "amazon-books-slice",
                           "interactions.2k-users.csv.gz")
GOWALLA_SLICE = os.path.join(FIXTURES, "gowalla-slice",
                             "loc-gowalla_totalCheckins.80-users.txt.gz")
# A tiny but real training run: a few hundred steps on the books slice.
TINY_RUN_FLAGS = ["--dataset", "csv", "--raw-file", BOOKS_SLICE,
                  "--max-steps", "300", "--eval-every", "100",
                  "--embedding-dim", "16", "--negatives", "256",
                  "--batch-size", "64"]


def run_pipeline(script, *args, cache_dir, timeout=300, check=True):
  """Runs pipelines/<script> in a fresh interpreter; returns the process."""
  env = {**os.environ, "REMI_TF_HOME": str(cache_dir)}
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, "pipelines", script), *args],
      capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
  if check and process.returncode != 0:
    raise AssertionError(f"{script} failed:\n{process.stdout}\n"
                         f"{process.stderr[-4000:]}")
  return process


def load_script(path):
  """A script of the repository (e.g. "benchmarks/serving.py") imported as
  a module in this process; its main is not run."""
  name = path[:-3].replace("/", "_")
  spec = importlib.util.spec_from_file_location(name,
                                                os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def pipeline_main(script):
  """pipelines/<script>'s `main`, to run in this process."""
  return load_script(f"pipelines/{script}").main


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """A finished tiny run and its export: (run_dir, export_dir, cache)."""
  root = tmp_path_factory.mktemp("tiny")
  run_dir, export_dir = root / "run", root / "export"
  run_pipeline("train.py", *TINY_RUN_FLAGS, "--output", str(run_dir),
               "--export-dir", str(export_dir), cache_dir=root / "cache")
  return run_dir, export_dir, root / "cache"
