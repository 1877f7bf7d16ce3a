"""New export versions while the service runs: the served model swaps to a
complete newer version, refuses a broken one, and never mixes versions."""

import os
import re
import shutil
import threading
import time

import httpx
import pytest

from conftest import TINY_RUN_FLAGS, run_pipeline
from remi_tf import layout, serving
from test_serving import _free_port, _process


def _load(folder, loaded=None):
  """A `ServedModel` loader of `folder` that records the versions asked."""
  def load(version):
    if loaded is not None:
      loaded.append(version)
    return serving.Recommender(serving.load_artifacts(str(folder), None,
                                                      version))
  return load


def _copy_version(folder, source, target):
  """Publishes a copy of version `source` as `target`, index (with the
  metadata) renamed into place last, as an export completes."""
  for piece in (layout.RETRIEVAL, layout.USER_TOWER, layout.ITEM_INDEX):
    staged = folder / piece / f".staged-{target}"
    shutil.copytree(folder / piece / str(source), staged)
    os.rename(staged, folder / piece / str(target))


def _break_version(folder, source, target):
  """A version `target` whose index holds only its metadata."""
  shutil.copytree(folder / layout.USER_TOWER / str(source),
                  folder / layout.USER_TOWER / str(target))
  os.makedirs(folder / layout.ITEM_INDEX / str(target))
  shutil.copy(layout.metadata_path(str(folder), source),
              layout.metadata_path(str(folder), target))


def _mix_version(folder, source, searcher_of, target):
  """Version `target`: version `source` with the ScaNN searcher of version
  `searcher_of`, as a botched copy would leave it."""
  _copy_version(folder, source, target)
  index = folder / layout.ITEM_INDEX / str(target) / layout.SCANN
  shutil.rmtree(index)
  shutil.copytree(folder / layout.ITEM_INDEX / str(searcher_of) /
                  layout.SCANN, index)


@pytest.fixture(name="model_dir")
def fixture_model_dir(tiny_run, tmp_path):
  """A copy of the tiny export (one version) the test may add versions to."""
  folder = tmp_path / "model"
  shutil.copytree(tiny_run[1], folder)
  return folder


def test_newer_versions_are_served_and_broken_ones_refused_once(model_dir):
  loaded = []
  model = serving.ServedModel(str(model_dir), _load(model_dir, loaded))
  assert model.version == 1 and model.check() is None
  _copy_version(model_dir, 1, 2)
  first = model.current
  assert model.check() == 2
  assert model.version == 2 and model.reloads == 1
  assert first.artifacts.version == 1  # a request holding it still has v1
  _break_version(model_dir, 2, 3)
  assert model.check() is None and model.check() is None
  assert model.version == 2 and 3 in model.refused
  assert "item_index" in model.refused[3]
  assert loaded == [1, 2, 3]  # the broken version was tried once


def test_a_pinned_version_stays(model_dir):
  _copy_version(model_dir, 1, 2)
  model = serving.ServedModel(str(model_dir), _load(model_dir), version=1)
  assert model.check() is None and model.version == 1


def test_reexport_under_traffic_switches_without_a_failed_or_mixed_answer(
    tiny_run, model_dir, tmp_path):
  """A second training run exports version 2 into the folder the service
  polls while requests keep coming: every request succeeds, the service
  moves to version 2, and every answer equals what the version it names
  gives for that history. Then a version 3 with version 1's searcher (its
  recall on its own queries falls) is refused."""
  _, _, cache = tiny_run
  history = serving.load_artifacts(str(model_dir)).vocabulary.to_raw(
      list(range(1, 11)))
  port = _free_port()
  base = f"http://127.0.0.1:{port}"
  answers, stop = [], threading.Event()

  def send_requests():
    with httpx.Client(timeout=30) as client:
      while not stop.is_set():
        response = client.post(f"{base}/v1/recommend",
                               json={"history": history, "k": 10})
        answers.append((response.status_code, response.json()))

  with _process([os.path.join("pipelines", "serve.py"), "--model-dir",
                 str(model_dir), "--port", str(port), "--poll-seconds",
                 "0.2"], f"{base}/healthz") as process:
    sender = threading.Thread(target=send_requests)
    sender.start()
    try:
      run_pipeline("train.py", *TINY_RUN_FLAGS, "--seed", "7", "--max-steps",
                   "100", "--output", str(tmp_path / "second"),
                   "--export-dir", str(model_dir), cache_dir=cache)
      _wait_for_version(base, 2)
      _mix_version(model_dir, 2, searcher_of=1, target=3)
      time.sleep(1.0)  # five poll intervals
      assert httpx.get(f"{base}/healthz").json()["model_version"] == 2
      metrics = httpx.get(f"{base}/metrics").text
      assert "remi_reloads_total 1.0" in metrics
      assert "remi_refused_versions_total 1.0" in metrics
      assert re.search(r"^remi_model_load_seconds \d", metrics, re.M)
    finally:
      stop.set()
      sender.join()
    process.terminate()
    refusal = process.stderr.read()
    assert "refused version 3" in refusal and "not the ones exported" in refusal
  assert all(status == 200 for status, _ in answers)
  versions = [answer["model_version"] for _, answer in answers]
  assert versions == sorted(versions) and {1, 2} <= set(versions)
  for version in (1, 2):
    expected = _load(model_dir)(version).recommend([history], 10)[0].items
    assert all(answer["items"] == expected for _, answer in answers
               if answer["model_version"] == version)


def _wait_for_version(base, version, timeout=60.0):
  """Waits until /healthz reports `version`."""
  deadline = time.monotonic() + timeout
  while httpx.get(f"{base}/healthz").json()["model_version"] != version:
    assert time.monotonic() < deadline, f"version {version} not served"
    time.sleep(0.2)
