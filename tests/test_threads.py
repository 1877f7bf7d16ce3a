"""TensorFlow's thread pools for training: the policy, `configure`, and the
training pipelines' flags."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, pipeline_main
from remi_tf import threads


@pytest.mark.parametrize("cores, expected", [
    (1, (1, 1)), (2, (2, 1)), (3, (2, 1)), (4, (2, 2)), (16, (2, 8))])
def test_two_ops_at_once_share_the_cores(cores, expected):
  assert threads.training_threads(cores) == expected


@pytest.mark.parametrize("rows", [0, 1, 5])
def test_in_halves_computes_what_one_call_computes(rows):
  values = tf.reshape(tf.range(rows * 3, dtype=tf.float32), [rows, 3])
  calls = []

  def function(values):
    calls.append(int(tf.shape(values)[0]))
    return tf.cumsum(values, axis=1) * (values[:, :1] + 1)

  whole = function(values)
  calls.clear()
  halves = threads.in_halves(function, values)
  assert calls == [rows // 2, rows - rows // 2]
  np.testing.assert_array_equal(halves, whole)


def _configure_in_a_fresh_process(call: str):
  """The (inter, intra) TensorFlow runs a matmul with after `call`."""
  code = ("import tensorflow as tf; from remi_tf import threads; "
          f"{call}; tf.matmul(tf.ones([2, 2]), tf.ones([2, 2])); "
          "print(tf.config.threading.get_inter_op_parallelism_threads(), "
          "tf.config.threading.get_intra_op_parallelism_threads())")
  answer = subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True,
                          capture_output=True, check=True, timeout=120)
  return tuple(int(count) for count in answer.stdout.split())


def test_configure_sets_the_policy_or_the_given_counts():
  cores = len(os.sched_getaffinity(0))
  assert _configure_in_a_fresh_process(
      "threads.configure()") == threads.training_threads(cores)
  assert _configure_in_a_fresh_process(
      "threads.configure(3, 0)") == (3, 0)


def test_configure_after_tensorflow_started_keeps_its_pools(caplog):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.constant(1.0) + 1.0  # pylint: disable=expression-not-assigned
  before = (tf.config.threading.get_inter_op_parallelism_threads(),
            tf.config.threading.get_intra_op_parallelism_threads())
  wanted = tuple(count + 1 for count in before)
  assert threads.configure(*wanted) == before
  assert "already running" in caplog.text


@pytest.mark.parametrize("script", ["train.py", "tune.py", "reproduce.py"])
def test_training_pipelines_set_the_threads_they_are_given(script, tmp_path):
  answer = subprocess.run(
      [sys.executable, os.path.join("pipelines", script), "--dataset", "csv",
       "--raw-file", str(tmp_path / "missing.csv"), "--inter-op-threads",
       "1", "--intra-op-threads", "3",
       "--output", str(tmp_path / "out"),
       *(["--max-steps", "10"] if script == "reproduce.py" else [])],
      cwd=ROOT, text=True, capture_output=True, timeout=300,
      env={**os.environ, "REMI_TF_HOME": str(tmp_path / "cache")})
  assert answer.returncode == 2, answer.stderr
  assert "TensorFlow threads: 1 inter-op, 3 intra-op" in answer.stderr
  assert answer.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize("value", ["-1", "two"])
def test_a_bad_thread_count_is_a_usage_error(value, capsys):
  with pytest.raises(SystemExit) as exit_:
    pipeline_main("train.py")(["--dataset", "csv", "--intra-op-threads",
                               value])
  assert exit_.value.code == 2
  assert "--intra-op-threads" in capsys.readouterr().err
