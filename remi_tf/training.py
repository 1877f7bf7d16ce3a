"""Training: Keras `fit` on the `RetrievalModel` with library callbacks, as
a phase of a run that resumes where it stopped.

One Keras "epoch" is one evaluation interval of `eval_every` steps; the
last one is shorter when `eval_every` does not divide `max_steps`, so that
exactly `max_steps` are trained. At the end of each interval lazy Adam's
pending row updates are applied, the validation users are evaluated
(Recall@50 selects the best model), the best weights are checkpointed, the
interval is appended to `history.csv`, early stopping counts evaluations,
and the whole training state (weights, optimizer and its step, the
sampler's draw count) is backed up, so a killed run loses at most one
interval.

Under a `tf.distribute` strategy (`remi_tf.distribute`) the model is built
in the strategy's scope; only the chief writes the run's files (the other
workers of a multi-worker run write theirs to a temporary folder, as
`MultiWorkerMirroredStrategy` needs every worker to save, and delete it),
and every task restores from the chief's backup and history.

A restarted run restores the backup, drops the rows of `history.csv` that
the backup does not cover (a kill can land between the two writes: that
interval is trained again), rebuilds early stopping and the best score from
the history, and continues the input stream and the negative sampler at the
restored step. Both are functions of (seed, step), so a resumed run trains
exactly as an uninterrupted one. When training ends, its outcome is
recorded in `training.json` (atomically) before the backup is deleted; a
run with that record never trains again.
"""

import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from remi_tf import config, distribute, evaluation
from remi_tf.data import ProcessedDataset
from remi_tf.data.inputs import (EvaluationExamples, evaluation_examples,
                                 training_dataset)
from remi_tf.models import RetrievalModel, build_user_tower, make_sampler
from remi_tf.optimizers import CatchUpCallback, LazyAdam

_log = logging.getLogger(__name__)

HISTORY_FILE = "history.csv"
BEST_WEIGHTS = os.path.join("best", "weights")
BACKUP_DIR = "backup"
TRAINING_FILE = "training.json"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
# A test hook for resume (tests/test_runs.py): when this environment
# variable names a crash point, the process kills itself there with SIGKILL,
# as a crash at that moment would. Points: "backup-<i>" (interval i
# validated and logged, its backup not saved), "trained" (training ended,
# not yet recorded), and runs.py's "tested" (test metrics computed, not
# recorded) and "exported" (export published, not yet returned).
CRASH_AT = "REMI_TF_CRASH_AT"
# Training steps per call of Keras's train function (`steps_per_execution`):
# each call costs a Python dispatch and a round of callbacks, a measurable
# share of a step of a few tens of milliseconds (docs/RESULTS.md,
# "Training speed"). A run uses the largest divisor of it that also divides
# eval_every and max_steps (`run_steps_per_execution`), so that intervals,
# early stopping and resume stay step-exact.
STEPS_PER_EXECUTION = 20


def crash_point(name: str) -> None:
  """Kills this process (SIGKILL) if $REMI_TF_CRASH_AT is `name`."""
  if os.environ.get(CRASH_AT) == name:
    os.kill(os.getpid(), signal.SIGKILL)


@dataclasses.dataclass
class TrainResult:
  """The outcome of the training phase.

  Attributes:
    model: the training model, holding the best weights.
    valid: best validation metrics.
    steps: optimizer steps taken (over all resumes).
    train_seconds: time spent in training intervals (over all resumes).
    routing: the routing diagnostics of the last training interval.
  """

  model: RetrievalModel
  valid: Dict[str, float]
  steps: int
  train_seconds: float
  routing: Dict[str, float] = dataclasses.field(default_factory=dict)

  def summary(self, batch_size: int) -> Dict[str, float]:
    """steps, train_seconds and samples_per_second for metrics.json."""
    rate = self.steps * batch_size / self.train_seconds if (
        self.train_seconds > 0) else 0.0
    return {"steps": self.steps, "train_seconds": self.train_seconds,
            "samples_per_second": rate}


def optimizer_step(model: tf.keras.Model) -> int:
  """The optimizer steps taken (`int()` fails on a mirrored variable)."""
  return int(model.optimizer.iterations.numpy())


class ValidationCallback(tf.keras.callbacks.Callback):
  """Evaluates the tower on validation users at the end of every interval
  and adds `val_<metric>`, `step` and `train_seconds` to the epoch logs."""

  def __init__(self, examples: EvaluationExamples):
    super().__init__()
    self.examples = examples
    self._started = 0.0

  def on_epoch_begin(self, epoch, logs=None):
    self._started = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    logs["train_seconds"] = time.perf_counter() - self._started
    logs["step"] = optimizer_step(self.model)
    metrics = evaluation.evaluate(self.model.tower, self.examples)
    logs.update({f"val_{name}": value for name, value in metrics.items()})


def early_stopping_state(history: List[Dict[str, float]],
                         monitor: str) -> Tuple[Optional[float], int, int]:
  """(best value, its interval, intervals since) after these history rows,
  as Keras's `EarlyStopping` (mode "max") counts them."""
  best, best_epoch, wait = None, 0, 0
  for epoch, row in enumerate(history):
    if best is None or row[monitor] > best:
      best, best_epoch, wait = row[monitor], epoch, 0
    else:
      wait += 1
  return best, best_epoch, wait


class ResumableEarlyStopping(tf.keras.callbacks.EarlyStopping):
  """Keras early stopping whose counters survive a restart: `best` and
  `wait` are rebuilt from the rows of the run's history."""

  def __init__(self, history: List[Dict[str, float]], **kwargs):
    super().__init__(**kwargs)
    self._history = history

  def on_train_begin(self, logs=None):
    super().on_train_begin(logs)
    if self._history:
      self.best, self.best_epoch, self.wait = early_stopping_state(
          self._history, self.monitor)


class StopAtMaxSteps(tf.keras.callbacks.Callback):
  """Ends training after exactly `max_steps` optimizer steps: the interval
  that reaches them ends early (and is still validated, logged and backed
  up, as its epoch end runs)."""

  def __init__(self, max_steps: int):
    super().__init__()
    self.max_steps = max_steps
    self._steps_left = max_steps
    self._supports_tf_logs = True  # the logs are not read: no sync per step

  def on_epoch_begin(self, epoch, logs=None):
    self._steps_left = self.max_steps - optimizer_step(self.model)

  def on_train_batch_end(self, batch, logs=None):
    if batch + 1 >= self._steps_left:
      self.model.stop_training = True


class IntervalBackup(tf.keras.callbacks.Callback):
  """Backs up the whole training state at the end of every interval.

  Keras's `BackupAndRestore` restores inside `fit`, too late to start the
  input stream at the restored step, and deletes its backup when `fit`
  returns, before the run has recorded that training is complete; this
  backup is restored before `fit` and deleted by the run.

  Args:
    model: the compiled training model (its optimizer and sampler are
      saved with it).
    directory: the backup folder.
    restore_from: the backup folder to restore from (default `directory`;
      the chief's for the other workers of a multi-worker run).
  """

  def __init__(self, model: tf.keras.Model, directory: str,
               restore_from: Optional[str] = None):
    super().__init__()
    self._manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model), directory, max_to_keep=1)
    self._restore_from = restore_from or directory

  def restore(self) -> int:
    """Restores the last backup into the model, if there is one; returns
    the optimizer step it holds (0 without a backup)."""
    model = self._manager.checkpoint.model
    latest = tf.train.latest_checkpoint(self._restore_from)
    if latest:
      with model.distribute_strategy.scope():
        model.optimizer.build(model.trainable_variables)
      self._manager.checkpoint.restore(
          latest).assert_existing_objects_matched()
    return optimizer_step(model)

  def on_epoch_end(self, epoch, logs=None):
    crash_point(f"backup-{epoch + 1}")
    self._manager.save()


def read_history(run_dir: str) -> List[Dict[str, float]]:
  """The logged evaluation intervals of a run, one dict per interval."""
  path = os.path.join(run_dir, HISTORY_FILE)
  if not os.path.exists(path):
    return []
  with open(path, newline="") as rows:
    return [{k: float(v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(rows)]


def truncate_history(run_dir: str, intervals: int,
                     write: bool = True) -> List[Dict[str, float]]:
  """Keeps the rows of the first `intervals` intervals in history.csv
  (rewritten atomically if any row goes, unless `write` is False); returns
  the rows kept."""
  path = os.path.join(run_dir, HISTORY_FILE)
  history = read_history(run_dir)
  if all(int(row["epoch"]) < intervals for row in history):
    return history
  if not write:
    return [row for row in history if int(row["epoch"]) < intervals]
  with open(path, newline="") as stored:
    header, *rows = list(csv.reader(stored))
  epoch = header.index("epoch")
  temporary = f"{path}.tmp"
  with open(temporary, "w", newline="") as out:
    csv.writer(out).writerows(
        [header] + [row for row in rows if int(row[epoch]) < intervals])
  os.replace(temporary, path)
  return read_history(run_dir)


def run_steps_per_execution(train_config: config.TrainConfig) -> int:
  """The steps per train-function call of a run: the largest divisor of
  `STEPS_PER_EXECUTION` that divides eval_every and max_steps (every
  interval, and the run, then ends at the end of a call)."""
  return math.gcd(STEPS_PER_EXECUTION, train_config.eval_every,
                  train_config.max_steps)


def build_model(dataset: ProcessedDataset, model_config: config.ModelConfig,
                learning_rate: float, seed: int,
                optimizer: str = "lazy-adam",
                steps_per_execution: int = STEPS_PER_EXECUTION
                ) -> RetrievalModel:
  """The compiled training model for a dataset and configuration, running
  `steps_per_execution` training steps per call of its train function."""
  # Pop ranks by the training users' items only, as the reference.
  item_ranking = (dataset.train.items_by_popularity(dataset.num_items)
                  if model_config.model == "pop" else None)
  tower = build_user_tower(model_config, dataset.num_items, item_ranking)
  sampler = make_sampler(model_config.sampler, dataset.num_items,
                         min(model_config.negatives, dataset.num_items), seed)
  model = RetrievalModel(tower, sampler, model_config.beta,
                         model_config.rr_lambda, model_config.candidate_scoring)
  optimizers = {"lazy-adam": LazyAdam, "adam": tf.keras.optimizers.Adam}
  if optimizer not in optimizers:
    raise ValueError(f"unknown optimizer {optimizer!r}; choose one of "
                     f"{', '.join(config.OPTIMIZERS)}")
  model.compile(optimizer=optimizers[optimizer](learning_rate),
                steps_per_execution=steps_per_execution)
  return model


def _new_model(dataset: ProcessedDataset, model_config: config.ModelConfig,
               train_config: config.TrainConfig,
               strategy: Optional[tf.distribute.Strategy] = None
               ) -> RetrievalModel:
  """The seeded, untrained model of a run, built in `strategy`'s scope
  (default: no strategy)."""
  tf.keras.utils.set_random_seed(train_config.seed)
  with (strategy or tf.distribute.get_strategy()).scope():
    return build_model(dataset, model_config, train_config.learning_rate,
                       train_config.seed, train_config.optimizer,
                       run_steps_per_execution(train_config))


def best_model(dataset: ProcessedDataset, model_config: config.ModelConfig,
               train_config: config.TrainConfig,
               run_dir: str) -> RetrievalModel:
  """The run's model with its best weights (by validation)."""
  model = _new_model(dataset, model_config, train_config)
  if model_config.model != "pop":  # Pop has no weights: counts are data
    model.load_weights(os.path.join(run_dir, BEST_WEIGHTS)).expect_partial()
  return model


def train(dataset: ProcessedDataset, model_config: config.ModelConfig,
          train_config: config.TrainConfig, run_dir: str,
          verbose: Optional[int] = None,
          task: distribute.Task = distribute.LOCAL,
          callbacks: Sequence[tf.keras.callbacks.Callback] = ()
          ) -> Optional[TrainResult]:
  """The training phase of the run in `run_dir`: trains, resumes an
  interrupted training, or, once training is recorded as complete, only
  loads its outcome.

  Args:
    dataset: the processed dataset.
    model_config: the tower and its objective.
    train_config: steps, batch, learning rate, evaluation and patience.
    run_dir: the run folder (created if missing).
    verbose: Keras verbosity (default: progress bar on a terminal, one line
      per interval otherwise).
    task: the strategy and this process's task (default: one machine).
    callbacks: more Keras callbacks, run at the end of each interval after
      its validation (its `val_<metric>` in the logs); one may end training
      by setting `model.stop_training`.

  Returns:
    The model (built without a strategy) with its best weights and the
    training outcome; None on a task that is not the chief.
  """
  if task.is_chief:
    os.makedirs(run_dir, exist_ok=True)
  record = read_json(os.path.join(run_dir, TRAINING_FILE))
  if record is None:
    record = _fit(dataset, model_config, train_config, run_dir, verbose, task,
                  callbacks)
  if not task.is_chief:
    return None
  return TrainResult(best_model(dataset, model_config, train_config, run_dir),
                     **record)


def _fit(dataset: ProcessedDataset, model_config: config.ModelConfig,
         train_config: config.TrainConfig, run_dir: str,
         verbose: Optional[int], task: distribute.Task,
         callbacks: Sequence[tf.keras.callbacks.Callback]) -> Optional[dict]:
  """Fits from the backup (or from scratch) until `max_steps` or early
  stopping; the chief records the outcome in training.json and deletes the
  backup.

  Returns:
    The record: valid, steps, train_seconds, routing (None on a task that
    is not the chief).
  """
  strategy = distribute.make_strategy(
      task, table_bytes=4 * dataset.num_items * model_config.embedding_dim)
  model = _new_model(dataset, model_config, train_config, strategy)
  if task.strategy != "none" and task.is_chief:
    _log.info("item table placement: %s", json.dumps(
        distribute.describe_placement(model.tower.item_embedding.embeddings)))
  valid_examples = evaluation_examples(
      dataset.valid, model_config.seq_len).first(train_config.eval_users)
  if model_config.model == "pop":
    record = {"valid": evaluation.evaluate(model.tower, valid_examples),
              "steps": 0, "train_seconds": 0.0, "routing": {}}
  else:
    write_dir = run_dir if task.is_chief else tempfile.mkdtemp(
        prefix="remi-tf-worker-")
    try:
      history = _fit_intervals(model, dataset, model_config, train_config,
                               run_dir, write_dir, valid_examples, verbose,
                               task, callbacks)
    finally:
      if write_dir != run_dir:
        shutil.rmtree(write_dir, ignore_errors=True)
    if not task.is_chief:
      return None
    crash_point("trained")
    if not history:
      raise RuntimeError(f"{run_dir}: training logged no evaluation")
    monitor = f"val_{train_config.selection_metric}"
    _, best_epoch, _ = early_stopping_state(history, monitor)
    record = {
        "valid": {name[len("val_"):]: value for name, value in
                  history[best_epoch].items() if name.startswith("val_")},
        "steps": int(history[-1]["step"]),
        "train_seconds": sum(row["train_seconds"] for row in history),
        "routing": {name: history[-1][name] for name in
                    ("routing_max_weight", "routing_entropy")},
    }
  write_json(os.path.join(run_dir, TRAINING_FILE), record)
  shutil.rmtree(os.path.join(run_dir, BACKUP_DIR), ignore_errors=True)
  return record


def _fit_intervals(model: RetrievalModel, dataset: ProcessedDataset,
                   model_config: config.ModelConfig,
                   train_config: config.TrainConfig, run_dir: str,
                   write_dir: str, valid_examples: EvaluationExamples,
                   verbose: Optional[int], task: distribute.Task,
                   extra_callbacks: Sequence[tf.keras.callbacks.Callback]
                   ) -> List[Dict[str, float]]:
  """Keras `fit` from the backed-up step to the end; returns the history.
  The backup and history are read from `run_dir`, and written to
  `write_dir` (`run_dir` on the chief)."""
  backup = IntervalBackup(model, os.path.join(write_dir, BACKUP_DIR),
                          restore_from=os.path.join(run_dir, BACKUP_DIR))
  step = backup.restore()
  # Intervals end every eval_every steps, and at max_steps.
  done = -(-step // train_config.eval_every)
  history = truncate_history(run_dir, done, write=task.is_chief)
  monitor = f"val_{train_config.selection_metric}"
  best, _, wait = early_stopping_state(history, monitor)
  if step >= train_config.max_steps or wait >= train_config.patience:
    return history
  stream = _training_input(model.distribute_strategy, task, dataset,
                           model_config, train_config, step)
  callbacks = [
      CatchUpCallback(),
      ValidationCallback(valid_examples),
      tf.keras.callbacks.ModelCheckpoint(
          os.path.join(write_dir, BEST_WEIGHTS), monitor=monitor, mode="max",
          save_best_only=True, save_weights_only=True,
          initial_value_threshold=best),
      tf.keras.callbacks.CSVLogger(os.path.join(write_dir, HISTORY_FILE),
                                   append=True),
      tf.keras.callbacks.TensorBoard(os.path.join(write_dir, "logs"),
                                     write_graph=False),
      ResumableEarlyStopping(history, monitor=monitor, mode="max",
                             patience=train_config.patience),
      *extra_callbacks,
      StopAtMaxSteps(train_config.max_steps),
      backup,  # last: an interval is backed up once everything logged it
  ]
  if verbose is None:
    verbose = 1 if sys.stdout.isatty() else 2
  model.fit(stream, initial_epoch=done,
            epochs=math.ceil(train_config.max_steps / train_config.eval_every),
            steps_per_epoch=train_config.eval_every, callbacks=callbacks,
            verbose=verbose)
  return read_history(run_dir)


def _training_input(strategy: tf.distribute.Strategy, task: distribute.Task,
                    dataset: ProcessedDataset,
                    model_config: config.ModelConfig,
                    train_config: config.TrainConfig, step: int):
  """The training batches of `fit` from `step` on, for the strategy.

  - none, mirrored: the run's stream (`training_dataset`, seed, batch B);
    Keras splits its batches over the local replicas.
  - multi-worker: the same global stream, each worker taking its slice of
    every batch of B, so the workers train the one-machine batches.
  - parameter-server: each worker its own stream of batches of B, seeded
    by seed + its input pipeline id, continuing at step / workers.

  Raises:
    ValueError: multi-worker with B not divisible by the replicas.
  """
  def stream(seed: int, start_step: int) -> tf.data.Dataset:
    return training_dataset(dataset.train, model_config.seq_len,
                            train_config.batch_size, seed, start_step)

  if task.strategy in ("none", "mirrored"):
    return stream(train_config.seed, step)
  if task.strategy == "parameter-server":
    return tf.keras.utils.experimental.DatasetCreator(
        lambda context: stream(train_config.seed + context.input_pipeline_id,
                               step // task.num_workers))
  replicas = strategy.num_replicas_in_sync
  if train_config.batch_size % replicas:
    raise ValueError(f"--batch-size {train_config.batch_size} must be a "
                     f"multiple of the {replicas} replicas of the "
                     "multi-worker cluster")

  def worker_slices(context: tf.distribute.InputContext) -> tf.data.Dataset:
    per_worker = train_config.batch_size // context.num_input_pipelines
    first = context.input_pipeline_id * per_worker
    return stream(train_config.seed, step).map(
        lambda batch: {name: values[first:first + per_worker]
                       for name, values in batch.items()}).rebatch(
                           context.get_per_replica_batch_size(
                               train_config.batch_size))

  return strategy.distribute_datasets_from_function(worker_slices)


def read_json(path: str) -> Optional[dict]:
  """The JSON object stored at `path`, or None if there is no such file."""
  if not os.path.exists(path):
    return None
  with open(path) as stored:
    return json.load(stored)


def write_json(path: str, payload: dict) -> None:
  """Writes JSON atomically (temporary file, then rename)."""
  temporary = f"{path}.tmp"
  with open(temporary, "w") as out:
    json.dump(payload, out, indent=2, sort_keys=True)
  os.replace(temporary, path)
