"""The reproduction report: the paper's ablation (Table 5), the baselines
(Table 2), REMI on each multi-interest tower (Table 3: original, +REMI,
gain) and the beta sweep (Figure 6), trained with one budget and seed,
written as Markdown tables and figures (routing heatmaps, HR@50 against
beta, IHN weights of negatives); and the IHN study (`ihn_study`), the
experiments behind Table 5's +IHN row."""

import dataclasses
import json
import logging
import os
from typing import Dict, List, Optional

import numpy as np

from remi_tf import config, runs

_log = logging.getLogger(__name__)
BASELINE = "ComiRec-SA"
REMI = "REMI"
BETA_SWEEP = (0.1, 1.0, 4.0, 10.0)
RR_LAMBDA = 100.0
METRICS = ("recall@20", "hr@20", "ndcg@20", "recall@50", "hr@50", "ndcg@50")
# Table 3: (tower, its row as published, its row with REMI).
REMI_PAIRS = (
    (BASELINE, BASELINE, REMI),
    ("MIND", "MIND", "REMI (MIND)"),
    ("ComiRec-DR", "ComiRec-DR", "REMI (ComiRec-DR)"),
    ("Re4", "Re4", "REMI (Re4)"),
    ("UMI", "UMI", "REMI (UMI)"),
    ("PIMIRec", "PIMIRec", "REMI (PIMIRec)"),
)
# The IHN study's negatives: a tenth of the default 1,280, which makes
# their share of a 38k-item catalog about the share 1,280 are of the
# paper's 368k Books items.
FEW_NEGATIVES = 128


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of the report: a name and the train.py settings it uses."""

  name: str
  settings: dict


def methods(dataset: str) -> List[Method]:
  """The report's rows for a dataset (its default beta for IHN)."""
  beta = config.DATASET_DEFAULTS[dataset].beta
  plain = {"beta": 0.0, "rr_lambda": 0.0}
  remi = {"beta": beta, "rr_lambda": RR_LAMBDA}
  rows = [
      Method(BASELINE, {"model": "comirec-sa", **plain}),
      Method("+IHN", {"model": "comirec-sa", "beta": beta, "rr_lambda": 0.0}),
      Method("+RR", {"model": "comirec-sa", "beta": 0.0,
                     "rr_lambda": RR_LAMBDA}),
      Method(REMI, {"model": "comirec-sa", **remi}),
      Method("Pop", {"model": "pop", **plain}),
      Method("YouTube DNN", {"model": "youtube-dnn", **plain}),
      Method("GRU4Rec", {"model": "gru4rec", **plain}),
      Method("MIND", {"model": "mind", **plain}),
      Method("REMI (MIND)", {"model": "mind", **remi}),
      Method("ComiRec-DR", {"model": "comirec-dr", **plain}),
      Method("REMI (ComiRec-DR)", {"model": "comirec-dr", **remi}),
      Method("Re4", {"model": "re4", **plain}),
      Method("REMI (Re4)", {"model": "re4", **remi}),
      Method("UMI", {"model": "umi", **plain}),
      Method("UMI_HN", {"model": "umi", "candidate_scoring": "max-interest",
                        **plain}),
      Method("REMI (UMI)", {"model": "umi", **remi}),
      Method("PIMIRec", {"model": "pimirec", **plain}),
      Method("REMI (PIMIRec)", {"model": "pimirec", **remi}),
  ]
  rows += [Method(f"REMI beta={b:g}", {"model": "comirec-sa", "beta": b,
                                       "rr_lambda": RR_LAMBDA})
           for b in BETA_SWEEP if b != beta]
  return rows


def ihn_study(dataset: str) -> List[Method]:
  """ComiRec-SA with IHN alone (no RR) against ComiRec-SA: over the
  paper's beta grid, with `FEW_NEGATIVES` uniform negatives, and with
  log-uniform (popularity) negatives, each at the dataset's beta."""
  beta = config.DATASET_DEFAULTS[dataset].beta
  plain = {"model": "comirec-sa", "beta": 0.0, "rr_lambda": 0.0}
  rows = [Method(BASELINE, plain)]
  rows += [Method(f"+IHN beta={b:g}", {**plain, "beta": b})
           for b in BETA_SWEEP]
  for label, change in ((f"{FEW_NEGATIVES} negatives",
                         {"negatives": FEW_NEGATIVES}),
                        ("log-uniform", {"sampler": "log-uniform"})):
    rows += [Method(f"ComiRec-SA, {label}", {**plain, **change}),
             Method(f"+IHN beta={beta:g}, {label}",
                    {**plain, "beta": beta, **change})]
  return rows


STUDIES = {"paper": methods, "ihn": ihn_study}


def run_methods(rows: List[Method], dataset: str, raw_file: Optional[str],
                output_dir: str, budget: dict,
                cache_dir: Optional[str] = None) -> Dict[str, dict]:
  """Trains every row (skipping finished ones) and returns their
  metrics.json by method name. `budget`: max_steps, eval_every, patience,
  seed (train.py setting names)."""
  results = {}
  for method in rows:
    run_dir = os.path.join(output_dir, "runs", _slug(method.name))
    metrics_path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(metrics_path):
      _log.info("training %s", method.name)
      run_config = runs.resolve_config(dataset, raw_file, **budget,
                                       **method.settings)
      runs.train_run(run_config, run_dir, export_dir=None,
                     cache_dir=cache_dir)
    with open(metrics_path) as stored:
      results[method.name] = json.load(stored)
  return results


def markdown_table(results: Dict[str, dict]) -> str:
  """Recall/HR/NDCG @20 and @50 (in %) per method, the relative change of
  Recall@50 and HR@50 against ComiRec-SA, and the training time."""
  header = ("| method | " + " | ".join(m.replace("recall", "Recall").replace(
      "hr", "HR").replace("ndcg", "NDCG") for m in METRICS) +
            " | Recall@50 vs SA | HR@50 vs SA | training |")
  lines = [header, "|" + "---|" * (len(METRICS) + 4)]
  base = results[BASELINE]["test"]
  for name, metrics in results.items():
    test = metrics["test"]
    cells = [f"{100 * test[m]:.2f}" for m in METRICS]
    changes = [_change(test[m], base[m]) for m in ("recall@50", "hr@50")]
    lines.append(f"| {name} | " + " | ".join(
        cells + changes + [_minutes(metrics)]) + " |")
  return "\n".join(lines)


def remi_gain_table(results: Dict[str, dict]) -> str:
  """Table 3's layout: per tower with both rows in `results`, Recall@50
  and HR@50 (in %) as published, with REMI, and REMI's relative gain;
  and both training times."""
  lines = ["| tower | Recall@50 | +REMI | gain | HR@50 | +REMI | gain | "
           "training | +REMI |", "|" + "---|" * 9]
  for tower, original, remi in REMI_PAIRS:
    if original not in results or remi not in results:
      continue
    cells = []
    for metric in ("recall@50", "hr@50"):
      before = results[original]["test"][metric]
      after = results[remi]["test"][metric]
      cells += [f"{100 * before:.2f}", f"{100 * after:.2f}",
                _change(after, before)]
    cells += [_minutes(results[original]), _minutes(results[remi])]
    lines.append(f"| {tower} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _change(value: float, base: float) -> str:
  return f"{100 * (value / base - 1):+.1f}%" if base else "n/a"


def _minutes(metrics: dict) -> str:
  seconds = metrics.get("train_seconds")
  return "n/a" if seconds is None else f"{seconds / 60:.1f} min"


def plot_routing(output_dir: str, cache_dir: Optional[str],
                 num_users: int = 3) -> str:
  """Heatmaps of the routing matrices of the same test users under
  ComiRec-SA and REMI (the collapse of the paper's Figure 1b)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from remi_tf.data.inputs import evaluation_examples  # pylint: disable=g-import-not-at-top

  figure, axes = plt.subplots(2, num_users, figsize=(4 * num_users, 5),
                              squeeze=False, constrained_layout=True)
  for row, name in enumerate((BASELINE, REMI)):
    run_config, dataset, model, _ = runs.load_run(
        os.path.join(output_dir, "runs", _slug(name)), cache_dir)
    histories = evaluation_examples(dataset.test, run_config.model.seq_len
                                    ).histories
    longest = np.argsort(-(histories > 0).sum(axis=1), kind="stable")
    chosen = histories[longest[:num_users]]
    routing = model.tower(tf.constant(chosen))["routing"].numpy()
    for column in range(num_users):
      axis = axes[row, column]
      image = axis.imshow(routing[column], aspect="auto", cmap="viridis",
                          vmin=0, vmax=1)
      axis.set_title(f"{name}, test user {column + 1}")
      axis.set_xlabel("history position")
      axis.set_ylabel("interest")
  figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8,
                  label="routing weight")
  path = os.path.join(output_dir, "routing_heatmaps.png")
  figure.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(figure)
  return path


def plot_beta_sweep(results: Dict[str, dict], output_dir: str) -> str:
  """HR@50 of REMI (lambda = 100) against beta; beta = 0 is '+RR'."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  points = sorted(
      (metrics["config"]["model"]["beta"], metrics["test"]["hr@50"])
      for metrics in results.values()
      if metrics["config"]["model"]["model"] == "comirec-sa"
      and metrics["config"]["model"]["rr_lambda"] == RR_LAMBDA)
  betas, hr = zip(*points)
  figure, axis = plt.subplots(figsize=(5, 3.5))
  axis.plot(range(len(betas)), hr, marker="o")
  axis.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
  axis.set_xlabel("beta (IHN)")
  axis.set_ylabel("test HR@50")
  axis.set_title("REMI (lambda = 100): HR@50 against beta")
  axis.grid(alpha=0.3)
  path = os.path.join(output_dir, "hr50_vs_beta.png")
  figure.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(figure)
  return path


def plot_ihn_weights(output_dir: str, cache_dir: Optional[str],
                     num_examples: int = 3, shown: int = 5) -> str:
  """For a few training examples, the sampled negatives with the highest
  and lowest IHN weights next to the positive item (Figure 4), raw ids."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from remi_tf.data.inputs import training_dataset  # pylint: disable=g-import-not-at-top
  from remi_tf.models import hard_readout  # pylint: disable=g-import-not-at-top

  run_config, dataset, model, _ = runs.load_run(
      os.path.join(output_dir, "runs", _slug(REMI)), cache_dir)
  beta = run_config.model.beta
  batch = next(iter(training_dataset(dataset.train, run_config.model.seq_len,
                                     num_examples, seed=0)))
  table = model.tower.item_table()
  interests = model.tower(batch["history"])["interests"]
  query = hard_readout(interests, tf.gather(table, batch["target"]))
  negatives = model.sampler(batch["target"]).ids
  logits = tf.matmul(query, tf.gather(table, negatives),
                     transpose_b=True).numpy()
  positives = tf.reduce_sum(query * tf.gather(table, batch["target"]),
                            axis=1).numpy()
  vocabulary = np.concatenate([[""], dataset.item_vocab])
  rows = []
  for example in range(num_examples):
    weights = np.exp(beta * (logits[example] - logits[example].max()))
    weights /= weights.mean()
    order = np.argsort(-weights)
    target = int(batch["target"][example])
    rows.append([f"example {example + 1}", "positive",
                 vocabulary[target], f"{positives[example]:.2f}", ""])
    for label, picks in (("highest", order[:shown]),
                         ("lowest", order[-shown:])):
      for pick in picks:
        rows.append(["", f"{label} IHN weight",
                     vocabulary[int(negatives[pick])],
                     f"{logits[example, pick]:.2f}",
                     f"{weights[pick]:.3g}"])
  figure, axis = plt.subplots(figsize=(8, 0.22 * len(rows) + 0.6))
  axis.axis("off")
  axis.set_title(f"IHN weights of sampled negatives (beta = {beta:g}; "
                 "weight = exp(beta s) / mean)")
  cells = axis.table(cellText=rows, colLabels=["", "role", "raw item id",
                                               "score s", "weight"],
                     loc="upper center")
  cells.auto_set_font_size(False)
  cells.set_fontsize(8)
  path = os.path.join(output_dir, "ihn_weights.png")
  figure.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(figure)
  return path


def study_rows(dataset: str, study: str = "paper",
               only: Optional[List[str]] = None) -> List[Method]:
  """The rows of `study` (`STUDIES`), or those of them named in `only`, in
  the study's order.

  Raises:
    ValueError: an unknown study or row name, or rows without
      ComiRec-SA (every table compares against it).
  """
  if study not in STUDIES:
    raise ValueError(f"unknown study {study!r}; choose one of "
                     f"{', '.join(STUDIES)}")
  rows = STUDIES[study](dataset)
  if only is not None:
    known = [method.name for method in rows]
    unknown = [name for name in only if name not in known]
    if unknown:
      raise ValueError(f"no row named {', '.join(map(repr, unknown))}; the "
                       f"rows are: {', '.join(map(repr, known))}")
    rows = [method for method in rows if method.name in only]
  if BASELINE not in [method.name for method in rows]:
    raise ValueError(f"the rows must include {BASELINE!r}, the tables' "
                     "reference")
  return rows


def write_report(dataset: str, raw_file: Optional[str], output_dir: str,
                 budget: dict, cache_dir: Optional[str] = None,
                 study: str = "paper", only: Optional[List[str]] = None
                 ) -> str:
  """Trains `study_rows(dataset, study, only)`, writes `report.md` (and,
  for the whole paper study, the figures); returns the report's path."""
  rows = study_rows(dataset, study, only)
  os.makedirs(output_dir, exist_ok=True)
  results = run_methods(rows, dataset, raw_file, output_dir, budget,
                        cache_dir)
  figures = []
  if study == "paper" and only is None:
    figures = [plot_routing(output_dir, cache_dir),
               plot_beta_sweep(results, output_dir),
               plot_ihn_weights(output_dir, cache_dir)]
  lines = [
      f"# Reproduction report: {dataset} ({study})",
      "",
      describe_data(dataset, raw_file, results[BASELINE]["dataset"], budget),
      "",
      markdown_table(results),
      "",
      "Routing diagnostics at the end of training (mean largest routing "
      "weight; 1 = every interest on one item):",
      "",
  ]
  for name, metrics in results.items():
    routing = metrics.get("routing") or {}
    if routing:
      lines.append(f"- {name}: max weight {routing['routing_max_weight']:.3f},"
                   f" entropy {routing['routing_entropy']:.3f}")
  if study == "paper":
    lines += ["", "REMI on each tower (the paper's Table 3):", "",
              remi_gain_table(results)]
  lines += [""] + [f"![{os.path.basename(f)}]({os.path.basename(f)})"
                   for f in figures]
  path = os.path.join(output_dir, "report.md")
  with open(path, "w") as out:
    out.write("\n".join(lines) + "\n")
  return path


def describe_data(dataset: str, raw_file: Optional[str], stats: dict,
                  budget: dict) -> str:
  """The report's line on its data and budget. The raw file is named by its
  file name only: a report is shared, the folder it came from is not."""
  source = os.path.basename(raw_file) if raw_file else dataset
  return (f"Raw file: `{source}`; {stats['users']:,} users, "
          f"{stats['items']:,} items, {stats['interactions']:,} "
          f"interactions. Budget: {budget}. Test users, exact retrieval, "
          "metrics in %.")


def _slug(name: str) -> str:
  return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
