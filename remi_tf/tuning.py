"""Choosing beta (IHN) and lambda (routing regularization) for a dataset:
short training runs (trials) over a grid, chosen on validation Recall@50,
with hopeless trials cut short by the median stopping rule.

The search is staged, as the paper tunes: it searches beta per dataset at a
fixed lambda = 100. So
  1. beta over `BETAS` at lambda = 100 (the anchor), then
  2. lambda over `LAMBDAS` at the best beta of step 1 (the anchor is not run
     twice),
6 trials instead of the 12 of the full product. The chosen setting is the
trial with the best validation Recall@50 at any of its validations (as a
run keeps its best weights); ties go to the earlier trial.

Test users are never read: the dataset is cut to its training and
validation users (`without_test_users`) before anything trains, and trials
run the training phase only (`training.train`), which validates.

Each trial is a run folder `<output>/trials/beta-<b>-lambda-<l>/` that
resumes as a run does; a finished trial is recorded in its `trial.json` and
never run again, so the same command continues a killed search.
"""

import dataclasses
import logging
import math
import os
import shutil
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from remi_tf import config, runs, training
from remi_tf.data import ProcessedDataset

_log = logging.getLogger(__name__)

BETAS = (0.1, 1.0, 4.0, 10.0)
LAMBDAS = (10.0, 100.0, 1000.0)
METRIC = "recall@50"
TRIAL_FILE = "trial.json"
# What the tuning writes into its output folder.
RESULTS_FILE = "tuning.json"
TABLE_FILE = "tuning.md"
CONFIG_FILE = "train_config.json"
# Settings the search itself decides: a base --config must leave them out.
TUNED = ("beta", "rr_lambda")
BUDGET = ("max_steps", "eval_every", "patience")
# Settings of the written config: the data, the model and its objective, and
# what shapes learning. The budget, seed and evaluation sample are train.py
# flags of the final run.
WRITTEN_TRAIN_SETTINGS = ("batch_size", "learning_rate", "optimizer")

# A validation curve: (step, validation Recall@50) in step order.
Curve = Sequence[Tuple[int, float]]


@dataclasses.dataclass(frozen=True)
class MedianStoppingRule:
  """The median stopping rule (Golovin et al., "Google Vizier", KDD 2017,
  section 3.2.2; Ray Tune's `MedianStoppingRule`): a trial stops at a
  validation step s if its best value by s is strictly below the median,
  over the finished trials that reached s, of their running averages (mean
  of their values at steps <= s).

  Attributes:
    min_trials: finished trials that must have reached s before the rule
      stops anything at s (Ray Tune's `min_samples_required`).
    grace: validations every trial gets before the rule applies.
  """

  min_trials: int = 3
  grace: int = 3

  def __post_init__(self):
    for name in ("min_trials", "grace"):
      if getattr(self, name) < 1:
        raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got "
                         f"{getattr(self, name)}")

  def stops(self, curve: Curve, finished: Sequence[Curve]) -> bool:
    """Whether the trial with validations `curve` stops at the last of them,
    given the curves of the finished trials."""
    if len(curve) < self.grace:
      return False
    step = curve[-1][0]
    running = [statistics.fmean(value for at, value in other if at <= step)
               for other in finished if other and other[-1][0] >= step]
    if len(running) < self.min_trials:
      return False
    return max(value for _, value in curve) < statistics.median(running)

  def describe(self) -> str:
    return ("Median stopping rule: a trial stops when its best is below the "
            "median of the finished trials' running averages at the same "
            f"step (from validation {self.grace}, with at least "
            f"{self.min_trials} finished trials).")


@dataclasses.dataclass(frozen=True)
class Search:
  """The grid, the budget of a trial and the stopping rule.

  Attributes:
    budget_steps: training steps of a trial that is not stopped.
    checkpoints: validations of a trial over its budget (at most).
    betas, lambdas: the grids.
    rule: the early cut-off of hopeless trials.
  """

  budget_steps: int = 5000
  checkpoints: int = 10
  betas: Tuple[float, ...] = BETAS
  lambdas: Tuple[float, ...] = LAMBDAS
  rule: MedianStoppingRule = MedianStoppingRule()

  def __post_init__(self):
    if self.budget_steps < 1:
      raise ValueError(f"--budget-steps must be >= 1, got {self.budget_steps}")
    if not 1 <= self.checkpoints <= self.budget_steps:
      raise ValueError(f"--checkpoints must be in 1..{self.budget_steps} "
                       f"(--budget-steps), got {self.checkpoints}")
    for name, grid in (("beta", self.betas), ("rr_lambda", self.lambdas)):
      if not grid:
        raise ValueError(f"the {name} grid is empty")
      for value in grid:
        config.check_range(name, value)

  @property
  def eval_every(self) -> int:
    return math.ceil(self.budget_steps / self.checkpoints)

  @property
  def anchor_lambda(self) -> float:
    """The lambda of step 1: the paper's 100 if in the grid, else the
    median of the grid."""
    if config.REMI_RR_LAMBDA in self.lambdas:
      return config.REMI_RR_LAMBDA
    return sorted(self.lambdas)[(len(self.lambdas) - 1) // 2]

  def to_json(self) -> dict:
    return {"budget_steps": self.budget_steps, "eval_every": self.eval_every,
            "betas": list(self.betas), "lambdas": list(self.lambdas),
            "anchor_lambda": self.anchor_lambda,
            "rule": dataclasses.asdict(self.rule)}


def without_test_users(dataset: ProcessedDataset) -> ProcessedDataset:
  """The dataset a search may see: its training and validation users. The
  test split is None, so any read of it fails instead of reading it."""
  return dataclasses.replace(dataset, test=None)


class MedianStopping(tf.keras.callbacks.Callback):
  """Ends a trial's training when the rule stops it (at the end of an
  interval, after its validation).

  Args:
    rule: the stopping rule.
    finished: the curves of the finished trials.
    curve: {step: value} of this trial's validations so far (a resumed
      trial's history); updated in place.
    max_steps: the budget (a trial at its end has nothing left to cut).
  """

  def __init__(self, rule: MedianStoppingRule, finished: Sequence[Curve],
               curve: Dict[int, float], max_steps: int):
    super().__init__()
    self.rule, self.finished, self.curve = rule, finished, curve
    self.max_steps = max_steps

  def on_epoch_end(self, epoch, logs=None):
    step = int(logs["step"])
    self.curve[step] = float(logs[f"val_{METRIC}"])
    if step < self.max_steps and self.rule.stops(sorted(self.curve.items()),
                                                 self.finished):
      self.model.stop_training = True


def trial_name(beta: float, rr_lambda: float) -> str:
  return f"beta-{beta:g}-lambda-{rr_lambda:g}"


def base_config(settings: dict, search: Search) -> runs.RunConfig:
  """The run configuration every trial shares, at the first grid point.

  Args:
    settings: run settings (`remi_tf.cli.SETTING_TYPES` names) without
      `TUNED` and `BUDGET`; must name the dataset.
    search: the search.

  Raises:
    ValueError: a tuned or budget setting, a model whose objective is not
      REMI's, or anything `runs.resolve_config` rejects.
  """
  for name in TUNED + BUDGET:
    if name in settings:
      raise ValueError(f"{name} is chosen by the tuning (the grid, "
                       "--budget-steps, --checkpoints); leave it out of the "
                       "settings")
  model = settings.get("model", config.ModelConfig.model)
  if model not in config.REMI_MODELS:
    raise ValueError(f"model {model!r} does not train with IHN and routing "
                     "regularization; tune one of "
                     f"{', '.join(config.REMI_MODELS)}")
  return runs.resolve_config(**settings, beta=search.betas[0],
                             rr_lambda=search.anchor_lambda,
                             max_steps=search.budget_steps,
                             eval_every=search.eval_every,
                             # Trials end at the budget or by the rule.
                             patience=search.checkpoints)


def tune(settings: dict, search: Search, output_dir: str,
         cache_dir: Optional[str] = None) -> dict:
  """Runs the staged search (skipping finished trials), then writes
  `tuning.json`, `tuning.md` and `train_config.json` (the chosen settings,
  for `train.py --config`) into `output_dir`.

  Args:
    settings: the trials' run settings (see `base_config`).
    search: the grid, budget and stopping rule.
    output_dir: the search's folder; trials go to `<output_dir>/trials/`.
    cache_dir: download/preprocessing cache (default `~/.cache/remi-tf`).

  Returns:
    {"trials": [trial records in run order], "chosen": the best record,
     "table": the Markdown of tuning.md, "config": the written config's
     path, "settings": its contents}.

  Raises:
    ValueError: bad settings (`base_config`), or a trial folder holding a
      trial of another configuration.
    Whatever loading the dataset raises (`remi_tf.data.INPUT_ERRORS`).
  """
  base = base_config(settings, search)
  dataset = without_test_users(runs.run_dataset(base, cache_dir))
  trials: List[dict] = []

  def run(beta: float, rr_lambda: float) -> None:
    run_config = dataclasses.replace(base, model=dataclasses.replace(
        base.model, beta=beta, rr_lambda=rr_lambda))
    trials.append(run_trial(
        run_config, dataset,
        os.path.join(output_dir, "trials", trial_name(beta, rr_lambda)),
        [curve_of(record) for record in trials], search.rule))

  for beta in dict.fromkeys(search.betas):
    run(beta, search.anchor_lambda)
  best_beta = best_trial(trials)["beta"]
  for rr_lambda in dict.fromkeys(search.lambdas):
    if rr_lambda != search.anchor_lambda:
      run(best_beta, rr_lambda)
  chosen = best_trial(trials)
  written = chosen_settings(base, chosen)
  table = markdown(base, dataset.stats, search, trials, chosen)
  os.makedirs(output_dir, exist_ok=True)
  config_path = os.path.join(output_dir, CONFIG_FILE)
  training.write_json(config_path, written)
  training.write_json(os.path.join(output_dir, RESULTS_FILE), {
      "dataset": base.dataset, "stats": dataset.stats,
      "search": search.to_json(), "trials": trials,
      "chosen": {"beta": chosen["beta"], "rr_lambda": chosen["rr_lambda"],
                 **best_validation(chosen)}})
  with open(os.path.join(output_dir, TABLE_FILE), "w") as out:
    out.write(table + "\n")
  return {"trials": trials, "chosen": chosen, "table": table,
          "config": config_path, "settings": written}


def run_trial(run_config: runs.RunConfig, dataset: ProcessedDataset,
              trial_dir: str, finished: Sequence[Curve],
              rule: MedianStoppingRule) -> dict:
  """One trial: trains (or resumes) until the budget or the rule stops it,
  and records it in `trial.json`; a recorded trial is only read.

  Returns:
    {"beta", "rr_lambda", "curve": [{"step", "recall@50", "hr@50"}, ...],
     "steps", "stopped_early", "train_seconds"}.

  Raises:
    ValueError: `trial_dir` holds a trial of another configuration.
  """
  stored = runs.check_config(run_config, trial_dir, "a trial")
  record = training.read_json(os.path.join(trial_dir, TRIAL_FILE))
  if record is not None:
    return record
  os.makedirs(trial_dir, exist_ok=True)
  if stored is None:
    training.write_json(os.path.join(trial_dir, training.CONFIG_FILE),
                        run_config.to_json())
  curve = dict(_recall_curve(training.read_history(trial_dir)))
  max_steps = run_config.train.max_steps
  if curve and max(curve) < max_steps and rule.stops(sorted(curve.items()),
                                                     finished):
    # Stopped, then killed before the record: the history is the outcome.
    shutil.rmtree(os.path.join(trial_dir, training.BACKUP_DIR),
                  ignore_errors=True)
  else:
    _log.info("trial %s", os.path.basename(trial_dir))
    training.train(dataset, run_config.model, run_config.train, trial_dir,
                   callbacks=[MedianStopping(rule, finished, curve,
                                             max_steps)])
  history = training.read_history(trial_dir)
  steps = int(history[-1]["step"])
  record = {
      "beta": run_config.model.beta, "rr_lambda": run_config.model.rr_lambda,
      "curve": [{"step": int(row["step"]),
                 **{name: row[f"val_{name}"] for name in (METRIC, "hr@50")}}
                for row in history],
      "steps": steps, "stopped_early": steps < max_steps,
      "train_seconds": sum(row["train_seconds"] for row in history),
  }
  training.write_json(os.path.join(trial_dir, TRIAL_FILE), record)
  return record


def _recall_curve(history: Sequence[dict]) -> List[Tuple[int, float]]:
  return [(int(row["step"]), row[f"val_{METRIC}"]) for row in history]


def curve_of(record: dict) -> List[Tuple[int, float]]:
  """A trial record's validation curve (step, Recall@50)."""
  return [(point["step"], point[METRIC]) for point in record["curve"]]


def best_validation(record: dict) -> dict:
  """The trial's validation with the best Recall@50 (the first of equals)."""
  return max(record["curve"], key=lambda point: point[METRIC])


def best_trial(trials: Sequence[dict]) -> dict:
  """The trial with the best validation Recall@50 (the first of equals)."""
  return max(trials, key=lambda record: best_validation(record)[METRIC])


def runner_up_within(trials: Sequence[dict], chosen: dict,
                     margin: float) -> Optional[dict]:
  """The best other trial whose best validation Recall@50 is within
  `margin` of the chosen trial's, else None."""
  others = [record for record in trials if record is not chosen]
  if not others:
    return None
  runner_up = best_trial(others)
  gap = best_validation(chosen)[METRIC] - best_validation(runner_up)[METRIC]
  return runner_up if gap < margin else None


def chosen_settings(base: runs.RunConfig, chosen: dict) -> dict:
  """The settings file of the chosen trial, in `train.py --config` form:
  dataset, raw file, threshold, the model with the chosen beta and lambda,
  and `WRITTEN_TRAIN_SETTINGS`."""
  settings = {"dataset": base.dataset, "raw_file": base.raw_file,
              "threshold": base.threshold,
              **dataclasses.asdict(base.model),
              "beta": chosen["beta"], "rr_lambda": chosen["rr_lambda"],
              **{name: getattr(base.train, name)
                 for name in WRITTEN_TRAIN_SETTINGS}}
  return {name: value for name, value in settings.items() if value is not None}


def markdown(base: runs.RunConfig, stats: dict, search: Search,
             trials: Sequence[dict], chosen: dict) -> str:
  """The search as Markdown: data, budget and rule, one row per trial
  with its validation Recall@50 / HR@50 (in %) at each step, the choice,
  and a warning when the runner-up is within one validation user's share
  of Recall@50 of it (`runner_up_within`)."""
  steps = sorted({point["step"] for record in trials
                  for point in record["curve"]})
  header = (["beta", "lambda"] + [f"step {step}" for step in steps] +
            ["best Recall@50", "stopped early", "steps", "train s", "chosen"])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for record in trials:
    at = {point["step"]: point for point in record["curve"]}
    cells = [f"{record['beta']:g}", f"{record['rr_lambda']:g}"]
    cells += [f"{100 * at[step][METRIC]:.2f} / {100 * at[step]['hr@50']:.2f}"
              if step in at else "" for step in steps]
    cells += [f"{100 * best_validation(record)[METRIC]:.2f}",
              "yes" if record["stopped_early"] else "no",
              str(record["steps"]), f"{record['train_seconds']:.0f}",
              "yes" if record is chosen else ""]
    lines.append("| " + " | ".join(cells) + " |")
  source = os.path.basename(base.raw_file) if base.raw_file else base.dataset
  users = min(base.train.eval_users or stats["valid_users"],
              stats["valid_users"])
  # A user's recall lies in [0, 1], so one user moves the mean by <= 1/users.
  runner_up = runner_up_within(trials, chosen, 1 / users)
  close_call = [] if runner_up is None else [
      "",
      f"A close call: beta {runner_up['beta']:g}, lambda "
      f"{runner_up['rr_lambda']:g} is within one validation user's share "
      f"of Recall@50 (1 / {users:,} = {100 / users:.2f} points) of the "
      "chosen trial. More validation users (--eval-users) or a budget "
      "nearer the final run's would tell them apart."]
  return "\n".join([
      f"# Tuning beta and lambda: {base.dataset} ({base.model.model})",
      "",
      f"Raw file: `{source}`; {stats['users']:,} users, {stats['items']:,} "
      f"items. Validation users only "
      f"({base.train.eval_users or 'all'} of {stats['valid_users']:,}), "
      "exact retrieval; cells are Recall@50 / HR@50 in %.",
      f"Budget: {search.budget_steps} steps per trial, validated every "
      f"{search.eval_every}. Beta over {list(search.betas)} at lambda "
      f"{search.anchor_lambda:g}, then lambda over {list(search.lambdas)} at "
      f"the best beta. {search.rule.describe()}",
      "",
      *lines,
      "",
      f"Chosen: beta {chosen['beta']:g}, lambda {chosen['rr_lambda']:g} "
      f"(validation Recall@50 {100 * best_validation(chosen)[METRIC]:.2f}%).",
      *close_call,
  ])
