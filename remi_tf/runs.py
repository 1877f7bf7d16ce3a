"""Run folders: resolving a run's configuration from flags and the defaults
table, finding the run of a configuration, and the end-to-end job that
train.py calls (dataset -> train -> metrics.json -> export), in phases
that resume."""

import dataclasses
import datetime
import glob
import os
import uuid
from typing import Optional

from remi_tf import config, distribute, evaluation, export, layout, training
from remi_tf.data import load_dataset
from remi_tf.data.inputs import evaluation_examples

# The run's identity, written once: {"run_id": ...}.
RUN_FILE = "run.json"


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything that defines a run: data, model, training."""

  dataset: str
  raw_file: Optional[str]
  threshold: int
  model: config.ModelConfig
  train: config.TrainConfig

  def to_json(self) -> dict:
    return {"dataset": self.dataset, "raw_file": self.raw_file,
            "threshold": self.threshold,
            "model": dataclasses.asdict(self.model),
            "train": {**dataclasses.asdict(self.train),
                      "topn": list(self.train.topn)}}

  @classmethod
  def from_json(cls, payload: dict) -> "RunConfig":
    train = dict(payload["train"])
    train["topn"] = tuple(train["topn"])
    return cls(dataset=payload["dataset"], raw_file=payload["raw_file"],
               threshold=payload["threshold"],
               model=config.ModelConfig(**payload["model"]),
               train=config.TrainConfig(**train))

  def matches(self, stored: Optional[dict]) -> bool:
    """Whether a stored config.json is this configuration. A setting added
    to the package after the file was written counts as its default, so
    runs of an older version still resume."""
    if stored is None:
      return False
    try:
      return RunConfig.from_json(stored) == self
    except (KeyError, TypeError):  # not a config of this package
      return False


def resolve_config(dataset: str, raw_file: Optional[str] = None,
                   **overrides) -> RunConfig:
  """A run configuration: the dataset's and the model's defaults
  (`config.DATASET_DEFAULTS`, `config.objective_defaults`), then any
  non-None override (names as the train.py flags: model, interests,
  embedding_dim, embedding_init, seq_len, threshold, beta, rr_lambda,
  negatives, sampler, candidate_scoring, batch_size, learning_rate,
  optimizer, max_steps, eval_every, patience, seed, eval_users).

  Raises:
    ValueError: an unknown setting or choice, or a value out of its range
      (`config.RANGES`); the message names the flag.
  """
  if dataset not in config.DATASET_DEFAULTS:
    raise ValueError(f"unknown dataset {dataset!r}; choose one of "
                     f"{', '.join(config.DATASET_DEFAULTS)}")
  defaults = config.DATASET_DEFAULTS[dataset]
  given = {name: value for name, value in overrides.items()
           if value is not None}
  model_fields = {f.name for f in dataclasses.fields(config.ModelConfig)}
  train_fields = {f.name for f in dataclasses.fields(config.TrainConfig)}
  unknown = set(given) - model_fields - train_fields - {"threshold"}
  if unknown:
    raise ValueError(f"unknown setting(s) {sorted(unknown)}")
  for name, choices in (("model", config.MODELS),
                        ("sampler", config.SAMPLERS),
                        ("candidate_scoring", config.CANDIDATE_SCORINGS),
                        ("embedding_init", config.EMBEDDING_INITS),
                        ("optimizer", config.OPTIMIZERS)):
    if name in given and given[name] not in choices:
      raise ValueError(f"unknown {name.replace('_', ' ')} {given[name]!r}; "
                       f"choose one of {', '.join(choices)}")
  beta, rr_lambda = config.objective_defaults(
      dataset, given.get("model", config.ModelConfig.model))
  model = config.ModelConfig(**{
      "seq_len": defaults.seq_len, "beta": beta, "rr_lambda": rr_lambda,
      **{k: v for k, v in given.items() if k in model_fields}})
  train = config.TrainConfig(
      **{k: v for k, v in given.items() if k in train_fields})
  threshold = given.get("threshold", defaults.threshold)
  for name in config.RANGES:
    value = threshold if name == "threshold" else getattr(
        model if name in model_fields else train, name)
    if value is not None:  # an optional setting left unset
      config.check_range(name, value)
  return RunConfig(dataset=dataset,
                   raw_file=os.path.abspath(raw_file) if raw_file else None,
                   threshold=threshold, model=model, train=train)


def default_run_dir(run_config: RunConfig, root: str = "runs") -> str:
  """The newest run folder of the same configuration under `root` (so the
  same command resumes it, or says it is complete), else a new
  `<dataset>-<model>-<time>` folder."""
  same = [os.path.dirname(path) for path in
          glob.glob(os.path.join(root, "*", training.CONFIG_FILE))
          if run_config.matches(training.read_json(path))]
  if same:
    return max(same, key=lambda folder: os.path.getmtime(
        os.path.join(folder, training.CONFIG_FILE)))
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return os.path.join(root, f"{run_config.dataset}-{run_config.model.model}-"
                      f"{stamp}")


def run_id(run_dir: str) -> Optional[str]:
  """The run's identity (recorded in its exports), None before it is set."""
  record = training.read_json(os.path.join(run_dir, RUN_FILE))
  return record["run_id"] if record else None


def is_complete(run_config: RunConfig, run_dir: str,
                export_dir: Optional[str] = None) -> bool:
  """Whether every phase of the run in `run_dir` is done: trained, tested
  (metrics.json) and, if `export_dir` is given, exported there.

  Raises:
    ValueError: `run_dir` holds a run with another configuration.
    layout.ModelFolderError: `export_dir` is not an export folder.
  """
  check_config(run_config, run_dir)
  if not os.path.exists(os.path.join(run_dir, training.METRICS_FILE)):
    return False
  return export_dir is None or _exported_version(run_dir,
                                                 export_dir) is not None


def train_run(run_config: RunConfig, run_dir: str,
              export_dir: Optional[str] = None,
              cache_dir: Optional[str] = None,
              task: distribute.Task = distribute.LOCAL) -> dict:
  """The main job, in phases that each resume where a killed run stopped:
  training (`training.train`), the final evaluation on the test users
  (recorded in metrics.json) and the export (recorded in the export's
  metadata by the run's id, so a version is published once). A phase that
  is done is never repeated: on a complete run the job changes nothing.

  Args:
    run_config: the run's configuration.
    run_dir: the run folder; a run there with another configuration is an
      error, one with this configuration continues.
    export_dir: where to export the trained model (None: no export).
    cache_dir: download/preprocessing cache (default `~/.cache/remi-tf`).
    task: the `tf.distribute` strategy and this process's task (default: one
      machine). Only the chief tests, writes and exports; the model is
      tested and exported without a strategy, from the best weights, so a
      sharded run exports what a one-machine run would.

  Returns:
    The contents of metrics.json, plus "export": {"export_dir", "version"}
    when exported; {} on a task that is not the chief.

  Raises:
    ValueError: `run_dir` holds a run with another configuration.
    layout.ModelFolderError: `export_dir` is not an export folder.
    Whatever loading the dataset raises (`remi_tf.data.INPUT_ERRORS`);
    the dataset is loaded before anything is written.
  """
  check_config(run_config, run_dir)
  dataset = run_dataset(run_config, cache_dir)
  identity = _open_run_folder(run_config, run_dir) if task.is_chief else None
  metrics_path = os.path.join(run_dir, training.METRICS_FILE)
  metrics = training.read_json(metrics_path)
  model = None
  if metrics is None:
    result = training.train(dataset, run_config.model, run_config.train,
                            run_dir, task=task)
    if result is None:
      return {}
    model = result.model
    test = evaluation.evaluate(model.tower, evaluation_examples(
        dataset.test, run_config.model.seq_len).first(
            run_config.train.eval_users))
    metrics = {"valid": result.valid, "test": test,
               "config": run_config.to_json(), "dataset": dataset.stats,
               "routing": result.routing,
               **result.summary(run_config.train.batch_size)}
    training.crash_point("tested")
    training.write_json(metrics_path, metrics)
  if export_dir is None or not task.is_chief:
    return metrics if task.is_chief else {}
  version = _exported_version(run_dir, export_dir)
  if version is None:
    if model is None:
      model = training.best_model(dataset, run_config.model,
                                  run_config.train, run_dir)
    version = export.export_model(model.tower, dataset, run_config, metrics,
                                  export_dir, run_id=identity)["version"]
    training.crash_point("exported")
  return {**metrics, "export": {"export_dir": export_dir, "version": version}}


def run_dataset(run_config: RunConfig, cache_dir: Optional[str] = None):
  """The run's `ProcessedDataset`, with the interactions' times for a tower
  that reads them (`config.TIME_MODELS`).

  Raises:
    Whatever loading the dataset raises (`remi_tf.data.INPUT_ERRORS`).
  """
  return load_dataset(run_config.dataset, run_config.raw_file,
                      run_config.threshold, cache_dir=cache_dir,
                      times=run_config.model.model in config.TIME_MODELS)


def _exported_version(run_dir: str, export_dir: str) -> Optional[int]:
  """The version of `export_dir` exported from the run, or None.

  Raises:
    layout.ModelFolderError: `export_dir` is not an export folder.
  """
  identity = run_id(run_dir)
  return None if identity is None else layout.find_run_version(export_dir,
                                                               identity)


def check_config(run_config: RunConfig, folder: str,
                 holding: str = "a run") -> Optional[dict]:
  """The configuration stored in a run (or trial) folder, None if none.

  Raises:
    ValueError: `folder` holds `holding` of another configuration than
      `run_config` (`RunConfig.matches`).
  """
  stored = training.read_json(os.path.join(folder, training.CONFIG_FILE))
  if stored is not None and not run_config.matches(stored):
    raise ValueError(f"{folder} holds {holding} with another configuration; "
                     "choose another --output")
  return stored


def _open_run_folder(run_config: RunConfig, run_dir: str) -> str:
  """Creates the run folder with config.json and run.json (its id) unless
  they exist; returns the run id."""
  os.makedirs(run_dir, exist_ok=True)
  config_path = os.path.join(run_dir, training.CONFIG_FILE)
  if not os.path.exists(config_path):
    training.write_json(config_path, run_config.to_json())
  identity = run_id(run_dir)
  if identity is None:
    identity = uuid.uuid4().hex
    training.write_json(os.path.join(run_dir, RUN_FILE),
                        {"run_id": identity})
  return identity


def load_run(run_dir: str, cache_dir: Optional[str] = None):
  """Rebuilds a finished run: its config, dataset, best model and metrics.

  Returns:
    (run_config, dataset, training model with the best weights, metrics).
  """
  for required in (training.CONFIG_FILE, training.METRICS_FILE):
    if not os.path.exists(os.path.join(run_dir, required)):
      raise FileNotFoundError(f"{run_dir} has no {required}: not a finished "
                              "run")
  run_config = RunConfig.from_json(
      training.read_json(os.path.join(run_dir, training.CONFIG_FILE)))
  metrics = training.read_json(os.path.join(run_dir, training.METRICS_FILE))
  dataset = run_dataset(run_config, cache_dir)
  model = training.best_model(dataset, run_config.model, run_config.train,
                              run_dir)
  return run_config, dataset, model, metrics


def export_run(run_dir: str, export_dir: str,
               cache_dir: Optional[str] = None) -> dict:
  """Exports a finished run's best model to `export_dir` as a new version,
  recorded with the run's id."""
  run_config, dataset, model, metrics = load_run(run_dir, cache_dir)
  return export.export_model(model.tower, dataset, run_config, metrics,
                             export_dir, run_id=run_id(run_dir))


def evaluate_run(run_dir: str, split: str = "test",
                 cache_dir: Optional[str] = None) -> dict:
  """The paper's metrics of a finished run's best model on a split."""
  run_config, dataset, model, _ = load_run(run_dir, cache_dir)
  examples = evaluation_examples(getattr(dataset, split),
                                 run_config.model.seq_len)
  return evaluation.evaluate(model.tower, examples)
