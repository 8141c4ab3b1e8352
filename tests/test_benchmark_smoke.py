"""Smoke test of scripts/lab/benchmark.py on a minuscule BERT (no timing checks).

Runs every worker in this process on a 2-layer hidden-16 config for a couple
of steps, then the report; checks the figures are present and consistent
(FLOP counts, ratios), never how fast anything was.
"""

import importlib.util
import json
import os
import statistics
import sys

import pytest

import tiny_fixtures

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "scripts", "lab", "benchmark.py")


@pytest.fixture(scope="module")
def benchmark():
  spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture
def tiny(tmp_path):
  vocab_file, vocab_size = tiny_fixtures.write_vocab(str(tmp_path))
  config = tiny_fixtures.tiny_bert_config(vocab_size)
  path = os.path.join(str(tmp_path), "bert_config.json")
  with open(path, "w") as f:
    json.dump(config, f)
  return {"config_file": path, "config": config, "vocab_file": vocab_file,
          "tmp": str(tmp_path)}


COMMON = {"batch_size": 4, "max_seq_length": 16, "warmup_steps": 1,
          "peak_size": 64, "peak_repeats": 2, "jit_compile": "true"}


def test_forward_flops_is_the_issue_count(benchmark):
  config = {"hidden_size": 8, "intermediate_size": 32, "num_hidden_layers": 3}
  # Per layer and token 2 * (4 * 64 + 2 * 8 * 32) + 4 * 16 * 8 = 2048.
  assert benchmark.forward_flops(config, 2, 16) == 3 * 2 * 16 * 2048
  assert benchmark.STEP_FORWARDS == {"adapters": 2, "full": 3, "eval": 1}


def test_train_eval_memory_and_report(benchmark, tiny):
  train = benchmark.worker_train(dict(
      COMMON, config=tiny["config_file"], mode="adapters", steps=2,
      eval_steps=1))
  assert len(train["step_times_s"]) == 2
  flops = 2 * benchmark.forward_flops(tiny["config"], 4, 16)
  assert train["model_gflops"] == pytest.approx(flops / train["step_s"] / 1e9)
  # The ratio is paired: each step against the peak probe just before it.
  assert len(train["probe_gflops"]) == 2
  ratios = [flops / t / 1e9 / p
            for t, p in zip(train["step_times_s"], train["probe_gflops"])]
  assert train["peak_ratio"] == pytest.approx(statistics.median(ratios))
  assert train["micro_batch_size"] == 4
  assert train["examples_per_s"] == pytest.approx(4 / train["step_s"])
  assert train["train_peak_rss_bytes"] >= train["rss_model_bytes"] > 0
  assert train["eval"]["model_gflops"] == pytest.approx(
      flops / 2 / train["eval"]["step_s"] / 1e9)
  # The report of a "full" row is made from the same figures.
  full = dict(train, mode="full")
  del full["eval"]

  memory = benchmark.worker_memory(dict(
      COMMON, config=tiny["config_file"], epochs=2, steps_per_epoch=1))
  assert len(memory["rss_bytes"]) == 2
  assert memory["peak_rss_bytes"] >= max(memory["rss_bytes"])

  result = {"command": "python scripts/lab/benchmark.py", "machine":
            benchmark.machine(), "load_start": (0.0, 0.0, 0.0),
            "load_end": (0.0, 0.0, 0.0),
            "peak": {"size": 64, "repeats": 2, "gflops": 1.0,
                     "best_gflops": 2.0},
            "train": [train, full], "memory": memory}
  text = benchmark.markdown(result)
  assert "| %s | train adapters | 4 (auto) |" % tiny["config_file"] in text
  assert "| %s | eval |" % tiny["config_file"] in text
  assert "adapters / full examples/s" in text
  json.dumps(result)  # The JSON output must serialize.


def test_mrpc_fixed_and_bucketed(benchmark, tiny):
  glue_dir = os.path.join(tiny["tmp"], "glue")
  tiny_fixtures.write_mrpc(os.path.join(glue_dir, "MRPC"), num_train=24)
  result = benchmark.worker_mrpc(dict(
      COMMON, config=tiny["config_file"], steps=1, glue_dir=glue_dir,
      vocab_file=tiny["vocab_file"], max_seq_length=64))
  assert result["num_examples"] == 24 and result["epoch_steps"] == 6
  # Padding to 64 vs buckets of 16, 32, 48 and 64: the tiny pairs fit in 16.
  assert result["fixed"]["mean_padded_length"] == 64
  assert result["bucketed"]["mean_padded_length"] == 16
  assert result["bucketed_speedup"] > 0
  bucketed = result["bucketed"]
  assert bucketed["warm_widths"] == bucketed["widths"] - 1
  assert bucketed["first_epoch_s"] >= bucketed["epoch_s"]
  # A first epoch adds the compiles only: the warm steps' own time (run
  # again, compiled) is taken out, as those steps belong to the epoch.
  assert bucketed["compile_s"] == max(
      bucketed["warm_s"] - bucketed["warm_rerun_s"], 0.0)
  assert abs(bucketed["first_epoch_s"] - bucketed["epoch_s"]
             - bucketed["compile_s"]) < 1e-9


def test_warm_batches_match_the_stream_spec(benchmark):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  spec = {"input_ids": tf.TensorSpec([4, None], tf.int32),
          "label_ids": tf.TensorSpec([4], tf.int32)}
  warm = benchmark._warm_batches(spec, [8, 24])
  assert warm.element_spec == spec
  shapes = [b["input_ids"].shape for b in warm.as_numpy_iterator()]
  assert shapes == [(4, 8), (4, 24)]


def test_flags(benchmark):
  flags = benchmark._parse_flags(["--sections=peak,train", "--train_steps=2"])
  assert flags.train_steps == 2 and flags.jit_compile == "true"
  with pytest.raises(SystemExit):
    benchmark._parse_flags(["--sections=peak,bogus"])


def test_ratio_interleaves_the_two_modes(benchmark, tiny):
  result = benchmark.worker_ratio(dict(
      COMMON, config=tiny["config_file"], rounds=2))
  assert len(result["ratios"]) == 2
  for mode in ("adapters", "full"):
    assert len(result["step_times_s"][mode]) == 2
  times = result["step_times_s"]
  assert result["ratios"] == pytest.approx(
      [f / a for a, f in zip(times["adapters"], times["full"])])
  text = benchmark.markdown({
      "command": "c", "machine": benchmark.machine(),
      "load_start": (0.0,) * 3, "load_end": (0.0,) * 3, "ratio": [result]})
  assert "steps interleaved in one process (2 pairs)" in text


def _load_script(name):
  spec = importlib.util.spec_from_file_location(
      name + "_script", os.path.join(REPO_ROOT, "scripts", "lab", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_versus_adapterhub_says_what_it_skipped(tiny, capsys):
  # No AdapterHub environment: this toolkit's side runs (steps and a tiny
  # MRPC epoch), the report says AdapterHub was skipped and why.
  script = _load_script("benchmark_vs_adapterhub")
  glue_dir = os.path.join(tiny["tmp"], "glue")
  tiny_fixtures.write_mrpc(os.path.join(glue_dir, "MRPC"), num_train=16)
  out = os.path.join(tiny["tmp"], "out")
  assert script.main([
      "--adapterhub_python=" + os.path.join(tiny["tmp"], "no-such-python"),
      "--configs=" + tiny["config_file"], "--epoch_configs=" + tiny["config_file"],
      "--rounds=1", "--steps=2", "--batch_size=4", "--max_seq_length=16",
      "--glue_dir=" + glue_dir, "--vocab_file=" + tiny["vocab_file"],
      "--output_dir=" + out]) == 0
  with open(os.path.join(out, "benchmark_vs_adapterhub.json")) as f:
    result = json.load(f)
  assert "no-such-python does not exist" in result["adapterhub_skipped"]
  (steps,) = result["steps"].values()
  assert len(steps["rounds"][0]["ours"]["train_times_s"]) == 2
  assert "train_speedup" not in steps and "adapterhub" not in steps
  (epoch,) = result["epochs"].values()
  assert epoch["ours"]["epoch_steps"] == 4 and "adapterhub" not in epoch
  text = open(os.path.join(out, "benchmark_vs_adapterhub.md")).read()
  assert "skipped (" in text and "| n/a |" in text
  assert "AdapterHub side skipped" in capsys.readouterr().err


def test_versus_adapterhub_ratios_are_adapterhub_over_ours():
  script = _load_script("benchmark_vs_adapterhub")
  rows = [{"ours": {"train_step_s": 1.0, "eval_step_s": 0.2,
                    "train_peak_rss_bytes": 100},
           "adapterhub": {"train_step_s": 3.0, "eval_step_s": 0.5,
                          "train_peak_rss_bytes": 400}},
          {"ours": {"train_step_s": 2.0, "eval_step_s": 0.4,
                    "train_peak_rss_bytes": 300},
           "adapterhub": {"train_step_s": 4.0, "eval_step_s": 0.7,
                          "train_peak_rss_bytes": 400}}]
  got = script.summarize(rows)
  # Medians over rounds first (ours 1.5 s, AdapterHub 3.5 s), then ratios.
  assert got["train_speedup"] == pytest.approx(3.5 / 1.5)
  assert got["eval_speedup"] == pytest.approx(0.6 / 0.3)
  assert got["memory_ratio"] == pytest.approx(200 / 400)


def test_merged_benchmark_checks_and_reports(tiny, tmp_path):
  # The three models run interleaved, merged equals unmerged, the figures
  # are there (never how fast).
  script = _load_script("benchmark_merged")
  out = str(tmp_path / "merged.json")
  result = script.main(["--config=" + tiny["config_file"], "--method=ia3",
                        "--batch_size=2", "--seq_length=8", "--rounds=2",
                        "--steps=1", "--output=" + out])
  assert result["max_abs_logit_diff_merged_unmerged"] <= 1e-5
  assert set(result["median_step_ms"]) == {"plain", "unmerged", "merged"}
  assert result["merged_over_plain"] == pytest.approx(
      result["median_step_ms"]["merged"] / result["median_step_ms"]["plain"])
  with open(out) as f:
    assert json.load(f)["rounds"] == 2


def test_composition_benchmark_checks_and_reports(tiny, tmp_path):
  # AdapterDrop's steps for every k, routing checked against Parallel, the
  # figures there (never how fast).
  script = _load_script("benchmark_composition")
  out = str(tmp_path / "composition.json")
  result = script.main(["--config=" + tiny["config_file"], "--method=pfeiffer",
                        "--batch_size=3", "--seq_length=8", "--rounds=1",
                        "--steps=1", "--output=" + out])
  layers = tiny["config"]["num_hidden_layers"]
  assert sorted(result["adapter_drop"]["train_step_ms"], key=int) == [
      str(k) for k in range(layers)]
  assert result["routing"]["max_abs_logit_diff"] <= 1e-5
  with open(out) as f:
    assert set(json.load(f)["routing"]["step_ms"]) == {"multitask",
                                                       "parallel"}
  held = result["frozen"]
  assert held["max_abs_diff"] <= 1e-5
  assert held["speedup"] == (held["train_step_ms"]["encoder"]
                             / held["train_step_ms"]["stored_states"])
