"""Training: Keras `fit` on the `RetrievalModel` with library callbacks.

One Keras "epoch" is one evaluation interval (`eval_every` steps). At its
end lazy Adam's pending row updates are applied, the validation users are
evaluated (Recall@50 selects the best model),
the best weights are checkpointed, the history is appended to `history.csv`,
early stopping counts evaluations, and `BackupAndRestore` saves weights,
optimizer and epoch, so a killed run loses at most one interval. Early
stopping and the best score are rebuilt from `history.csv` on resume.
"""

import csv
import dataclasses
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional

import tensorflow as tf

from remi_tf import config, evaluation
from remi_tf.data import ProcessedDataset
from remi_tf.data.inputs import (EvaluationExamples, evaluation_examples,
                                 training_dataset)
from remi_tf.models import RetrievalModel, build_user_tower, make_sampler
from remi_tf.optimizers import CatchUpCallback, LazyAdam

HISTORY_FILE = "history.csv"
BEST_WEIGHTS = os.path.join("best", "weights")
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"


@dataclasses.dataclass
class TrainResult:
  """What `train` produced.

  Attributes:
    model: the training model, holding the best weights.
    valid: best validation metrics; test: test metrics of that model.
    steps: optimizer steps taken (over all resumes).
    train_seconds: time spent in training steps (over all resumes).
    routing: the routing diagnostics of the last training interval.
  """

  model: RetrievalModel
  valid: Dict[str, float]
  test: Dict[str, float]
  steps: int
  train_seconds: float
  routing: Dict[str, float] = dataclasses.field(default_factory=dict)

  def summary(self, batch_size: int) -> Dict[str, float]:
    """steps, train_seconds and samples_per_second for metrics.json."""
    rate = self.steps * batch_size / self.train_seconds if (
        self.train_seconds > 0) else 0.0
    return {"steps": self.steps, "train_seconds": self.train_seconds,
            "samples_per_second": rate}


class ValidationCallback(tf.keras.callbacks.Callback):
  """Evaluates the tower on validation users at the end of every interval
  and adds `val_<metric>` and `train_seconds` to the epoch logs."""

  def __init__(self, examples: EvaluationExamples):
    super().__init__()
    self.examples = examples
    self._started = 0.0

  def on_epoch_begin(self, epoch, logs=None):
    self._started = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    logs["train_seconds"] = time.perf_counter() - self._started
    logs["step"] = (epoch + 1) * self.params["steps"]
    metrics = evaluation.evaluate(self.model.tower, self.examples)
    logs.update({f"val_{name}": value for name, value in metrics.items()})


class ResumableEarlyStopping(tf.keras.callbacks.EarlyStopping):
  """Keras early stopping whose counters survive a restart: `best` and
  `wait` are rebuilt from the rows of the run's history."""

  def __init__(self, history: List[Dict[str, float]], **kwargs):
    super().__init__(**kwargs)
    self._history = history

  def on_train_begin(self, logs=None):
    super().on_train_begin(logs)
    for epoch, row in enumerate(self._history):
      current = row[self.monitor]
      if self._is_improvement(current, self.best):
        self.best, self.best_epoch, self.wait = current, epoch, 0
      else:
        self.wait += 1


def read_history(run_dir: str) -> List[Dict[str, float]]:
  """The logged evaluation intervals of a run, one dict per interval (the
  last row wins where a restart logged an interval twice)."""
  path = os.path.join(run_dir, HISTORY_FILE)
  if not os.path.exists(path):
    return []
  by_epoch = {}
  with open(path, newline="") as rows:
    for row in csv.DictReader(rows):
      by_epoch[int(row["epoch"])] = {k: float(v) for k, v in row.items()
                                     if v not in ("", None)}
  return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def build_model(dataset: ProcessedDataset, model_config: config.ModelConfig,
                learning_rate: float, seed: int,
                optimizer: str = "lazy-adam") -> RetrievalModel:
  """The compiled training model for a dataset and configuration."""
  # Pop ranks by the training users' items only, as the reference.
  item_ranking = (dataset.train.items_by_popularity(dataset.num_items)
                  if model_config.model == "pop" else None)
  tower = build_user_tower(model_config, dataset.num_items, item_ranking)
  sampler = make_sampler(model_config.sampler, dataset.num_items,
                         min(model_config.negatives, dataset.num_items), seed)
  model = RetrievalModel(tower, sampler, model_config.beta,
                         model_config.rr_lambda)
  optimizers = {"lazy-adam": LazyAdam, "adam": tf.keras.optimizers.Adam}
  if optimizer not in optimizers:
    raise ValueError(f"unknown optimizer {optimizer!r}; choose one of "
                     f"{', '.join(config.OPTIMIZERS)}")
  model.compile(optimizer=optimizers[optimizer](learning_rate))
  return model


def train(dataset: ProcessedDataset, model_config: config.ModelConfig,
          train_config: config.TrainConfig, run_dir: str,
          verbose: Optional[int] = None) -> TrainResult:
  """Trains (or resumes) a run in `run_dir`, then tests its best model.

  Args:
    dataset: the processed dataset.
    model_config: the tower and its objective.
    train_config: steps, batch, learning rate, evaluation and patience.
    run_dir: the run folder (created; an unfinished run there resumes).
    verbose: Keras verbosity (default: progress bar on a terminal, one line
      per interval otherwise).

  Returns:
    The trained model and its metrics.
  """
  os.makedirs(run_dir, exist_ok=True)
  tf.keras.utils.set_random_seed(train_config.seed)
  model = build_model(dataset, model_config, train_config.learning_rate,
                      train_config.seed, train_config.optimizer)
  valid_examples = evaluation_examples(dataset.valid, model_config.seq_len)
  test_examples = evaluation_examples(dataset.test, model_config.seq_len)
  if model_config.model == "pop":
    return TrainResult(model, evaluation.evaluate(model.tower, valid_examples),
                       evaluation.evaluate(model.tower, test_examples), 0, 0.0)

  history = read_history(run_dir)
  monitor = f"val_{train_config.selection_metric}"
  best = max((row[monitor] for row in history), default=None)
  intervals = math.ceil(train_config.max_steps / train_config.eval_every)
  stream = training_dataset(dataset.train, model_config.seq_len,
                            train_config.batch_size, train_config.seed,
                            start_step=len(history) * train_config.eval_every)
  callbacks = [
      CatchUpCallback(),
      ValidationCallback(valid_examples),
      tf.keras.callbacks.ModelCheckpoint(
          os.path.join(run_dir, BEST_WEIGHTS), monitor=monitor, mode="max",
          save_best_only=True, save_weights_only=True,
          initial_value_threshold=best),
      tf.keras.callbacks.CSVLogger(os.path.join(run_dir, HISTORY_FILE),
                                   append=True),
      tf.keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"),
                                     write_graph=False),
      ResumableEarlyStopping(history, monitor=monitor, mode="max",
                             patience=train_config.patience),
      tf.keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup")),
  ]
  if verbose is None:
    verbose = 1 if sys.stdout.isatty() else 2
  model.fit(stream, epochs=intervals, steps_per_epoch=train_config.eval_every,
            callbacks=callbacks, verbose=verbose)

  history = read_history(run_dir)
  if not history:
    raise RuntimeError(f"{run_dir}: training logged no evaluation")
  model.load_weights(os.path.join(run_dir, BEST_WEIGHTS)).expect_partial()
  best_row = max(history, key=lambda row: row[monitor])
  valid = {name[len("val_"):]: value for name, value in best_row.items()
           if name.startswith("val_")}
  return TrainResult(
      model=model, valid=valid,
      test=evaluation.evaluate(model.tower, test_examples),
      steps=int(history[-1]["step"]),
      train_seconds=sum(row["train_seconds"] for row in history),
      routing={name: history[-1][name] for name in
               ("routing_max_weight", "routing_entropy")})


def write_json(path: str, payload: dict) -> None:
  """Writes JSON atomically (temporary file, then rename)."""
  temporary = f"{path}.tmp"
  with open(temporary, "w") as out:
    json.dump(payload, out, indent=2, sort_keys=True)
  os.replace(temporary, path)
