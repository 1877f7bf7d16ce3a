"""The reproduction report's pieces: its rows, table and beta figure."""

import os

import pytest

from remi_tf import report


def test_methods_cover_ablation_baselines_and_beta_sweep():
  rows = {m.name: m.settings for m in report.methods("amazon-books")}
  assert rows["ComiRec-SA"] == {"model": "comirec-sa", "beta": 0.0,
                                "rr_lambda": 0.0}
  assert rows["+IHN"]["beta"] == 10.0 and rows["+IHN"]["rr_lambda"] == 0.0
  assert rows["+RR"]["beta"] == 0.0 and rows["+RR"]["rr_lambda"] == 100.0
  assert rows["REMI"] == {"model": "comirec-sa", "beta": 10.0,
                          "rr_lambda": 100.0}
  for baseline in ("Pop", "YouTube DNN", "GRU4Rec", "MIND", "ComiRec-DR",
                   "REMI (MIND)", "REMI (ComiRec-DR)"):
    assert baseline in rows
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
  assert lines[3].endswith("| +50.0% | +10.0% |")


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
