"""Run folders: resolving a run's configuration from flags and the defaults
table, finding an unfinished run to resume, and the end-to-end job that
train.py calls (dataset -> train -> metrics.json -> export)."""

import dataclasses
import datetime
import glob
import json
import os
from typing import Optional

import numpy as np

from remi_tf import config, evaluation, export, training
from remi_tf.data import load_dataset
from remi_tf.data.inputs import evaluation_examples
from remi_tf.serving.artifacts import load_artifacts



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
  """A run configuration: the dataset's and the model's defaults
  (`config.DATASET_DEFAULTS`, `config.objective_defaults`), then any
  non-None override (names as the train.py flags: model, interests,
  embedding_dim, embedding_init, seq_len, threshold, beta, rr_lambda,
  negatives, sampler, batch_size, learning_rate, optimizer, max_steps,
  eval_every, patience, seed).

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
    config.check_range(name, value)
  return RunConfig(dataset=dataset,
                   raw_file=os.path.abspath(raw_file) if raw_file else None,
                   threshold=threshold, model=model, train=train)


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
             "routing": result.routing,
             **result.summary(run_config.train.batch_size)}
  training.write_json(os.path.join(run_dir, training.METRICS_FILE), metrics)
  if export_dir is not None:
    metrics["export"] = export.export_model(
        result.model.tower, dataset, run_config, metrics, export_dir)
  return metrics


def load_run(run_dir: str, cache_dir: Optional[str] = None):
  """Rebuilds a finished run: its config, dataset, best model and metrics.

  Returns:
    (run_config, dataset, training model with the best weights, metrics).
  """
  for required in (training.CONFIG_FILE, training.METRICS_FILE):
    if not os.path.exists(os.path.join(run_dir, required)):
      raise FileNotFoundError(f"{run_dir} has no {required}: not a finished "
                              "run")
  with open(os.path.join(run_dir, training.CONFIG_FILE)) as stored:
    run_config = RunConfig.from_json(json.load(stored))
  with open(os.path.join(run_dir, training.METRICS_FILE)) as stored:
    metrics = json.load(stored)
  dataset = load_dataset(run_config.dataset, run_config.raw_file,
                         run_config.threshold, cache_dir=cache_dir)
  model = training.build_model(dataset, run_config.model,
                               run_config.train.learning_rate,
                               run_config.train.seed,
                               run_config.train.optimizer)
  if run_config.model.model != "pop":
    model.load_weights(os.path.join(run_dir, training.BEST_WEIGHTS)
                       ).expect_partial()
  return run_config, dataset, model, metrics


def export_run(run_dir: str, export_dir: str,
               cache_dir: Optional[str] = None) -> dict:
  """Exports a finished run's best model to `export_dir`."""
  run_config, dataset, model, metrics = load_run(run_dir, cache_dir)
  return export.export_model(model.tower, dataset, run_config, metrics,
                             export_dir)


def evaluate_run(run_dir: str, split: str = "test",
                 cache_dir: Optional[str] = None) -> dict:
  """The paper's metrics of a finished run's best model on a split."""
  run_config, dataset, model, _ = load_run(run_dir, cache_dir)
  examples = evaluation_examples(getattr(dataset, split),
                                 run_config.model.seq_len)
  return evaluation.evaluate(model.tower, examples)


def dataset_of_export(metadata: dict, raw_ids, cache_dir: Optional[str] = None):
  """The run configuration and dataset an export was trained on, rebuilt
  from its metadata (raw file and protocol, through the cache).

  Args:
    metadata: the export's metadata.json.
    raw_ids: the export's item raw ids; the dataset must have exactly these.
    cache_dir: download/preprocessing cache.

  Returns:
    (RunConfig, ProcessedDataset).
  """
  run_config = RunConfig.from_json(metadata["config"])
  dataset = load_dataset(run_config.dataset, run_config.raw_file,
                         run_config.threshold, cache_dir=cache_dir)
  if not np.array_equal(dataset.item_vocab, np.asarray(raw_ids).astype(str)):
    raise ValueError("the export was not trained on this dataset's items")
  return run_config, dataset


def evaluate_export(model_dir: str, split: str = "test",
                    cache_dir: Optional[str] = None) -> dict:
  """The paper's metrics of an export (its SavedModel user tower and item
  embeddings, exact search) on a split of the dataset it was trained on."""
  artifacts = load_artifacts(model_dir)
  run_config, dataset = dataset_of_export(
      artifacts.metadata, artifacts.vocabulary.raw_ids, cache_dir)
  examples = evaluation_examples(getattr(dataset, split),
                                 run_config.model.seq_len)
  raw = np.concatenate([[""], dataset.item_vocab])
  table = np.concatenate([np.zeros_like(artifacts.index.embeddings[:1]),
                          artifacts.index.embeddings])
  ranked = evaluation.rank_by_interests(
      lambda batch: artifacts.user_tower.interests(raw[batch].tolist()),
      table, examples.histories, max(evaluation.CUTOFFS))
  return evaluation.ranking_metrics(ranked, examples.targets)
