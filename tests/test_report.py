"""The reproduction report's pieces: its rows, table and beta figure."""

import os
import subprocess
import sys

import pytest

from remi_tf import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_methods_cover_ablation_baselines_and_beta_sweep():
  rows = {m.name: m.settings for m in report.methods("amazon-books")}
  assert rows["ComiRec-SA"] == {"model": "comirec-sa", "beta": 0.0,
                                "rr_lambda": 0.0}
  assert rows["+IHN"]["beta"] == 10.0 and rows["+IHN"]["rr_lambda"] == 0.0
  assert rows["+RR"]["beta"] == 0.0 and rows["+RR"]["rr_lambda"] == 100.0
  assert rows["REMI"] == {"model": "comirec-sa", "beta": 10.0,
                          "rr_lambda": 100.0}
  for baseline in ("Pop", "YouTube DNN", "GRU4Rec", "MIND", "ComiRec-DR",
                   "Re4", "UMI", "UMI_HN", "PIMIRec"):
    assert rows[baseline]["beta"] == rows[baseline]["rr_lambda"] == 0.0
  assert rows["UMI_HN"] == {**rows["UMI"], "candidate_scoring": "max-interest"}
  for tower, original, remi in report.REMI_PAIRS:
    assert rows[remi]["model"] == rows[original]["model"]
    assert rows[remi]["beta"] == 10.0 and rows[remi]["rr_lambda"] == 100.0
  sweep = sorted(s["beta"] for s in rows.values()
                 if s["model"] == "comirec-sa" and s["rr_lambda"] == 100.0
                 and s["beta"] > 0)
  assert sweep == [0.1, 1.0, 4.0, 10.0]


def _result(model, beta, rr, recall50, hr50):
  test = {m: 0.1 for m in report.METRICS}
  test.update({"recall@50": recall50, "hr@50": hr50})
  return {"test": test, "config": {"model": {"model": model, "beta": beta,
                                             "rr_lambda": rr}}}


def test_markdown_table_gives_relative_change_against_comirec_sa():
  table = report.markdown_table({
      "ComiRec-SA": _result("comirec-sa", 0.0, 0.0, 0.10, 0.20),
      "REMI": _result("comirec-sa", 1.0, 100.0, 0.15, 0.22),
  })
  lines = table.splitlines()
  assert lines[0].startswith("| method | Recall@20 | HR@20 | NDCG@20")
  assert lines[2].startswith("| ComiRec-SA |") and "+0.0%" in lines[2]
  assert "| 15.00 | 22.00 |" in lines[3]
  assert lines[3].endswith("| +50.0% | +10.0% | n/a |")


def test_beta_sweep_figure(tmp_path):
  results = {
      "+RR": _result("comirec-sa", 0.0, 100.0, 0.1, 0.30),
      "REMI": _result("comirec-sa", 1.0, 100.0, 0.1, 0.35),
      "REMI beta=10": _result("comirec-sa", 10.0, 100.0, 0.1, 0.33),
      "ComiRec-SA": _result("comirec-sa", 0.0, 0.0, 0.1, 0.2),
  }
  path = report.plot_beta_sweep(results, str(tmp_path))
  assert os.path.getsize(path) > 1000
  with open(path, "rb") as image:
    assert image.read(8) == b"\x89PNG\r\n\x1a\n"


def test_unknown_dataset_has_no_methods():
  with pytest.raises(KeyError):
    report.methods("netflix")


def test_report_names_the_raw_file_without_its_folder():
  line = report.describe_data(
      "csv", os.path.join("some", "private", "folder", "log.csv.gz"),
      {"users": 1200, "items": 300, "interactions": 45000},
      {"max_steps": 10})
  assert "`log.csv.gz`" in line
  assert "private" not in line
  assert "1,200 users" in line and "45,000 interactions" in line


def test_the_ihn_study_varies_only_the_ihn_settings_against_comirec_sa():
  rows = {m.name: m.settings for m in report.ihn_study("amazon-books")}
  assert rows["ComiRec-SA"] == {"model": "comirec-sa", "beta": 0.0,
                                "rr_lambda": 0.0}
  for name, settings in rows.items():
    assert settings["model"] == "comirec-sa" and settings["rr_lambda"] == 0.0
  assert sorted(s["beta"] for n, s in rows.items()
                if n.startswith("+IHN beta=") and "," not in n) == [
                    0.1, 1.0, 4.0, 10.0]
  few = [s for s in rows.values() if s.get("negatives")]
  assert [s["beta"] for s in few] == [0.0, 10.0]
  assert all(s["negatives"] == report.FEW_NEGATIVES for s in few)
  log_uniform = [s for s in rows.values() if s.get("sampler")]
  assert [s["beta"] for s in log_uniform] == [0.0, 10.0]
  assert all(s["sampler"] == "log-uniform" for s in log_uniform)


def test_study_rows_pick_named_rows_and_reject_what_cannot_run():
  picked = report.study_rows("csv", "ihn", ["+IHN beta=4", "ComiRec-SA"])
  assert [m.name for m in picked] == ["ComiRec-SA", "+IHN beta=4"]
  with pytest.raises(ValueError, match=r"no row named '\+IHN beta=3'"):
    report.study_rows("csv", "ihn", ["ComiRec-SA", "+IHN beta=3"])
  with pytest.raises(ValueError, match="must include 'ComiRec-SA'"):
    report.study_rows("csv", "paper", ["REMI"])
  with pytest.raises(ValueError, match="unknown study"):
    report.study_rows("csv", "table9")


def test_the_gain_table_pairs_each_tower_with_its_remi_row():
  results = {
      "ComiRec-SA": {**_result("comirec-sa", 0.0, 0.0, 0.10, 0.20),
                     "train_seconds": 120.0},
      "REMI": {**_result("comirec-sa", 1.0, 100.0, 0.15, 0.22),
               "train_seconds": 150.0},
      "MIND": _result("mind", 0.0, 0.0, 0.05, 0.10),  # no REMI row
  }
  lines = report.remi_gain_table(results).splitlines()
  assert len(lines) == 3
  assert lines[2] == ("| ComiRec-SA | 10.00 | 15.00 | +50.0% | 20.00 | "
                      "22.00 | +10.0% | 2.0 min | 2.5 min |")


def test_reproduce_refuses_rows_it_has_not_before_training(tmp_path):
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, "pipelines", "reproduce.py"),
       "--dataset", "csv", "--raw-file", str(tmp_path / "never-read.csv"),
       "--max-steps", "10", "--study", "ihn", "--only", "ComiRec-SA",
       "+IHN beta=3", "--output", str(tmp_path / "report")],
      capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert process.returncode == 2
  assert "no row named '+IHN beta=3'" in process.stderr
  assert not os.path.exists(tmp_path / "report")
