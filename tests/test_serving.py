"""The service end to end over real HTTP, in a real server process on
127.0.0.1: answers, unknown ids, the exclusion cap, the largest request,
bad requests, start-up failures, and the TF Serving backend against a
stand-in that speaks TF Serving's REST protocol."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
from prometheus_client import parser
import pytest
import tensorflow as tf

from conftest import ROOT, run_pipeline
from remi_tf import runs, serving
from remi_tf.data.inputs import evaluation_examples
from remi_tf.retrieval import exact_top_n
from remi_tf.serving import app as service_app
from remi_tf.serving.backends import TFServingUserTower, UserTowerError
from remi_tf.serving import recommender as recommender_module
from remi_tf.vocabulary import ItemVocabulary


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
def server(tiny_run):
  """(base URL, process) of the service on the tiny export."""
  _, export_dir, _ = tiny_run
  port = _free_port()
  base = f"http://127.0.0.1:{port}"
  with _process([os.path.join("pipelines", "serve.py"), "--model-dir",
                 str(export_dir), "--port", str(port), "--max-k", "200"],
                f"{base}/healthz") as process:
    yield base, process


@pytest.fixture(scope="module")
def service(server):
  return server[0]


@pytest.fixture(scope="module")
def trained(tiny_run):
  run_dir, _, cache = tiny_run
  _, dataset, model, _ = runs.load_run(str(run_dir), str(cache))
  return dataset, model.tower


def _exact_answer(trained, history_ids, k, exclude_ids):
  """Raw ids of the exact top-k for a history of item ids (the tower's
  input, at most 20), leaving out `exclude_ids`."""
  dataset, tower = trained
  interests = tower(tf.constant(
      np.pad(history_ids, (0, 20 - len(history_ids)))[None]))["interests"]
  ids, _ = exact_top_n(interests, tower.item_table(), k,
                       tf.constant(np.asarray(exclude_ids)[None]))
  return dataset.item_vocab[ids.numpy()[0] - 1].tolist()


@pytest.fixture(scope="module")
def user(trained):
  """A test user's raw-id history and the exact expected answer."""
  dataset = trained[0]
  history_ids = evaluation_examples(dataset.test, 20).histories[0]
  history_ids = history_ids[history_ids > 0]
  raw = dataset.item_vocab[history_ids - 1].tolist()
  return raw, _exact_answer(trained, history_ids, 10, history_ids)


def test_recommend_returns_the_exact_top_k_without_history(service, user):
  history, expected = user
  answer = httpx.post(f"{service}/v1/recommend",
                      json={"history": history, "k": 10}).json()
  assert answer["items"] == expected
  assert answer["scores"] == sorted(answer["scores"], reverse=True)
  assert not set(answer["items"]) & set(history)
  assert answer["unknown_ids"] == 0


def test_unknown_ids_are_dropped_before_the_history_is_cut(service, trained):
  # 30 known ids, then 20 the model does not know: the tower sees the last
  # 20 known ones (not 20 padding positions).
  dataset = trained[0]
  known = np.arange(1, 31)
  history = dataset.item_vocab[known - 1].tolist() + [
      f"new-item-{i}" for i in range(20)]
  answer = httpx.post(f"{service}/v1/recommend",
                      json={"history": history, "k": 10}).json()
  assert answer["unknown_ids"] == 20
  assert answer["items"] == _exact_answer(trained, known[-20:], 10, known)
  assert all(score != 0 for score in answer["scores"])


def test_tower_input_drops_unknown_ids_then_keeps_the_last_known():
  vocabulary = ItemVocabulary(["a", "b", "c", "d"])
  ids = vocabulary.to_ids(["a", "x", "b", "c", "", "y", "z", "d", "w"])
  assert vocabulary.tower_input(ids, 3) == ["b", "c", "d"]
  assert vocabulary.tower_input(ids, 6) == ["a", "b", "c", "d", "", ""]
  assert vocabulary.tower_input(vocabulary.to_ids(["x"]), 2) == ["", ""]


def test_only_the_most_recent_distinct_history_ids_are_excluded(
    tiny_run, trained, monkeypatch):
  dataset = trained[0]
  recommender = serving.Recommender(serving.load_artifacts(str(tiny_run[1])))
  monkeypatch.setattr(recommender_module, "MAX_EXCLUDE", 5)
  # 12 distinct ids, oldest first, the newest five repeated in between.
  history_ids = list(range(1, 8)) + list(range(8, 13)) * 2
  history = dataset.item_vocab[np.array(history_ids) - 1].tolist()
  answer = recommender.recommend([history], 200)[0]
  recent = dataset.item_vocab[np.arange(8, 13) - 1].tolist()
  older = dataset.item_vocab[np.arange(1, 8) - 1].tolist()
  full = recommender.recommend([history], 205, exclude_history=False)[0]
  assert answer.items == [i for i in full.items if i not in recent][:200]
  assert set(older) & set(answer.items)  # older ids are not excluded


def test_batch_answers_each_request(service, user):
  history, expected = user
  answer = httpx.post(f"{service}/v1/recommend:batch", json={"requests": [
      {"history": history, "k": 10},
      {"history": history, "k": 3, "exclude_history": False},
  ]}).json()
  assert answer["results"][0]["items"] == expected
  assert len(answer["results"][1]["items"]) == 3


def test_health_and_metadata_without_machine_paths(service):
  assert httpx.get(f"{service}/healthz").json() == {"status": "ok",
                                                    "model_version": 1}
  response = httpx.get(f"{service}/v1/metadata")
  metadata = response.json()
  assert metadata["seq_len"] == 20 and metadata["index"]["recall"] >= 0.99
  assert metadata["version"] == metadata["model_version"] == 1
  assert metadata["raw_file"]["name"] == metadata["config"]["raw_file"]
  assert ROOT not in response.text and '"/' not in response.text


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 422, "JSON"),
    (json.dumps({"history": "abc", "k": 5}).encode(), 422, "history"),
    (json.dumps({"history": ["1"], "k": "five"}).encode(), 422, "k"),
    (json.dumps({"history": [], "k": 5}).encode(), 422, "at least 1 item"),
    (json.dumps({"history": ["1"], "k": 0}).encode(), 422,
     "greater than or equal to 1"),
    (json.dumps({"history": ["1"], "k": 201}).encode(), 422,
     "less than or equal to 200"),
    (json.dumps({"history": ["1"], "extra": 1}).encode(), 422, "extra"),
    (b'{"history": ["' + b"x" * (2 << 20) + b'"]}', 413, "Too Large"),
    # The same body sent in chunks, without a declared length.
    (iter([b'{"history": ["'] + [b"x" * (1 << 16)] * 32 + [b'"]}']), 413,
     "Too Large"),
])
def test_bad_requests_get_4xx_and_the_service_keeps_serving(
    service, user, body, status, message):
  response = httpx.post(f"{service}/v1/recommend", content=body,
                        headers={"content-type": "application/json"})
  assert response.status_code == status
  assert message in response.text
  assert httpx.post(f"{service}/v1/recommend",
                    json={"history": user[0], "k": 2}).status_code == 200


def test_a_batch_above_the_limit_is_refused(service, user):
  requests = [{"history": user[0], "k": 2}] * (service_app.MAX_BATCH + 1)
  response = httpx.post(f"{service}/v1/recommend:batch",
                        json={"requests": requests})
  assert response.status_code == 422 and "requests" in response.text


def _samples(base):
  """{(metric sample name, frozen labels): value} from /metrics."""
  text = httpx.get(f"{base}/metrics").text
  return {(sample.name, frozenset(sample.labels.items())): sample.value
          for family in parser.text_string_to_metric_families(text)
          for sample in family.samples}


def test_metrics_count_requests_by_endpoint_and_status(server, user,
                                                     trained):
  base, _ = server
  before = _samples(base)
  ok = ("remi_requests_total",
        frozenset({"endpoint": "/v1/recommend", "status": "200"}.items()))
  refused = ("remi_requests_total",
             frozenset({"endpoint": "/v1/recommend", "status": "422"}.items()))
  other = ("remi_requests_total",
           frozenset({"endpoint": "other", "status": "404"}.items()))
  for _ in range(3):
    httpx.post(f"{base}/v1/recommend", json={"history": user[0], "k": 2})
  httpx.post(f"{base}/v1/recommend", json={"history": [], "k": 2})
  httpx.get(f"{base}/no/such/path/{time.time()}")
  after = _samples(base)
  assert after[ok] - before.get(ok, 0) == 3
  assert after[refused] - before.get(refused, 0) == 1
  assert after[other] - before.get(other, 0) == 1
  timed = ("remi_request_seconds_count",
           frozenset({"endpoint": "/v1/recommend"}.items()))
  assert after[timed] - before.get(timed, 0) == 4
  batches = ("remi_batch_size_count", frozenset())
  assert after[batches] - before.get(batches, 0) >= 3
  assert after[("remi_requests_in_flight", frozenset())] == 1  # the scrape
  assert after[("remi_model_version", frozenset())] == 1
  assert after[("remi_items_indexed", frozenset())] == len(
      trained[0].item_vocab)
  assert after[("remi_model_load_seconds", frozenset())] > 0
  assert after[("remi_reloads_total", frozenset())] == 0
  assert after[("remi_refused_versions_total", frozenset())] == 0


def _rss_bytes(pid):
  with open(f"/proc/{pid}/status") as status:
    for line in status:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) * 1024
  raise AssertionError("no VmRSS")


def _largest_bodies(raw_ids, k):
  """The largest bodies the service accepts (just under its limit), their
  histories cycling through `raw_ids`: one request, and a batch of the most
  requests; and the number of ids in the single request."""
  unit = len(json.dumps(raw_ids[0])) + 2  # '"id", '
  each = (service_app.MAX_BODY_BYTES - 100) // unit
  history = [raw_ids[i % len(raw_ids)] for i in range(each)]
  per_request = each // service_app.MAX_BATCH - 5
  requests = [{"history": history[i:i + per_request], "k": k}
              for i in range(service_app.MAX_BATCH)]
  bodies = [json.dumps({"history": history, "k": k}).encode(),
            json.dumps({"requests": requests}).encode()]
  assert all(len(body) <= service_app.MAX_BODY_BYTES for body in bodies)
  return bodies, len(history)


def test_the_largest_requests_keep_memory_bounded(server, trained):
  """Resident memory of the service grows less than 50 MB over the
  largest single and batch requests (the merge is linear in the candidates
  and exclusions are deduplicated and capped)."""
  base, process = server
  vocab = trained[0].item_vocab.tolist()
  raw_ids = [raw for raw in vocab if len(raw) == len(vocab[0])]
  (single, batch), num_ids = _largest_bodies(raw_ids, 200)
  assert num_ids > 50_000
  headers = {"content-type": "application/json"}
  small = {"history": raw_ids[:5], "k": 200}
  assert httpx.post(f"{base}/v1/recommend", json=small).status_code == 200
  before = _rss_bytes(process.pid)
  for _ in range(3):
    answer = httpx.post(f"{base}/v1/recommend", content=single,
                        headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text[:300]
    assert not set(answer.json()["items"]) & set(raw_ids)
    answers = httpx.post(f"{base}/v1/recommend:batch", content=batch,
                         headers=headers, timeout=60)
    assert answers.status_code == 200, answers.text[:300]
    assert len(answers.json()["results"]) == service_app.MAX_BATCH
  growth = _rss_bytes(process.pid) - before
  assert growth < 50 * 2**20, f"resident memory grew {growth / 2**20:.0f} MB"


def test_sigterm_lets_requests_in_flight_finish_and_refuses_new_ones(
    tiny_run, user):
  """A request whose body is still arriving when SIGTERM comes is answered;
  one that starts after it gets 503; then the service exits with 0."""
  port = _free_port()
  base = f"http://127.0.0.1:{port}"
  body_may_end = threading.Event()
  answers = []

  def slow_body():
    yield b'{"k": 2, "history": ' + json.dumps(user[0]).encode()[:-1]
    body_may_end.wait(30)
    yield b"]}"

  def send_slowly():
    answers.append(httpx.post(f"{base}/v1/recommend", content=slow_body(),
                              headers={"content-type": "application/json"},
                              timeout=60))

  with _process([os.path.join("pipelines", "serve.py"), "--model-dir",
                 str(tiny_run[1]), "--port", str(port)],
                f"{base}/healthz") as process:
    sender = threading.Thread(target=send_slowly)
    sender.start()
    # Wait until the request is in the service, its body unfinished (the
    # scrape is the other request in flight).
    deadline = time.monotonic() + 30
    while _samples(base)[("remi_requests_in_flight", frozenset())] < 2:
      assert time.monotonic() < deadline, "the slow request never arrived"
      time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    refused = httpx.post(f"{base}/v1/recommend",
                         json={"history": user[0], "k": 2})
    assert refused.status_code == 503 and "shutting down" in refused.text
    assert process.poll() is None  # still draining
    body_may_end.set()
    sender.join()
    assert process.wait(timeout=30) == 0
  assert answers[0].status_code == 200
  assert answers[0].json()["items"] == user[1][:2]


def test_missing_or_incomplete_model_folder_fails_at_start(tiny_run,
                                                          tmp_path):
  _, export_dir, _ = tiny_run
  failed = run_pipeline("serve.py", "--model-dir", str(tmp_path / "nothing"),
                        cache_dir=tmp_path, check=False)
  assert failed.returncode == 2 and "nothing" in failed.stderr
  broken = tmp_path / "broken"
  os.makedirs(broken / "user_tower" / "1")
  with pytest.raises(serving.ModelFolderError, match="no complete export"):
    serving.load_artifacts(str(broken))
  os.makedirs(broken / "item_index" / "1")
  (broken / "item_index" / "1" / "metadata.json").write_text("{")
  with pytest.raises(serving.ModelFolderError, match="no complete export"):
    serving.load_artifacts(str(broken))
  (broken / "item_index" / "1" / "metadata.json").write_text(
      '{"seq_len": 20}')
  with pytest.raises(serving.ModelFolderError,
                     match="item_index/1 is corrupt or incomplete"):
    serving.load_artifacts(str(broken))
  with pytest.raises(serving.ModelFolderError, match="no complete version 2"):
    serving.load_artifacts(str(export_dir), version=2)
  mismatched = tmp_path / "mismatched"
  shutil.copytree(export_dir, mismatched)
  neighbours = mismatched / "item_index" / "1" / "recall_neighbours.npy"
  np.save(neighbours, np.load(neighbours) % 500 + 1)  # not what it finds
  with pytest.raises(serving.ModelFolderError,
                     match="recall .* not the recorded 1.0000"):
    serving.load_artifacts(str(mismatched))
  old = tmp_path / "old"
  shutil.copytree(export_dir / "item_index" / "1", old / "item_index")
  with pytest.raises(serving.ModelFolderError, match="old layout"):
    serving.load_artifacts(str(old))


@pytest.fixture(scope="module")
def two_versions(tiny_run, tmp_path_factory):
  """A copy of the tiny export with a second version (a copy of the
  first)."""
  _, export_dir, _ = tiny_run
  folder = tmp_path_factory.mktemp("versions") / "model"
  shutil.copytree(export_dir, folder)
  for piece in ("item_index", "retrieval", "user_tower"):
    shutil.copytree(folder / piece / "1", folder / piece / "2")
  return folder


def test_tf_serving_backend_against_a_rest_standin(two_versions, user):
  """Named stand-in: tests/tf_serving_standin.py speaks TF Serving's REST
  predict protocol with the exported SavedModel and serves only the newest
  version, as TF Serving by default; real TF Serving cannot be installed
  on these machines. The backend asks for the version of the loaded index:
  the newest works, an older one fails instead of mixing versions."""
  standin_port, port = _free_port(), _free_port()
  model_url = f"http://127.0.0.1:{standin_port}/v1/models/user_tower"
  with _process([os.path.join("tests", "tf_serving_standin.py"),
                 str(two_versions / "user_tower"), str(standin_port)],
                f"http://127.0.0.1:{standin_port}/"):
    base = f"http://127.0.0.1:{port}"
    with _process([os.path.join("pipelines", "serve.py"), "--model-dir",
                   str(two_versions), "--port", str(port),
                   "--tf-serving-url", model_url], f"{base}/healthz"):
      answer = httpx.post(f"{base}/v1/recommend",
                          json={"history": user[0], "k": 10}).json()
    older = TFServingUserTower(model_url, version=1)
    with pytest.raises(UserTowerError, match="versions/1"):
      older.interests([user[0][:1] + [""] * 19])
  assert answer["items"] == user[1]


def test_recommend_cli(tiny_run, user):
  _, export_dir, cache = tiny_run
  done = run_pipeline("recommend.py", "--model-dir", str(export_dir),
                      "--history", ",".join(user[0] + ["new-item"]),
                      "--k", "10", cache_dir=cache)
  answer = json.loads(done.stdout.strip().splitlines()[-1])
  assert answer["items"] == user[1] and answer["unknown_ids"] == 1
