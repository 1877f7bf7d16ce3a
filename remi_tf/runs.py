"""Run folders: resolving a run's configuration from flags and the defaults
table, finding an unfinished run to resume, and the end-to-end job that
train.py calls (dataset -> train -> metrics.json -> export)."""

import dataclasses
import datetime
import glob
import json
import logging
import os
from typing import Optional

from remi_tf import config, training
from remi_tf.data import load_dataset

_log = logging.getLogger(__name__)


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


def resolve_config(dataset: str, raw_file: Optional[str] = None,
                   **overrides) -> RunConfig:
  """A run configuration: the dataset's defaults, then any non-None
  override (names as the train.py flags: model, interests, embedding_dim,
  seq_len, threshold, beta, rr_lambda, negatives, sampler, batch_size,
  learning_rate, max_steps, eval_every, patience, seed)."""
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
  model = config.ModelConfig(**{
      "seq_len": defaults.seq_len, "beta": defaults.beta,
      **{k: v for k, v in given.items() if k in model_fields}})
  if model.model not in config.MODELS:
    raise ValueError(f"unknown model {model.model!r}; choose one of "
                     f"{', '.join(config.MODELS)}")
  if model.sampler not in config.SAMPLERS:
    raise ValueError(f"unknown sampler {model.sampler!r}; choose one of "
                     f"{', '.join(config.SAMPLERS)}")
  train = config.TrainConfig(
      **{k: v for k, v in given.items() if k in train_fields})
  for name in ("batch_size", "max_steps", "eval_every", "patience"):
    if getattr(train, name) < 1:
      raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
  return RunConfig(dataset=dataset,
                   raw_file=os.path.abspath(raw_file) if raw_file else None,
                   threshold=given.get("threshold", defaults.threshold),
                   model=model, train=train)


def default_run_dir(run_config: RunConfig, root: str = "runs") -> str:
  """An unfinished run of the same configuration under `root` (so the same
  command resumes it), else a new `<dataset>-<model>-<time>` folder."""
  for candidate in sorted(glob.glob(os.path.join(root, "*", training.CONFIG_FILE))):
    folder = os.path.dirname(candidate)
    if os.path.exists(os.path.join(folder, training.METRICS_FILE)):
      continue
    with open(candidate) as stored:
      if json.load(stored) == run_config.to_json():
        return folder
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return os.path.join(root, f"{run_config.dataset}-{run_config.model.model}-"
                      f"{stamp}")


def train_run(run_config: RunConfig, run_dir: str,
              export_dir: Optional[str] = None,
              cache_dir: Optional[str] = None) -> dict:
  """The main job: dataset -> train (or resume) -> metrics.json -> export.

  Args:
    run_config: the run's configuration.
    run_dir: the run folder; a run there with another configuration is an
      error, an unfinished one with this configuration resumes.
    export_dir: where to export the trained model (None: no export).
    cache_dir: download/preprocessing cache (default `~/.cache/remi-tf`).

  Returns:
    The contents of metrics.json.
  """
  os.makedirs(run_dir, exist_ok=True)
  config_path = os.path.join(run_dir, training.CONFIG_FILE)
  if os.path.exists(config_path):
    with open(config_path) as stored:
      if json.load(stored) != run_config.to_json():
        raise ValueError(f"{run_dir} holds a run with another configuration;"
                         " choose another --output")
  else:
    training.write_json(config_path, run_config.to_json())
  dataset = load_dataset(run_config.dataset, run_config.raw_file,
                         run_config.threshold, cache_dir=cache_dir)
  result = training.train(dataset, run_config.model, run_config.train,
                          run_dir)
  metrics = {"valid": result.valid, "test": result.test,
             "config": run_config.to_json(), "dataset": dataset.stats,
             **result.summary(run_config.train.batch_size)}
  training.write_json(os.path.join(run_dir, training.METRICS_FILE), metrics)
  if export_dir is not None:
    from remi_tf import export  # pylint: disable=g-import-not-at-top
    metrics["export"] = export.export_model(
        result.model.tower, dataset, run_config, metrics, export_dir)
  return metrics
