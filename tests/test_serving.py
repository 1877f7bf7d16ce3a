"""The service end to end over real HTTP, in a real server process on
127.0.0.1: answers, bad requests, start-up failures, and the TF Serving
backend against a stand-in that speaks TF Serving's REST protocol."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from conftest import ROOT, run_pipeline
from remi_tf import runs
from remi_tf.data.inputs import evaluation_examples
from remi_tf.retrieval import exact_top_n


def _free_port():
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@contextlib.contextmanager
def _process(args, url, timeout=120):
  """Starts a server process and waits until `url` answers."""
  process = subprocess.Popen([sys.executable, *args], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  try:
    deadline = time.time() + timeout
    while True:
      if process.poll() is not None:
        raise AssertionError(f"server exited: {process.stderr.read()[-3000:]}")
      try:
        httpx.get(url, timeout=1.0)
        break
      except httpx.HTTPError:
        if time.time() > deadline:
          raise
        time.sleep(0.3)
    yield process
  finally:
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def service(tiny_run):
  _, export_dir, _ = tiny_run
  port = _free_port()
  base = f"http://127.0.0.1:{port}"
  with _process([os.path.join("pipelines", "serve.py"), "--model-dir",
                 str(export_dir), "--port", str(port), "--max-k", "200"],
                f"{base}/healthz"):
    yield base


@pytest.fixture(scope="module")
def user(tiny_run):
  """A test user's raw-id history and the exact expected answer."""
  run_dir, _, cache = tiny_run
  run_config, dataset, model, _ = runs.load_run(str(run_dir), str(cache))
  history_ids = evaluation_examples(dataset.test, 20).histories[0]
  history_ids = history_ids[history_ids > 0]
  raw = dataset.item_vocab[history_ids - 1].tolist()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  interests = model.tower(tf.constant(
      np.pad(history_ids, (0, 20 - len(history_ids)))[None]))["interests"]
  ids, _ = exact_top_n(interests, model.tower.item_table(), 10,
                       tf.constant(history_ids[None]))
  expected = dataset.item_vocab[ids.numpy()[0] - 1].tolist()
  return raw, expected


def test_recommend_returns_the_exact_top_k_without_history(service, user):
  history, expected = user
  answer = httpx.post(f"{service}/v1/recommend",
                      json={"history": history, "k": 10}).json()
  assert answer["items"] == expected
  assert answer["scores"] == sorted(answer["scores"], reverse=True)
  assert not set(answer["items"]) & set(history)


def test_batch_answers_each_request(service, user):
  history, expected = user
  answer = httpx.post(f"{service}/v1/recommend:batch", json={"requests": [
      {"history": history, "k": 10},
      {"history": history, "k": 3, "exclude_history": False},
  ]}).json()
  assert answer["results"][0]["items"] == expected
  assert len(answer["results"][1]["items"]) == 3


def test_health_and_metadata(service):
  assert httpx.get(f"{service}/healthz").json() == {"status": "ok"}
  metadata = httpx.get(f"{service}/v1/metadata").json()
  assert metadata["seq_len"] == 20 and metadata["index"]["recall"] >= 0.99


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 422, "JSON"),
    (json.dumps({"history": "abc", "k": 5}).encode(), 422, "history"),
    (json.dumps({"history": ["1"], "k": "five"}).encode(), 422, "k"),
    (json.dumps({"history": [], "k": 5}).encode(), 422, "empty"),
    (json.dumps({"history": ["no-such-item"], "k": 5}).encode(), 422,
     "known"),
    (json.dumps({"history": ["1"], "k": 0}).encode(), 422, "between 1"),
    (json.dumps({"history": ["1"], "k": 201}).encode(), 422, "between 1"),
    (json.dumps({"history": ["1"], "extra": 1}).encode(), 422, "extra"),
    (b'{"history": ["' + b"x" * (2 << 20) + b'"]}', 413, "larger"),
])
def test_bad_requests_get_4xx_and_the_service_keeps_serving(
    service, user, body, status, message):
  response = httpx.post(f"{service}/v1/recommend", content=body,
                        headers={"content-type": "application/json"})
  assert response.status_code == status
  assert message in response.text
  assert httpx.post(f"{service}/v1/recommend",
                    json={"history": user[0], "k": 2}).status_code == 200


def test_missing_or_corrupt_model_folder_fails_at_start(tiny_run, tmp_path):
  failed = run_pipeline("serve.py", "--model-dir", str(tmp_path / "nothing"),
                        cache_dir=tmp_path, check=False)
  assert failed.returncode == 2 and "nothing" in failed.stderr
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "metadata.json").write_text("{")
  failed = run_pipeline("serve.py", "--model-dir", str(broken),
                        cache_dir=tmp_path, check=False)
  assert failed.returncode == 2 and "metadata.json is corrupt" in (
      failed.stderr)
  (broken / "metadata.json").write_text('{"seq_len": 20}')
  failed = run_pipeline("serve.py", "--model-dir", str(broken),
                        cache_dir=tmp_path, check=False)
  assert failed.returncode == 2 and "item_index is missing" in failed.stderr


def test_tf_serving_backend_against_a_rest_standin(tiny_run, user):
  """Named stand-in: tests/tf_serving_standin.py speaks TF Serving's REST
  predict protocol with the exported SavedModel; real TF Serving cannot be
  installed on these machines."""
  _, export_dir, _ = tiny_run
  standin_port, port = _free_port(), _free_port()
  model_url = f"http://127.0.0.1:{standin_port}/v1/models/user_tower"
  with _process([os.path.join("tests", "tf_serving_standin.py"),
                 str(export_dir / "user_tower" / "1"), str(standin_port)],
                f"http://127.0.0.1:{standin_port}/"):
    base = f"http://127.0.0.1:{port}"
    with _process([os.path.join("pipelines", "serve.py"), "--model-dir",
                   str(export_dir), "--port", str(port), "--tf-serving-url",
                   model_url], f"{base}/healthz"):
      answer = httpx.post(f"{base}/v1/recommend",
                          json={"history": user[0], "k": 10}).json()
  assert answer["items"] == user[1]


def test_recommend_cli(tiny_run, user):
  _, export_dir, cache = tiny_run
  done = run_pipeline("recommend.py", "--model-dir", str(export_dir),
                      "--history", ",".join(user[0]), "--k", "10",
                      cache_dir=cache)
  assert json.loads(done.stdout.strip().splitlines()[-1])["items"] == user[1]
