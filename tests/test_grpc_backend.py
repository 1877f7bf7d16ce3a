"""The TF Serving gRPC backend against a stand-in that speaks TF Serving's
gRPC protocol (tests/tf_serving_grpc_standin.py: the `tensorflow-serving-api`
protos and stubs, the exported SavedModel run by TensorFlow; TF Serving
itself cannot be installed on these machines): the same interests as the
in-process tower, the same answers from the service, version routing, and
errors as 502s that leave the service up."""

import contextlib
import os
import shutil
import subprocess
import sys
import time

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from conftest import ROOT, pipeline_main
from remi_tf import layout, serving
from remi_tf.serving.backends import (InProcessUserTower,
                                      TFServingGrpcUserTower, UserTowerError)
import tf_serving_grpc_standin
from test_serving import _free_port, _process, two_versions  # noqa: F401  pylint: disable=unused-import


@contextlib.contextmanager
def _grpc_standin(base_path, timeout=120):
  """Runs the stand-in on `base_path`; yields its target once it accepts
  connections (it listens only after loading every version)."""
  target = f"127.0.0.1:{_free_port()}"
  process = subprocess.Popen(
      [sys.executable, os.path.join("tests", "tf_serving_grpc_standin.py"),
       str(base_path), target.split(":")[1]],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + timeout
    with grpc.insecure_channel(target) as channel:
      while True:
        if process.poll() is not None:
          raise AssertionError(f"stand-in exited: "
                               f"{process.stderr.read()[-3000:]}")
        try:
          grpc.channel_ready_future(channel).result(timeout=0.5)
          break
        except grpc.FutureTimeoutError:
          if time.time() > deadline:
            raise
    yield target
  finally:
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def standin_base(tiny_run, tmp_path_factory):
  """A model base path with version 1 of the tiny export only."""
  _, export_dir, _ = tiny_run
  base = tmp_path_factory.mktemp("standin") / "user_tower"
  shutil.copytree(export_dir / layout.USER_TOWER / "1", base / "1")
  return base


@pytest.fixture(scope="module")
def standin(standin_base):
  """The target of a stand-in on `standin_base`."""
  with _grpc_standin(standin_base) as target:
    yield target


@contextlib.contextmanager
def _service(model_dir, target):
  """The service on `model_dir` with the gRPC backend at `target`."""
  port = _free_port()
  base = f"http://127.0.0.1:{port}"
  with _process([os.path.join("pipelines", "serve.py"), "--model-dir",
                 str(model_dir), "--port", str(port), "--poll-seconds", "0",
                 "--tf-serving-grpc", target], f"{base}/healthz"):
    yield base


@pytest.fixture(scope="module")
def histories(tiny_run):
  """Eight tower inputs: known raw ids of the export, an unknown id, ""
  padding to seq_len."""
  _, export_dir, _ = tiny_run
  seq_len = layout.read_metadata(str(export_dir), 1)["seq_len"]
  raw_ids = np.load(os.path.join(
      layout.piece_dir(str(export_dir), layout.ITEM_INDEX, 1),
      layout.RAW_IDS)).astype(str)
  rng = np.random.default_rng(0)
  rows = []
  for length in (1, 3, 5, 8, 12, 16, 19, seq_len - 1):
    row = rng.choice(raw_ids, length).tolist() + ["no-such-item"]
    rows.append(row + [""] * (seq_len - len(row)))
  return rows


def test_grpc_interests_equal_the_in_process_towers(tiny_run, standin,
                                                    histories):
  _, export_dir, _ = tiny_run
  tower = InProcessUserTower(
      layout.piece_dir(str(export_dir), layout.USER_TOWER, 1))
  backend = TFServingGrpcUserTower(standin, version=1)
  expected = tower.interests(histories)
  for rows in (histories, histories[:1]):
    interests = backend.interests(rows)
    assert interests.dtype == np.float32
    np.testing.assert_allclose(interests, expected[:len(rows)], atol=1e-5)


def test_only_the_given_version_and_model_are_asked_for(standin, histories):
  with pytest.raises(UserTowerError,
                     match=r"version 2: NOT_FOUND: .*Specific\(user_tower, 2"):
    TFServingGrpcUserTower(standin, version=2).interests(histories)
  with pytest.raises(UserTowerError, match="model items version 1: NOT_FOUND"):
    TFServingGrpcUserTower(standin, version=1,
                           model_name="items").interests(histories)


def _response(values, version=1, output="interests"):
  response = predict_pb2.PredictResponse()
  response.model_spec.version.value = version
  response.outputs[output].CopyFrom(tf.make_tensor_proto(values))
  return response


def test_answers_are_read_from_tensor_content_or_the_typed_fields():
  backend = TFServingGrpcUserTower("127.0.0.1:1", version=1)
  values = np.random.default_rng(0).normal(size=(2, 4, 8)).astype(np.float32)
  in_content = _response(values)
  assert in_content.outputs["interests"].tensor_content
  in_fields = _response(values)
  tensor = in_fields.outputs["interests"]
  tensor.ClearField("tensor_content")
  tensor.float_val.extend(values.ravel().tolist())
  # TensorFlow's convention: missing trailing values repeat the last one.
  truncated = _response(values)
  tensor = truncated.outputs["interests"]
  tensor.ClearField("tensor_content")
  tensor.float_val.extend(values.ravel()[:-5].tolist())
  for response in (in_content, in_fields, truncated):
    np.testing.assert_array_equal(
        backend.read_interests(response, 2),
        tf.make_ndarray(response.outputs["interests"]))


@pytest.mark.parametrize("response, message", [
    (_response(np.zeros((2, 4, 8), np.float32), version=2),
     "version 1 answered for version 2"),
    (_response(np.zeros((2, 4, 8), np.float32), output="routing"),
     r"without interests \(outputs: \['routing'\]\)"),
    (_response(np.zeros((2, 4, 8), np.float64)), "dtype DT_DOUBLE and shape"),
    (_response(np.zeros((3, 4, 8), np.float32)), r"shape \(3, 4, 8\)"),
    (_response(np.zeros((2, 8), np.float32)), r"shape \(2, 8\)"),
])
def test_bad_answers_are_errors(response, message):
  backend = TFServingGrpcUserTower("127.0.0.1:1", version=1)
  with pytest.raises(UserTowerError, match=message):
    backend.read_interests(response, 2)


def test_a_short_answer_is_an_error():
  response = _response(np.zeros((2, 4, 8), np.float32))
  tensor = response.outputs["interests"]
  tensor.ClearField("tensor_content")
  backend = TFServingGrpcUserTower("127.0.0.1:1", version=1)
  with pytest.raises(UserTowerError, match=r"0 values for shape \(2, 4, 8\)"):
    backend.read_interests(response, 2)


def test_the_service_over_grpc_answers_as_in_process(tiny_run, standin,
                                                     histories):
  _, export_dir, _ = tiny_run
  in_process = serving.Recommender(serving.load_artifacts(str(export_dir)))
  queries = [[raw_id for raw_id in row if raw_id] for row in histories]
  expected = [answer.items for answer in in_process.recommend(queries, 20)]
  with _service(export_dir, standin) as base:
    answers = [httpx.post(f"{base}/v1/recommend",
                          json={"history": history, "k": 20}).json()
               for history in queries]
    batch = httpx.post(f"{base}/v1/recommend:batch", json={"requests": [
        {"history": history, "k": 20} for history in queries]}).json()
  assert [answer["items"] for answer in answers] == expected
  assert [answer["items"] for answer in batch["results"]] == expected


def test_a_version_tf_serving_does_not_have_is_a_502_naming_it(
    two_versions, standin, histories):  # pylint: disable=redefined-outer-name
  with _service(two_versions, standin) as base:
    answer = httpx.post(f"{base}/v1/recommend",
                        json={"history": histories[0][:1], "k": 5})
  assert answer.status_code == 502
  assert "model user_tower version 2: NOT_FOUND" in answer.text


def test_an_unreachable_tf_serving_is_a_502_until_it_is_back(
    tiny_run, standin_base, histories):
  _, export_dir, _ = tiny_run
  port = _free_port()  # nothing listens there yet
  target = f"127.0.0.1:{port}"
  request = {"history": histories[0][:1], "k": 5}
  with _service(export_dir, target) as base:
    for _ in range(2):
      answer = httpx.post(f"{base}/v1/recommend", json=request)
      assert answer.status_code == 502
      assert (f"TF Serving gRPC at {target}, model user_tower version 1: "
              "UNAVAILABLE") in answer.text
      assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
    standin_here = tf_serving_grpc_standin.serve(str(standin_base), port)
    try:
      deadline = time.time() + 60
      while answer.status_code == 502 and time.time() < deadline:
        time.sleep(0.2)
        answer = httpx.post(f"{base}/v1/recommend", json=request)
    finally:
      standin_here.stop(grace=None)
  assert answer.status_code == 200 and len(answer.json()["items"]) == 5


def test_the_rest_and_grpc_flags_exclude_each_other(tiny_run, capsys):
  _, export_dir, _ = tiny_run
  code = pipeline_main("serve.py")(["--model-dir", str(export_dir), "--tf-serving-url",
                      "http://127.0.0.1:1/v1/models/user_tower",
                      "--tf-serving-grpc", "127.0.0.1:1"])
  error = capsys.readouterr().err.strip()
  assert code == 2
  assert error.startswith("error: ") and len(error.splitlines()) == 1
  with pytest.raises(ValueError, match="not both"):
    serving.load_artifacts(str(export_dir), "http://127.0.0.1:1",
                           tf_serving_grpc="127.0.0.1:1")
