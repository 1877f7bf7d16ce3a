"""The README's first run: train.py on the packaged books-sample (no
download), then the query it prints; TensorFlow's log noise stays hidden
unless --verbose or the user's own TF_CPP_MIN_LOG_LEVEL asks for it."""

import glob
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, run_pipeline

# The README's command with a smaller budget and model (a test is cheap).
FIRST_RUN_FLAGS = ["--dataset", "books-sample", "--max-steps", "300",
                   "--eval-every", "100", "--embedding-dim", "16",
                   "--negatives", "256", "--batch-size", "64"]
# A line of TensorFlow's C++ logger ("2026-11-27 05:11:12.713373: I ...") or
# of Abseil's ("W0000 00:00:1795756281.916481  13250 file.cc:699] ...").
CPP_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] |"
                          r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ )", re.MULTILINE)
NOISE = ("cuInit", "PredictCost", "oneDNN", "absl::InitializeLog",
         "WARNING:tensorflow")


def assert_quiet(stderr):
  assert not CPP_LOG_LINE.search(stderr), stderr[-2000:]
  for noise in NOISE:
    assert noise not in stderr, stderr[-2000:]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
  """(train.py's process, its cache, the printed recommend command)."""
  root = tmp_path_factory.mktemp("first-run")
  with pytest.MonkeyPatch.context() as patch:
    patch.delenv("TF_CPP_MIN_LOG_LEVEL")  # as on a new user's machine
    process = run_pipeline(
        "train.py", *FIRST_RUN_FLAGS, "--output", str(root / "run"),
        "--export-dir", str(root / "export"), cache_dir=root / "cache")
  commands = [line.strip() for line in process.stdout.splitlines()
              if "pipelines/" in line or "curl " in line]
  return process, root, commands


def test_first_run_needs_no_download_and_beats_random(first_run):
  _, root, _ = first_run
  assert os.listdir(root / "cache") == ["preprocessed"]
  with open(root / "run" / "metrics.json") as stored:
    metrics = json.load(stored)
  # A random ranking's expected Recall@50 is 50 / N.
  random_recall = 50 / metrics["dataset"]["items"]
  assert metrics["test"]["recall@50"] > 4 * random_recall


def test_first_run_prints_how_to_serve_and_query(first_run):
  process, root, commands = first_run
  export_dir = str(root / "export")
  serve, curl, recommend = commands
  assert shlex.split(serve)[1:] == [
      os.path.join("pipelines", "serve.py"), "--model-dir", export_dir]
  body = json.loads(shlex.split(curl)[-1])
  assert body["k"] == 10 and len(body["history"]) == 3
  argv = shlex.split(recommend)
  assert argv[1:4] == [os.path.join("pipelines", "recommend.py"),
                       "--model-dir", export_dir]
  assert argv[argv.index("--history") + 1] == ",".join(body["history"])
  # Pasted as printed, from the repository root: a quiet, complete answer.
  environment = {name: value for name, value in os.environ.items()
                 if name != "TF_CPP_MIN_LOG_LEVEL"}
  answer = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT,
                          timeout=300, check=True, env=environment)
  recommended = json.loads(answer.stdout)
  assert len(recommended["items"]) == 10
  assert not set(recommended["items"]) & set(body["history"])
  assert_quiet(answer.stderr)
  assert_quiet(process.stderr)


@pytest.mark.parametrize("flags, environment", [
    (["--verbose"], {"TF_CPP_MIN_LOG_LEVEL": "3"}),  # --verbose wins
    ([], {"TF_CPP_MIN_LOG_LEVEL": "0"}),  # the user's setting is kept
])
def test_tensorflow_logs_when_asked(first_run, flags, environment):
  _, root, commands = first_run
  argv = shlex.split(commands[-1]) + flags
  answer = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT,
                          timeout=300, check=True,
                          env={**os.environ, **environment})
  assert len(json.loads(answer.stdout)["items"]) == 10
  assert CPP_LOG_LINE.search(answer.stderr), answer.stderr[-2000:]


@pytest.mark.parametrize("script", sorted(
    os.path.basename(path)
    for path in glob.glob(os.path.join(ROOT, "pipelines", "*.py"))))
def test_every_pipeline_has_verbose(script, monkeypatch, capsys):
  # Importing a pipeline reads --verbose from sys.argv: give it none.
  monkeypatch.setattr(sys, "argv", [script])
  spec = importlib.util.spec_from_file_location(
      f"pipeline_{script[:-3]}", os.path.join(ROOT, "pipelines", script))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  with pytest.raises(SystemExit) as exit_info:
    module.main(["--help"])
  assert exit_info.value.code == 0
  assert "--verbose" in capsys.readouterr().out
