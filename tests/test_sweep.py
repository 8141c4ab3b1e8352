"""scripts/sweep.py (adapter_bert.cli.sweep): dry-run commands, a real sweep on a tiny BERT, bad input.

The sweep runs as a command line (its own process, as a user runs it); its
helpers are imported from adapter_bert.cli.sweep for the unit checks. The real sweep
trains four tiny runs (2 learning rates x 2 seeds, one epoch of 8 steps),
then is run again and must skip all four without touching their folders.
"""

import csv
import json
import os
import shlex
import subprocess
import sys
import time

import tiny_fixtures

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "scripts", "sweep.py")

from adapter_bert.cli import sweep  # noqa: E402  (the script's command line)

# Small, fast run_classifier.py settings (as tests/test_run_classifier.py).
EXTRA_FLAGS = ("--max_seq_length=24 --train_batch_size=8 --eval_batch_size=8 "
               "--save_checkpoints_steps=4 --log_steps=4 --jit_compile=false "
               "--bucket_by_length=false")


def run_sweep(*args, timeout=300):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, SCRIPT] + list(args),
                        capture_output=True, text=True, timeout=timeout,
                        env=env, cwd=REPO_ROOT)


def fake_inputs(root, tasks):
  """Empty GLUE task folders and BERT files: enough for the input checks."""
  glue_dir = os.path.join(root, "glue")
  bert_dir = os.path.join(root, "bert")
  os.makedirs(bert_dir)
  for task in tasks:
    os.makedirs(os.path.join(glue_dir, task))
    for name in ("train.tsv", "dev.tsv"):
      open(os.path.join(glue_dir, task, name), "w").close()
  for name in ("vocab.txt", "bert_model.ckpt.index"):
    open(os.path.join(bert_dir, name), "w").close()
  with open(os.path.join(bert_dir, "bert_config.json"), "w") as f:
    f.write("{}\n")
  return glue_dir, bert_dir


def read_tsv(path):
  with open(path, encoding="utf-8", newline="") as f:
    return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_names_and_main_metrics():
  assert sweep.run_name(3e-4, 3, 64, 1) == "lr3e-04_ep3_m64_seed1"
  assert sweep.run_name(2.5e-5, 0.5, 8, 2) == "lr2.5e-05_ep0.5_m8_seed2"
  assert sweep.main_metric("MRPC") == ("eval_accuracy", ["eval_f1"])
  assert sweep.main_metric("qqp") == ("eval_accuracy", ["eval_f1"])
  assert sweep.main_metric("CoLA") == ("eval_mcc", [])
  assert sweep.main_metric("STS-B") == ("eval_spearmanr", ["eval_pearson"])
  assert sweep.main_metric("RTE") == ("eval_accuracy", [])


def test_dry_run_lists_every_command(tmp_path):
  glue_dir, bert_dir = fake_inputs(str(tmp_path), ["MRPC", "RTE"])
  out = str(tmp_path / "sweep")
  # Sizes and seeds come from configs/paper_sweep.json: 3 each.
  result = run_sweep("--glue_dir=" + glue_dir, "--bert_dir=" + bert_dir,
                     "--output_dir=" + out, "--tasks=MRPC,rte",
                     "--learning_rates=3e-4,1e-3", "--epochs=3",
                     "--extra_flags=--eval_batch_size=32", "--dry_run")
  assert result.returncode == 0, result.stderr
  commands = [shlex.split(line) for line in result.stdout.splitlines()]
  with open(sweep.DEFAULT_SWEEP_CONFIG) as f:
    config = json.load(f)
  expected = []
  for task in ("MRPC", "RTE"):
    for lr in ("3e-04", "1e-03"):
      for size in config["adapter_size"]:
        for seed in config["seeds"]:
          name = "lr%s_ep3_m%d_seed%d" % (lr, size, seed)
          expected.append([
              sys.executable, os.path.join(REPO_ROOT, "run_classifier.py"),
              "--task_name=" + task, "--do_train=true", "--do_eval=true",
              "--data_dir=" + os.path.join(glue_dir, task),
              "--vocab_file=" + os.path.join(bert_dir, "vocab.txt"),
              "--bert_config_file=" + os.path.join(bert_dir,
                                                   "bert_config.json"),
              "--init_checkpoint=" + os.path.join(bert_dir,
                                                  "bert_model.ckpt"),
              "--do_lower_case=true",
              "--max_seq_length=%d" % config["max_seq_length"],
              "--train_batch_size=%d" % config["train_batch_size"],
              "--learning_rate=" + lr, "--num_train_epochs=3",
              "--adapter_size=%d" % size, "--seed=%d" % seed,
              "--output_dir=" + os.path.join(out, task, name),
              "--eval_batch_size=32"])
  assert len(commands) == 2 * 2 * 1 * len(config["adapter_size"]) * len(
      config["seeds"]) == 36
  assert commands == expected
  assert "36 of 36 runs to do" in result.stderr
  assert not os.path.exists(out)  # A dry run writes nothing.
  # --max_runs limits the commands listed.
  limited = run_sweep("--glue_dir=" + glue_dir, "--bert_dir=" + bert_dir,
                      "--output_dir=" + out, "--tasks=MRPC", "--dry_run",
                      "--max_runs=5")
  assert limited.returncode == 0, limited.stderr
  assert len(limited.stdout.splitlines()) == 5


def test_sweep_trains_tabulates_and_resumes(tmp_path):
  job = tiny_fixtures.make_job(tmp_path)
  glue_dir = str(tmp_path)  # make_job writes tmp_path/MRPC.
  bert_dir = os.path.dirname(job["vocab_file"])
  out = str(tmp_path / "sweep")
  args = ["--glue_dir=" + glue_dir, "--bert_dir=" + bert_dir,
          "--output_dir=" + out, "--tasks=MRPC", "--learning_rates=1e-2,3e-3",
          "--epochs=1", "--adapter_sizes=4", "--seeds=1,2",
          "--extra_flags=" + EXTRA_FLAGS]
  result = run_sweep(*args)
  assert result.returncode == 0, result.stdout + result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == "[1/4] MRPC lr=1e-02 epochs=1 size=4 seed=1"
  assert lines[1].startswith("[1/4] MRPC lr=1e-02 epochs=1 size=4 seed=1: "
                             "ok accuracy=")
  assert " f1=" in lines[1] and lines[1].endswith(" s")
  assert lines[-1].startswith("sweep: 4 ok, 0 failed, 0 pending of 4")

  rows = read_tsv(os.path.join(out, "results.tsv"))
  assert len(rows) == 4 and all(row["status"] == "ok" for row in rows)
  assert [(r["learning_rate"], r["seed"]) for r in rows] == [
      ("1e-02", "1"), ("1e-02", "2"), ("3e-03", "1"), ("3e-03", "2")]
  checkpoints = {}
  for row in rows:
    run_dir = os.path.join(out, row["run_dir"])
    assert row["run_dir"] == "MRPC/lr%s_ep1_m4_seed%s" % (
        row["learning_rate"], row["seed"])
    results = tiny_fixtures.read_eval_results(run_dir)
    assert results["global_step"] == 8  # 64 examples / 8, one epoch.
    evals = {k: v for k, v in results.items() if k.startswith("eval_")}
    assert set(evals) == {"eval_accuracy", "eval_f1", "eval_loss"}
    assert {k: float(row[k]) for k in evals} == evals
    assert row["main_metric"] == "eval_accuracy"
    assert float(row["main_value"]) == results["eval_accuracy"]
    assert float(row["wall_s"]) > 0 and row["message"] == ""
    # The run got the sweep's settings (and --extra_flags overrides).
    flags = json.load(open(os.path.join(run_dir, "run_config.json")))["flags"]
    assert flags["learning_rate"] == float(row["learning_rate"])
    assert flags["seed"] == int(row["seed"])
    assert flags["max_seq_length"] == 24 and flags["train_batch_size"] == 8
    for name in os.listdir(run_dir):
      path = os.path.join(run_dir, name)
      checkpoints[path] = os.stat(path).st_mtime_ns

  markdown = open(os.path.join(out, "results.md")).read()
  assert "## MRPC (accuracy; also f1)" in markdown
  assert "| learning_rate | epochs | adapter_size | accuracy | f1 | n |" in (
      markdown)
  table = [line for line in markdown.splitlines()
           if line.startswith("| 1e-02 |") or line.startswith("| 3e-03 |")]
  assert len(table) == 2
  assert all(line.endswith("| 2 | 0 |") and " ± " in line for line in table)
  means = [float(line.split("|")[4].split("±")[0]) for line in table]
  assert means == sorted(means, reverse=True)  # Best first.
  best = markdown.split("## Best setting per task")[1]
  assert "| MRPC | accuracy | %s | 1 | 4 |" % table[0].split(" | ")[0][2:] in (
      best)

  # Rerunning skips all four: no run_classifier process, folders untouched.
  start = time.time()
  again = run_sweep(*args)
  assert again.returncode == 0, again.stdout + again.stderr
  assert time.time() - start < 15
  assert again.stdout.count(": skipped, done before: accuracy=") == 4
  assert "ok accuracy" not in again.stdout
  assert read_tsv(os.path.join(out, "results.tsv")) == rows
  for path, mtime in checkpoints.items():
    assert os.stat(path).st_mtime_ns == mtime, path


def test_failed_runs_are_recorded_and_the_sweep_goes_on(tmp_path):
  # run_classifier.py refuses --train_batch_size=0 before importing TF.
  glue_dir, bert_dir = fake_inputs(str(tmp_path), ["MRPC"])
  out = str(tmp_path / "sweep")
  result = run_sweep("--glue_dir=" + glue_dir, "--bert_dir=" + bert_dir,
                     "--output_dir=" + out, "--tasks=MRPC",
                     "--learning_rates=1e-3", "--epochs=1",
                     "--adapter_sizes=8", "--seeds=1,2",
                     "--extra_flags=--train_batch_size=0")
  assert result.returncode == 2
  assert result.stdout.count("FAILED") == 2
  assert "sweep: 0 ok, 2 failed, 0 pending of 2" in result.stdout
  rows = read_tsv(os.path.join(out, "results.tsv"))
  assert [row["status"] for row in rows] == ["failed", "failed"]
  assert rows[0]["message"] == ("exit status 1: error: --train_batch_size "
                                "must be a positive integer, got 0")
  assert "| 1e-03 | 1 | 8 | - | - | 0 | 2 |" in open(
      os.path.join(out, "results.md")).read()


def test_bad_input_is_one_error_line_and_nothing_runs(tmp_path):
  glue_dir, bert_dir = fake_inputs(str(tmp_path), ["MRPC"])
  out = str(tmp_path / "sweep")
  common = ["--glue_dir=" + glue_dir, "--bert_dir=" + bert_dir,
            "--output_dir=" + out]
  bad_config = str(tmp_path / "bad.json")
  with open(bad_config, "w") as f:
    f.write('{"learning_rate": [3e-4],\n')
  cases = [
      (["--tasks=MRPC,RTE"],
       "error: --glue_dir=%s: folder RTE of task RTE not found" % glue_dir),
      (["--tasks=MRPC,XNLI"], "error: unknown task 'XNLI' in --tasks"),
      (["--sweep_config=" + bad_config],
       "error: --sweep_config=%s is not valid JSON" % bad_config),
      (["--tasks=MRPC", "--extra_flags=--seed=3"],
       "error: --extra_flags: --seed=3 is set by the sweep"),
  ]
  for extra, message in cases:
    result = run_sweep(*(common + extra))
    assert result.returncode == 1, (extra, result.stderr)
    assert result.stderr.startswith(message), (extra, result.stderr)
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stdout == ""
    assert not os.path.exists(out)
  missing_bert = run_sweep("--glue_dir=" + glue_dir, "--output_dir=" + out,
                           "--bert_dir=" + str(tmp_path / "nope"))
  assert missing_bert.returncode == 1
  assert missing_bert.stderr == "error: --bert_dir=%s: directory not found\n" % (
      tmp_path / "nope")
