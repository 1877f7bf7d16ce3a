"""The README's first run: train.py on the packaged books-sample (no
download), then the query it prints; TensorFlow's log noise stays hidden
unless --verbose or the user's own TF_CPP_MIN_LOG_LEVEL asks for it."""

import glob
import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time

import httpx
import pytest

from conftest import ROOT, run_pipeline
from remi_tf import cli

# The README's command with a smaller budget and model (a test is cheap).
FIRST_RUN_FLAGS = ["--dataset", "books-sample", "--max-steps", "300",
                   "--eval-every", "100", "--embedding-dim", "16",
                   "--negatives", "256", "--batch-size", "64"]
# A line of TensorFlow's C++ logger ("2026-11-27 05:11:12.713373: I ...") or
# of Abseil's ("W0000 00:00:1795756281.916481  13250 file.cc:699] ...").
CPP_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] |"
                          r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ )", re.MULTILINE)
# C++ messages, and Python-side TensorFlow warnings the old code printed.
NOISE = ("cuInit", "PredictCost", "oneDNN", "absl::InitializeLog",
         "WARNING:tensorflow", "retracing", "BackupAndRestore")


def assert_quiet(stderr):
  assert not CPP_LOG_LINE.search(stderr), stderr[-2000:]
  for noise in NOISE:
    assert noise not in stderr, stderr[-2000:]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
  """(train.py's process, the folder of its run/, export/ and cache/, the
  commands it printed: serve, curl, recommend)."""
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


def test_printed_service_query_works(first_run):
  _, _, commands = first_run
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  # The serve command as printed, on a free port instead of 8000.
  server = subprocess.Popen(shlex.split(commands[0]) + ["--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  try:
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
      assert server.poll() is None, server.stderr.read()[-3000:]
      try:
        httpx.get(f"{base}/healthz", timeout=1.0)
        break
      except httpx.HTTPError:
        assert time.time() < deadline
        time.sleep(0.3)
    # The curl query as printed: its URL path, header and body.
    curl = shlex.split(commands[1])
    assert curl[2] == "localhost:8000/v1/recommend"
    name, value = curl[curl.index("-H") + 1].split(": ")
    body = curl[curl.index("-d") + 1]
    answer = httpx.post(f"{base}/v1/recommend", content=body,
                        headers={name: value}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["items"]) == json.loads(body)["k"]
  finally:
    server.terminate()
    server.wait(timeout=30)


def test_verbose_shows_tensorflow_logs(first_run):
  _, _, commands = first_run
  # Even over a quiet level the user set: --verbose is the explicit ask.
  answer = subprocess.run(shlex.split(commands[-1]) + ["--verbose"],
                          capture_output=True, text=True, cwd=ROOT,
                          timeout=300, check=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert len(json.loads(answer.stdout)["items"]) == 10
  assert CPP_LOG_LINE.search(answer.stderr), answer.stderr[-2000:]


@pytest.mark.parametrize("level", ["0", "1"])
def test_a_level_the_user_set_is_kept(level):
  reported = subprocess.run(
      [sys.executable, "-c", "import os, remi_tf; "
       "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"],
      capture_output=True, text=True, cwd=ROOT, check=True,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": level})
  assert reported.stdout.strip() == level


# Pipelines that never load TensorFlow: nothing to quieten (the cluster
# launcher hands --verbose on to the train.py tasks it starts).
TENSORFLOW_FREE = ("local_cluster.py",)


@pytest.mark.parametrize("script", sorted(
    os.path.basename(path)
    for path in glob.glob(os.path.join(ROOT, "pipelines", "*.py"))
    if os.path.basename(path) not in TENSORFLOW_FREE))
def test_every_pipeline_has_verbose(script, monkeypatch, capsys):
  path = os.path.join(ROOT, "pipelines", script)
  with open(path) as source:
    lines = source.read().splitlines()
  # TensorFlow reads its C++ log level once, when it loads: the pipeline
  # configures logging before importing anything else of the package.
  configure = next(number for number, line in enumerate(lines)
                   if line.startswith("cli.configure_logging("))
  imports = [number for number, line in enumerate(lines)
             if re.match(r"(from remi_tf|import tensorflow)", line)
             and line.split()[:4] != ["from", "remi_tf", "import", "cli"]]
  assert imports and configure < min(imports)
  calls = []
  monkeypatch.setattr(cli, "configure_logging",
                      lambda argv=None: calls.append(argv))
  spec = importlib.util.spec_from_file_location(f"pipeline_{script[:-3]}",
                                                path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert calls == [None]
  with pytest.raises(SystemExit) as exit_info:
    module.main(["--help"])
  assert exit_info.value.code == 0
  assert "--verbose" in capsys.readouterr().out


@pytest.mark.parametrize("script", TENSORFLOW_FREE)
def test_tensorflow_free_pipelines_do_not_load_tensorflow(script):
  loaded = subprocess.run(
      [sys.executable, "-c",
       "import runpy, sys; runpy.run_path(sys.argv[1], run_name='check'); "
       "print('tensorflow' in sys.modules)",
       os.path.join(ROOT, "pipelines", script)],
      capture_output=True, text=True, check=True).stdout.split()
  assert loaded == ["False"]
