"""Tuning beta and lambda (remi_tf/tuning.py, pipelines/tune.py): the median
stopping rule on synthetic curves; a tiny search that reads no test user,
cuts a trial short and resumes; its config through train.py --config, with
the command line over the file; bad config files as one-line errors."""

import argparse
import dataclasses
import json
import os

import numpy as np
import pytest

from conftest import BOOKS_SLICE, pipeline_main
from remi_tf import cli, evaluation, runs, training, tuning
from remi_tf.data import load_dataset
from remi_tf.data.inputs import evaluation_examples

TINY = {"dataset": "csv", "raw_file": BOOKS_SLICE, "embedding_dim": 8,
        "negatives": 64, "batch_size": 16, "eval_users": 20}


def _curve(*values, every=100):
  return [(every * (i + 1), value) for i, value in enumerate(values)]


RULE = tuning.MedianStoppingRule(min_trials=3, grace=2)
FINISHED = [_curve(0.1, 0.3, 0.5), _curve(0.2, 0.4, 0.6),
            _curve(0.0, 0.2, 0.4)]  # running averages at 200: 0.2, 0.3, 0.1


def test_rule_stops_below_the_median_of_running_averages():
  assert RULE.stops(_curve(0.1, 0.19), FINISHED)
  assert not RULE.stops(_curve(0.1, 0.2), FINISHED)  # equal: not strictly
  # Against the finished trials' values at step 200 (0.3, 0.4, 0.2), 0.25
  # would be below the median; against their running averages it is not.
  assert not RULE.stops(_curve(0.1, 0.25), FINISHED)


def test_rule_compares_the_trials_best_value_not_its_last():
  assert not RULE.stops(_curve(0.25, 0.05), FINISHED)


def test_rule_waits_for_grace_and_enough_finished_trials():
  assert not RULE.stops(_curve(0.0), FINISHED)  # one validation < grace 2
  assert not RULE.stops(_curve(0.0, 0.0), FINISHED[:2])
  # A finished trial that stopped before the step does not count.
  assert not RULE.stops(_curve(0.0, 0.0), FINISHED[:2] + [_curve(0.9)])
  assert tuning.MedianStoppingRule(min_trials=2, grace=1).stops(
      _curve(0.0), FINISHED[:2])


def test_search_grid_and_budget():
  search = tuning.Search(budget_steps=1000, checkpoints=3)
  assert search.eval_every == 334
  assert search.anchor_lambda == 100.0
  assert tuning.Search(lambdas=(1.0, 10.0, 30.0, 1000.0)).anchor_lambda == 10
  for bad in ({"checkpoints": 0}, {"budget_steps": 5, "checkpoints": 6},
              {"budget_steps": 0}, {"betas": (1.0, -1.0)}, {"lambdas": ()}):
    with pytest.raises(ValueError):
      tuning.Search(**bad)


def _trial(beta, recall):
  return {"beta": beta, "rr_lambda": 100.0, "stopped_early": False,
          "steps": 100, "train_seconds": 1.0,
          "curve": [{"step": 100, "recall@50": recall, "hr@50": recall}]}


def test_table_warns_when_the_runner_up_is_within_one_validation_user():
  stats = {"users": 1000, "items": 500, "valid_users": 50}
  search = tuning.Search(betas=(1.0, 4.0), lambdas=(100.0,),
                         budget_steps=100, checkpoints=1)
  for eval_users, warned in ((None, False), (10, True)):
    # One user is 1/50 = 2 points or 1/10 = 10 points; the gap is 3.
    base = runs.resolve_config("csv", "log.csv", eval_users=eval_users)
    trials = [_trial(1.0, 0.30), _trial(4.0, 0.33)]
    chosen = tuning.best_trial(trials)
    assert chosen["beta"] == 4.0
    table = tuning.markdown(base, stats, search, trials, chosen)
    assert ("A close call: beta 1, lambda 100" in table) == warned


@pytest.mark.parametrize("settings, message", [
    ({"beta": 1.0}, "beta is chosen by the tuning"),
    ({"max_steps": 10}, "max_steps is chosen by the tuning"),
    ({"model": "youtube-dnn"}, "does not train with IHN"),
    ({"interests": 0}, "--interests must be >= 1"),
])
def test_bad_settings_are_refused_before_any_data_is_read(settings, message):
  with pytest.raises(ValueError, match=message):
    tuning.base_config({**TINY, **settings}, tuning.Search())


@dataclasses.dataclass(frozen=True)
class StopOnceOneFinished:
  """A stopping rule that stops every trial after the first at its first
  validation (the median rule's decisions are tested above)."""

  def stops(self, curve, finished):
    return bool(finished)

  def describe(self):
    return "Every trial after the first stops at its first validation."


SEARCH = tuning.Search(budget_steps=40, checkpoints=2, betas=(0.1, 4.0),
                       lambdas=(10.0,), rule=StopOnceOneFinished())


class _TestSplit:
  """Stands in for the test split: any read of it fails the test."""

  def __getattr__(self, name):
    raise AssertionError(f"the tuning read the test split ({name})")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
  """A 2 x 1 search on the books slice, with the test split poisoned and
  every evaluation recorded: (output, result, evaluated histories, cache)."""
  root = tmp_path_factory.mktemp("tuning")
  cache = str(root / "cache")
  evaluated = []
  evaluate = evaluation.evaluate

  def recording_evaluate(tower, examples, *args, **kwargs):
    evaluated.append(examples.histories)
    return evaluate(tower, examples, *args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(evaluation, "evaluate", recording_evaluate)
    patch.setattr(runs, "load_dataset", lambda *args, **kwargs: (
        dataclasses.replace(load_dataset(*args, **kwargs),
                            test=_TestSplit())))
    result = tuning.tune(TINY, SEARCH, str(root / "out"), cache)
  return root / "out", result, evaluated, cache


def test_search_evaluates_validation_users_only(tuned):
  _, result, evaluated, cache = tuned
  dataset = load_dataset("csv", BOOKS_SLICE, cache_dir=cache)
  valid = evaluation_examples(dataset.valid, 20).first(TINY["eval_users"])
  # Two validations of the first trial, one of the stopped second.
  assert len(evaluated) == 3
  for histories in evaluated:
    np.testing.assert_array_equal(histories, valid.histories)
  assert [len(record["curve"]) for record in result["trials"]] == [2, 1]


def test_search_stops_hopeless_trials_and_chooses_on_validation(tuned):
  output, result, _, _ = tuned
  first, second = result["trials"]
  assert (first["beta"], first["rr_lambda"]) == (0.1, 10.0)
  assert (second["beta"], second["rr_lambda"]) == (4.0, 10.0)
  assert [p["step"] for p in first["curve"]] == [20, 40]
  assert first["steps"] == 40 and not first["stopped_early"]
  assert second["steps"] == 20 and second["stopped_early"]
  best = max(result["trials"], key=lambda record: max(
      point["recall@50"] for point in record["curve"]))
  assert result["chosen"] is best
  assert result["settings"]["beta"] == best["beta"]
  assert result["settings"]["rr_lambda"] == 10.0
  with open(output / tuning.RESULTS_FILE) as stored:
    assert json.load(stored)["chosen"]["beta"] == best["beta"]
  table = (output / tuning.TABLE_FILE).read_text()
  assert "| beta | lambda | step 20 | step 40 |" in table
  assert "| 4 | 10 |" in table and "stopped early" in table
  assert BOOKS_SLICE not in table  # the file is named without its folder


def test_search_resumes_without_training_finished_trials(tuned, monkeypatch):
  output, result, _, cache = tuned
  trained = []
  monkeypatch.setattr(training, "train",
                      lambda *args, **kwargs: trained.append(args))
  assert tuning.tune(TINY, SEARCH, str(output), cache)["trials"] == (
      result["trials"])
  # Stopped by the rule, then killed before its record: the history says
  # it was stopped; training it again would go on.
  stopped = output / "trials" / tuning.trial_name(4.0, 10.0)
  for record in (tuning.TRIAL_FILE, training.TRAINING_FILE):
    os.remove(stopped / record)
  assert tuning.tune(TINY, SEARCH, str(output), cache)["trials"] == (
      result["trials"])
  assert not trained


def test_search_refuses_an_output_of_other_settings(tuned):
  output, _, _, cache = tuned
  with pytest.raises(ValueError, match="another configuration"):
    tuning.tune({**TINY, "embedding_dim": 4}, SEARCH, str(output), cache)


def test_chosen_config_trains_through_train_py_with_flags_over_it(
    tuned, tmp_path):
  _, result, _, cache = tuned
  run_dir = tmp_path / "run"
  code = pipeline_main("train.py")([
      "--config", result["config"], "--negatives", "32", "--max-steps", "20",
      "--eval-every", "20", "--eval-users", "5", "--no-export",
      "--output", str(run_dir), "--cache-dir", cache])
  assert code == 0
  with open(run_dir / training.METRICS_FILE) as stored:
    run = json.load(stored)["config"]
  chosen = result["settings"]
  assert run["dataset"] == "csv" and run["raw_file"] == chosen["raw_file"]
  assert run["model"]["beta"] == chosen["beta"]
  assert run["model"]["rr_lambda"] == chosen["rr_lambda"] == 10.0
  assert run["model"]["embedding_dim"] == 8  # the file over the default
  assert run["model"]["negatives"] == 32  # the flag over the file
  assert run["train"]["batch_size"] == 16
  assert run["train"]["max_steps"] == 20


def _config_file(tmp_path, text):
  path = tmp_path / "settings.json"
  path.write_text(text)
  return str(path)


def test_run_settings_flags_over_file_over_defaults(tmp_path):
  path = _config_file(tmp_path, json.dumps(
      {"dataset": "csv", "beta": 4, "interests": 2, "eval_users": None}))
  args = argparse.Namespace(config=path, dataset=None, beta=0.5,
                                interests=None, verbose=False)
  settings = cli.run_settings(args)
  assert settings == {"dataset": "csv", "beta": 0.5, "interests": 2}
  assert isinstance(cli.read_settings(path)["beta"], float)
  with pytest.raises(ValueError, match="--dataset is required"):
    cli.run_settings(argparse.Namespace(config=None, dataset=None))


@pytest.mark.parametrize("text, message", [
    ('{"dataset": "csv", "bta": 4}', "unknown setting 'bta'"),
    ('{"interests": 2.5}', "interests must be an integer, got 2.5"),
    ('{"beta": "high"}', 'beta must be a number, got "high"'),
    ('{"interests": true}', "interests must be an integer, got true"),
    ('{"model": 3}', "model must be a string"),
    ('[1, 2]', "not a JSON object"),
    ('{"dataset": ', "Expecting value"),
])
def test_bad_config_files_are_one_line_errors(text, message, tmp_path):
  with pytest.raises(ValueError, match=message) as error:
    cli.read_settings(_config_file(tmp_path, text))
  assert str(error.value).startswith("--config ")
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("script, text, message", [
    ("train.py", '{"dataset": "csv", "bta": 4}', "unknown setting 'bta'"),
    ("train.py", '{"dataset": "csv", "sampler": "zipf"}', "unknown sampler"),
    ("train.py", '{"dataset": "csv", "candidate_scoring": "min-interest"}',
     "unknown candidate scoring"),
    ("train.py", '{"beta": 4}', "--dataset is required"),
    ("tune.py", '{"dataset": "csv", "rr_lambda": 4}', "rr_lambda is chosen"),
])
def test_pipelines_exit_2_on_a_bad_config_before_writing(
    script, text, message, tmp_path, capsys):
  output = tmp_path / "out"
  code = pipeline_main(script)([
      "--config", _config_file(tmp_path, text), "--raw-file", BOOKS_SLICE,
      "--output", str(output), "--cache-dir", str(tmp_path / "cache")])
  error = capsys.readouterr().err.strip()
  assert code == 2
  assert error.startswith("error: ") and message in error
  assert len(error.splitlines()) == 1
  assert not output.exists() and not (tmp_path / "cache").exists()
