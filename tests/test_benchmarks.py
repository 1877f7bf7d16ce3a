"""The benchmark scripts run end to end at tiny sizes (their figures are
measured elsewhere: timing never in an assert)."""

import argparse
import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import ROOT, load_script


def test_training_throughput_compares_table_sizes_in_one_run():
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks",
                                    "train_throughput.py"),
       "--items", "300", "3000", "--steps", "4", "--warmup-steps", "2",
       "--negatives", "32", "--seq-len", "8", "--batch-size", "16",
       "--repeats", "2"],
      capture_output=True, text=True, timeout=300, cwd=ROOT, check=True)
  (line,) = process.stdout.splitlines()
  result = json.loads(line)
  assert sorted(map(int, result["by_items"])) == [300, 3000]
  for variants in result["by_items"].values():
    for variant in ("plain", "remi"):
      assert len(variants[variant]["all_samples_per_second"]) == 2
  ratios = result["remi_rate_ratio_by_items"]
  assert ratios["300"] == 1.0
  assert result["smallest_rate_ratio"] == min(ratios.values())
  assert "smallest_rate_ratio" in result["meets_targets"]
  # Every other round remi first, at each size.
  fits = re.findall(r"\] (plain|remi) N=(\d+) \[(\d)/2\]", process.stderr)
  assert fits == [("plain", "299", "1"), ("remi", "299", "1"),
                  ("plain", "2999", "1"), ("remi", "2999", "1"),
                  ("remi", "299", "2"), ("plain", "299", "2"),
                  ("remi", "2999", "2"), ("plain", "2999", "2")]
  assert len(result["overhead_percent_by_round"]) == 2


def test_remis_overhead_is_its_mean_step_time_over_plains(throughput):
  # The machine drifts between rounds; each round's pair shares its state.
  plain, remi = [100.0, 110.0, 120.0, 130.0], [98.0, 108.0, 125.0, 127.0]
  figures = throughput.headline(plain, remi)
  step_times = {name: np.mean([1 / rate for rate in rates])
                for name, rates in (("plain", plain), ("remi", remi))}
  assert figures["overhead_percent"] == pytest.approx(
      (step_times["remi"] / step_times["plain"] - 1) * 100)
  pairs = sorted((p / r - 1) * 100 for p, r in zip(plain, remi))
  assert figures["overhead_percent_by_round"] == pytest.approx(
      [(p / r - 1) * 100 for p, r in zip(plain, remi)])
  assert figures["overhead_percent_pairs_median"] == pytest.approx(
      (pairs[1] + pairs[2]) / 2)
  low, middle, high = figures["overhead_percent_pairs_quartiles"]
  assert pairs[0] <= low <= middle <= high <= pairs[-1]
  assert middle == pytest.approx(figures["overhead_percent_pairs_median"])
  # Neither is the ratio of the median rates (-1.3% here).
  assert figures["ratio_remi_over_plain"] == pytest.approx(116.5 / 115.0)
  assert throughput.headline([100.0], [98.0])[
      "overhead_percent_pairs_quartiles"] is None


TINY_TRAINING = ["--items", "300", "--negatives", "32", "--seq-len", "8",
                 "--batch-size", "16", "--warmup-steps", "1", "--steps", "2"]


@pytest.fixture(name="throughput", scope="module")
def fixture_throughput():
  """benchmarks/train_throughput.py as a module (main is not run)."""
  return load_script("benchmarks/train_throughput.py")


def test_processes_pool_their_rounds_and_alternate_the_build_order(
    throughput):
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks",
                                    "train_throughput.py"),
       *TINY_TRAINING, "--processes", "2", "--repeats", "2",
       "--step-pairs", "3"],
      capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert process.returncode == 0, process.stderr[-3000:]
  (line,) = process.stdout.splitlines()
  result = json.loads(line)
  assert [run["remi_first"] for run in result["processes"]] == [False, True]
  builds = re.findall(r"\] (plain|remi): building", process.stderr)
  assert builds == ["plain", "remi", "remi", "plain"]
  rates = {variant: result["variants"][variant]["all_samples_per_second"]
           for variant in ("plain", "remi")}
  assert len(rates["plain"]) == len(rates["remi"]) == 4
  assert result["overhead_percent"] == pytest.approx(
      throughput.headline(rates["plain"], rates["remi"])["overhead_percent"])
  # The step pairs of both processes, pooled: total times.
  seconds = result["step_pair_seconds"]
  assert result["step_pairs"] == len(seconds["plain"]) == 6
  assert result["step_overhead_percent"] == pytest.approx(
      (sum(seconds["remi"]) / sum(seconds["plain"]) - 1) * 100)
  assert set(result["meets_targets"]) == {"samples_per_second_remi",
                                          "step_overhead_percent"}


def test_step_pairs_alternate_the_variants_call_by_call(throughput):
  order = []
  calls = {name: functools.partial(order.append, name)
           for name in ("plain", "remi")}
  seconds = throughput.alternate(calls, 3)
  assert order == ["plain", "remi", "remi", "plain", "plain", "remi"]
  assert len(seconds["plain"]) == len(seconds["remi"]) == 3


def test_step_cost_grows_with_the_shapes_it_depends_on(throughput):
  def cost(*flags):
    return throughput.step_cost(throughput.parse_args(list(flags)))

  base = cost()
  assert cost("--seq-len", "80")["flops_per_sample"] > base["flops_per_sample"]
  assert (cost("--negatives", "2560")["flops_per_sample"]
          > base["flops_per_sample"])
  wider = cost("--embedding-dim", "128")
  assert wider["bytes_per_sample"] > base["bytes_per_sample"]
  # Routing MLP d -> 4d: quadratic in d, the logits linear.
  assert (wider["forward_flops_by_term"]["routing_w1"]
          == 4 * base["forward_flops_by_term"]["routing_w1"])
  assert (wider["forward_flops_by_term"]["logits"]
          == 2 * base["forward_flops_by_term"]["logits"])
  assert base["arithmetic_intensity"] == pytest.approx(
      base["flops_per_sample"] / base["bytes_per_sample"])
  # The lazy update touches the batch's rows; dense Adam every row.
  assert base["touched_rows"] <= base["lookups"]
  bigger = cost("--items", "1746060")
  assert bigger["bytes_per_sample"] < 1.05 * base["bytes_per_sample"]
  assert (cost("--optimizer", "adam", "--items", "1746060")["bytes_per_sample"]
          > 5 * cost("--optimizer", "adam")["bytes_per_sample"])
  assert set(cost("--model", "mind")["forward_flops_by_term"]) >= {
      "u_hat", "routing", "logits"}


def _roofline_cost(throughput, *flags):
  """step_cost of `--roofline flags` (parse_args refuses a model without
  a cost function)."""
  return throughput.step_cost(throughput.parse_args(["--roofline", *flags]))


# A term's factor when one shape doubles from the defaults (n 40, d 64,
# K 4), as step_cost's formulas say; d is doubled to 128, where PIMIRec's
# head width w is still d.
TERM_SCALING = [
    ("comirec-sa", "routing_w1", {"seq-len": 2, "embedding-dim": 4,
                                  "interests": 1}),
    ("comirec-sa", "routing_w2", {"seq-len": 2, "embedding-dim": 2,
                                  "interests": 2}),
    ("re4", "re_attend", {"seq-len": 2, "embedding-dim": 2, "interests": 2}),
    ("re4", "decoder_upsample", {"seq-len": 2, "embedding-dim": 4,
                                 "interests": 2}),
    ("umi", "u_hat", {"seq-len": 2, "embedding-dim": 4, "interests": 2}),
    ("umi", "routing", {"seq-len": 2, "embedding-dim": 2, "interests": 2}),
    ("umi", "refinement_mix", {"seq-len": 1, "embedding-dim": 4,
                               "interests": 2}),
    ("pimirec", "interval_pooling", {"seq-len": 2, "embedding-dim": 2,
                                     "interests": 1}),
    ("pimirec", "star_projections", {"embedding-dim": 4, "interests": 1}),
    ("pimirec", "star_attention", {"embedding-dim": 2, "interests": 1}),
]
DEFAULT_SHAPES = {"seq-len": 40, "embedding-dim": 64, "interests": 4}


@pytest.mark.parametrize("model, term, factors", TERM_SCALING)
def test_each_flops_term_scales_with_the_shapes_as_its_formula(
    throughput, model, term, factors):
  base = _roofline_cost(throughput, "--model", model)
  for flag, factor in factors.items():
    doubled = _roofline_cost(throughput, "--model", model, f"--{flag}",
                             str(2 * DEFAULT_SHAPES[flag]))
    assert (doubled["forward_flops_by_term"][term]
            == factor * base["forward_flops_by_term"][term]), flag


def test_re4_adds_its_backward_flows_to_comirec_sa(throughput):
  books = ("--seq-len", "20", "--items", "367983")
  plain = _roofline_cost(throughput, "--model", "comirec-sa", *books)
  re4 = _roofline_cost(throughput, "--model", "re4", *books)
  shared = plain["forward_flops_by_term"]
  terms = re4["forward_flops_by_term"]
  assert {name: terms[name] for name in shared} == shared
  flows = {name: value for name, value in terms.items() if name not in shared}
  assert set(flows) == {"re_contrast", "re_attend", "decoder_upsample",
                        "decoder_attention", "decoder_values"}
  assert re4["flops_per_sample"] == pytest.approx(
      plain["flops_per_sample"] + 3 * sum(flows.values()))
  # The decoder's [n, n] attention: faster than linear in n.
  longer = _roofline_cost(throughput, "--model", "re4", "--seq-len", "40")
  growth = (longer["forward_flops_by_term"]["decoder_values"]
            / terms["decoder_values"])
  assert 2 < growth < 4
  # A measured Re4 step took 3.4x ComiRec-SA's at these shapes
  # (docs/models.md): its flows are no small share of the FLOPs.
  assert re4["flops_per_sample"] > 3 * plain["flops_per_sample"]


def test_pimirec_extracts_as_comirec_sa_after_its_graph(throughput):
  plain = _roofline_cost(throughput, "--model", "comirec-sa")
  pimirec = _roofline_cost(throughput, "--model", "pimirec")
  terms = pimirec["forward_flops_by_term"]
  assert {name: terms[name] for name in plain["forward_flops_by_term"]} == (
      plain["forward_flops_by_term"])
  assert terms["star_projections"] > terms["routing_w1"]
  # The interval pooling's matmul is per interval: linear in n (its n x n
  # pairs are elementwise), and the graph's rounds are nearly so.
  longer = _roofline_cost(throughput, "--model", "pimirec", "--seq-len", "80")
  assert longer["forward_flops_by_term"]["interval_pooling"] == (
      2 * terms["interval_pooling"])
  assert longer["forward_flops_by_term"]["star_projections"] == pytest.approx(
      2 * terms["star_projections"], rel=0.02)


@pytest.mark.parametrize("model", ["comirec-sa", "re4", "umi", "pimirec"])
def test_the_roofline_bound_is_the_tighter_of_compute_and_memory(
    throughput, monkeypatch, model):
  args = throughput.parse_args(["--roofline", "--model", model])
  cost = throughput.step_cost(args)
  bounds = []
  for matmul in (1e15, 1e6):
    monkeypatch.setattr(throughput, "matmul_flops_per_second",
                        lambda shape, rate=matmul: rate)
    monkeypatch.setattr(throughput, "bandwidth_bytes_per_second",
                        lambda: {"copy": 1e10, "triad": 2e10})
    result = throughput.roofline(args, samples_per_second=100.0)
    compute = matmul / cost["flops_per_sample"]
    memory = 2e10 / cost["bytes_per_sample"]  # the better of copy and triad
    assert result["bound_samples_per_second"] == pytest.approx(
        min(compute, memory))
    assert result["achieved_fraction"] == pytest.approx(
        100.0 / min(compute, memory))
    bounds.append(result["bound"])
  assert bounds == ["memory", "compute"]


def test_the_machine_probes_measure_matmul_and_memory_rates(throughput):
  assert throughput.matmul_flops_per_second((64, 32, 16)) > 0
  rates = throughput.bandwidth_bytes_per_second()
  assert set(rates) == {"copy", "triad"}
  assert min(rates.values()) > 0


def test_the_reference_gets_the_measurement_flags_its_help_names(throughput):
  args = throughput.parse_args(TINY_TRAINING + ["--profile", "--roofline"])
  flags = throughput.forwarded_flags(args)
  assert flags[flags.index("--items") + 1] == "300"
  assert flags[-2:] == ["--repeats", "1"]
  assert not {"--profile", "--roofline", "--compare-ref"} & set(flags)
  older_help = "  --items ITEMS\n  --seq-len SEQ_LEN\n  --steps STEPS\n"
  kept, dropped = throughput._common.known_flags(flags, older_help)
  assert kept == ["--items", "300", "--seq-len", "8", "--steps", "2"]
  assert "--negatives" in dropped and "--items" not in dropped


@pytest.mark.parametrize("flags", [
    ["--compare-ref", "HEAD", "--items", "300", "3000"],
    ["--compare-ref", "no-such-revision"],
    ["--roofline", "--model", "gru4rec"],
    ["--processes", "2", "--compare-ref", "HEAD"],
    ["--processes", "2", "--profile"],
])
def test_what_compare_ref_and_roofline_cannot_measure_is_refused(
    throughput, flags):
  with pytest.raises(SystemExit) as error:
    throughput.parse_args(flags)
  assert error.value.code == 2


def _worktrees():
  return subprocess.run(["git", "-C", ROOT, "worktree", "list", "--porcelain"],
                        capture_output=True, text=True, check=True).stdout


def test_compare_ref_removes_its_worktree_when_a_run_fails(
    throughput, monkeypatch):
  folders, existed = [], []
  checkout = throughput._common.git_worktree

  def recorded_checkout(commit, folder):
    folders.append(folder)
    return checkout(commit, folder)

  def failing_run(root, flags):
    del root, flags
    existed.append(os.path.isdir(folders[0]))
    raise RuntimeError("the benchmark failed")

  monkeypatch.setattr(throughput._common, "git_worktree", recorded_checkout)
  monkeypatch.setattr(throughput, "run_tree", failing_run)
  args = throughput.parse_args(TINY_TRAINING + ["--compare-ref", "HEAD"])
  with pytest.raises(RuntimeError, match="the benchmark failed"):
    throughput.compare(args)
  assert existed == [True]
  assert not os.path.exists(folders[0])
  assert folders[0] not in _worktrees()


def test_compare_ref_alternates_both_trees_and_profiles_this_one():
  """Against HEAD itself: the structure of the comparison (not its ratio)
  and the last round's profile of this tree."""
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks",
                                    "train_throughput.py"),
       *TINY_TRAINING, "--compare-ref", "HEAD", "--repeats", "2",
       "--profile", "--profile-calls", "3"],
      # Four benchmark processes and two worktrees: minutes on a busy
      # machine (a deadline, not a speed check).
      capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert process.returncode == 0, process.stderr[-3000:]
  (line,) = process.stdout.splitlines()
  result = json.loads(line)
  compare = result["compare"]
  assert compare["rounds"] == [["new", "ref"], ["ref", "new"]]
  head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"],
                        capture_output=True, text=True,
                        check=True).stdout.strip()
  assert compare["commits"]["ref"] == head
  for variant in ("plain", "remi"):
    figures = compare["variants"][variant]
    assert len(figures["new"]) == len(figures["ref"]) == 2
    assert min(figures["new"] + figures["ref"]) > 0
    assert figures["ratio_new_over_ref"] == pytest.approx(
        figures["new_median"] / figures["ref_median"])
  assert result["ratio_remi_new_over_ref"] == (
      compare["variants"]["remi"]["ratio_new_over_ref"])
  assert result["samples_per_second_remi"] == (
      compare["variants"]["remi"]["new_median"])
  # Both children ran one fit per variant with the shapes asked for and
  # no compare mode of their own.
  for tree in ("new", "ref"):
    assert compare["args"][tree]["negatives"] == 32
    assert compare["args"][tree]["repeats"] == 1
    assert compare["args"][tree].get("compare_ref") is None
  assert compare["dropped_flags"] == []
  assert compare["flags"]["ref"] == compare["flags"]["new"]
  assert not os.path.exists(compare["worktree"])
  assert compare["worktree"] not in _worktrees()
  assert "ratio_remi_new_over_ref" in result["meets_targets"]

  profile = result["profile"]
  assert set(profile["ms_per_step"]) == {
      "input", "tower_forward", "tower_forward_backward", "sampler",
      "logits_loss_forward", "logits_loss_forward_backward",
      "optimizer_apply", "train_step", "fit"}
  assert min(profile["ms_per_step"].values()) > 0
  assert profile["tf_function_call_ms"] > 0
  last_rate = compare["variants"]["remi"]["new"][-1]
  assert profile["ms_per_step"]["fit"] == pytest.approx(1e3 * 16 / last_rate)
  assert profile["fit_overhead_ms"] == pytest.approx(
      profile["ms_per_step"]["fit"] - profile["ms_per_step"]["train_step"])
  assert "tower_forward_backward" in process.stderr
  assert result["roofline"] is None


# --- benchmarks/serving.py ---------------------------------------------------


@pytest.fixture(name="bench", scope="module")
def fixture_bench():
  """benchmarks/serving.py as a module (main is not run)."""
  return load_script("benchmarks/serving.py")


def _summary(p50, p99, rate, completed=10, errors=0, first_error=None):
  return {"p50_ms": p50, "p90_ms": p99, "p99_ms": p99, "mean_ms": p50,
          "max_ms": p99, "requests_per_second": rate,
          "completed": completed, "errors": errors,
          "first_error": first_error}


def test_latency_percentiles_are_in_milliseconds(bench):
  summary = bench._common.latency_summary(np.arange(1, 101) / 1000)
  assert summary["count"] == 100
  assert summary["p50_ms"] == pytest.approx(50.5)
  assert summary["p90_ms"] == pytest.approx(90.1)
  assert summary["p99_ms"] == pytest.approx(99.01)
  assert summary["max_ms"] == pytest.approx(100.0)
  assert bench._common.latency_summary([]) == {"count": 0}


def test_rounds_merge_into_medians_and_totals(bench):
  merged = bench.median_summary([
      _summary(4.0, 9.0, 100.0), _summary(6.0, 30.0, 300.0, errors=1,
                                          first_error="HTTP 503"),
      _summary(5.0, 10.0, 200.0, errors=2, first_error="timeout")])
  assert merged["p50_ms"] == 5.0 and merged["p99_ms"] == 10.0
  assert merged["requests_per_second"] == 200.0
  assert merged["completed"] == 30 and merged["errors"] == 3
  assert merged["first_error"] == "HTTP 503" and merged["rounds"] == 3


def test_targets_against_the_reference_use_the_lowest_and_highest_level(
    bench):
  candidate = {"1": _summary(4.0, 9.0, 240.0), "8": _summary(9.0, 20.0, 800.0),
               "32": _summary(30.0, 60.0, 900.0)}
  reference = {"1": _summary(10.0, 12.0, 100.0),
               "8": _summary(40.0, 50.0, 200.0),
               "32": _summary(150.0, 300.0, 400.0)}
  figures = bench.reference_figures(candidate, reference)
  assert figures == {"p50_ms_ratio_vs_reference": 0.4,
                     "requests_per_second_ratio_vs_reference": 2.25,
                     "p99_ms_lowest_concurrency": 9.0}
  assert bench.level_ratios(candidate, reference)["8"] == {
      "p50_ms": 0.225, "p99_ms": 0.4, "requests_per_second": 4.0}
  met = bench._common.check_targets(figures, bench.TARGETS)
  assert met["p50_ms_ratio_vs_reference"] is True
  assert met["requests_per_second_ratio_vs_reference"] is True
  assert met["p99_ms_lowest_concurrency"] is True
  slower = {**reference, "1": _summary(6.0, 12.0, 150.0)}
  met = bench._common.check_targets(
      bench.reference_figures(candidate, slower), bench.TARGETS)
  assert met["p50_ms_ratio_vs_reference"] is False  # 4 / 6 > 0.5
  without = bench.reference_figures(candidate, None)
  assert without["p50_ms_ratio_vs_reference"] is None
  assert bench._common.check_targets(without, bench.TARGETS)[
      "requests_per_second_ratio_vs_reference"] is None


def _old_serve_help():
  """The --help of serve.py as revision f6ecd87 had it."""
  parser = argparse.ArgumentParser(description="Serve recommendations.")
  parser.add_argument("--model-dir", required=True)
  parser.add_argument("--host", default="127.0.0.1")
  parser.add_argument("--port", type=int, default=8000)
  parser.add_argument("--tf-serving-url")
  parser.add_argument("--max-k", type=int, default=500)
  return parser.format_help()


def test_an_older_serve_py_gets_only_the_flags_its_help_names(bench):
  kept, dropped = bench.known_flags(
      ["--model-version", "3", "--max-batch", "1", "--max-k", "50",
       "--version", "3"], _old_serve_help())
  assert kept == ["--max-k", "50"]
  assert dropped == ["--model-version", "--max-batch", "--version"]
  new_help = _old_serve_help() + "  --model-version VERSION, --version V\n"
  assert bench.known_flags(["--model-version", "3"], new_help) == (
      ["--model-version", "3"], [])
  assert bench.known_flags(["--model", "3"], new_help)[1] == ["--model"]


class _JsonEcho(http.server.BaseHTTPRequestHandler):
  """Answers POST /echo with its JSON body and 200, anything else 404;
  keeps the connection open unless the body asks to close it."""

  protocol_version = "HTTP/1.1"

  def do_POST(self):  # pylint: disable=invalid-name
    payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    body = json.dumps(payload).encode()
    self.send_response(200 if self.path == "/echo" else 404)
    self.send_header("Content-Length", str(len(body)))
    if payload.get("close"):
      self.send_header("Connection", "close")
      self.close_connection = True
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):  # pylint: disable=arguments-differ
    pass


@pytest.fixture(name="echo_url")
def fixture_echo_url():
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JsonEcho)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()
  server.server_close()


def test_both_load_clients_post_json_and_read_status_and_body(bench,
                                                              echo_url):
  for name, client_class in bench.CLIENTS.items():
    client = client_class(echo_url, timeout=5.0)
    try:
      assert client.post("/echo", {"history": ["a", "b"], "k": 3}) == (
          200, b'{"history": ["a", "b"], "k": 3}'), name
      assert client.post("/other", {"k": 1})[0] == 404, name
      # A server that closes the connection: the next request reconnects.
      assert client.post("/echo", {"close": True})[0] == 200, name
      assert client.post("/echo", {"k": 2}) == (200, b'{"k": 2}'), name
    finally:
      client.close()


def test_answers_are_checked_against_the_version_they_name(bench):
  histories = [["a"], ["b"], ["c"]]

  def recompute(version, history):
    return [f"{history[0]}{version}", "x"]

  result = bench.check_answers(
      [(1, 0, ["a1", "x"]), (1, 4, ["b1", "x"]), (2, 2, ["c2", "x"]),
       (2, 3, ["a1", "x"])], histories, recompute)  # request 3 sent "a"
  assert result["checked"] == 4 and result["mismatched"] == 1
  assert result["checked_by_version"] == {"1": 2, "2": 2}
  assert result["first_mismatch"]["version"] == 2
  assert result["first_mismatch"]["expected"] == ["a2", "x"]


def test_the_answer_log_keeps_each_versions_first_and_last_answers(bench):
  log = bench.AnswerLog(keep=2)
  for number in range(6):
    log.record(1, number, [str(number)], at=float(number))
  log.record(2, 6, ["6"], at=6.0)
  assert log.first_at == {1: 0.0, 2: 6.0}
  assert log.counts == {1: 6, 2: 1}
  assert [number for _, number, _ in log.samples()] == [0, 1, 4, 5, 6]


def test_a_one_version_folder_for_revisions_before_versioned_indexes(
    bench, tiny_run, tmp_path):
  _, export_dir, _ = tiny_run
  folder = bench.single_version_folder(str(export_dir), 1,
                                       str(tmp_path / "old"))
  with open(os.path.join(folder, "metadata.json")) as stored:
    metadata = json.load(stored)
  assert metadata["seq_len"] > 0
  assert metadata["versions"] == {"user_tower": 1, "retrieval": 1}
  assert os.path.isfile(os.path.join(folder, "item_index", "index.json"))
  assert os.listdir(os.path.join(folder, "user_tower")) == ["1"]
  assert os.path.isfile(os.path.join(folder, "user_tower", "1",
                                     "saved_model.pb"))


def test_serving_benchmark_measures_both_variants_at_each_level(tiny_run):
  _, export_dir, _ = tiny_run
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "serving.py"),
       "--model-dir", str(export_dir), "--random-histories",
       "--concurrency-levels", "1", "2", "--seconds", "1", "--rounds", "1",
       "--requests", "10", "--warmup-requests", "3", "--concurrency", "2",
       "--load-requests", "20"],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert process.returncode == 0, process.stderr[-3000:]
  (line,) = process.stdout.splitlines()
  result = json.loads(line)
  assert set(result["by_level"]) == {"batched", "unbatched"}
  for levels in result["by_level"].values():
    assert set(levels) == {"1", "2"}
    assert all(level["completed"] > 0 and level["errors"] == 0
               and "server_cpu_ms_per_request" in level
               for level in levels.values())
  assert result["variants"]["unbatched"]["flags"][-2:] == ["--max-batch", "1"]
  assert set(result["batching_gain"]) == {"1", "2"}
  for (memory,) in result["memory_mb"].values():
    assert memory["rss_mb_before"] > 0 and memory["rss_mb_after"] > 0
  assert result["vs_reference"] is None and result["reexport"] is None
  assert result["meets_targets"]["load_errors"] is True
  assert result["meets_targets"]["p50_ms_ratio_vs_reference"] is None
