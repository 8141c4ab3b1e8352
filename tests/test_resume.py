"""Resume: a training run killed 5 times ends where an uninterrupted one does.

`scripts/lab/kill_resume.py` runs the tiny job twice: once straight through, and
once killed with SIGKILL at 5 seeded random moments and rerun (the same
command) after each kill. Four kills come while training, each once a chosen
step was reported plus a random part of a step; the fifth during a rerun's
start-up. Both final checkpoints must hold the same weights (<= 1e-6; read
by name), Adam slots and step, and give the same dev metrics.

Then copies of the finished output_dir are reused with another task, adapter
size or model, or without run_config.json: each is refused with one clear
error line, and the folder is left untouched.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

import test_bad_input as bad_input
import tiny_fixtures

REPO_ROOT = tiny_fixtures.REPO_ROOT
KILLS = 5


def _job_flags(base):
  flags = {k: v for k, v in base.items() if k != "output_dir"}
  flags.update(do_train=True, do_eval=True, deterministic=True, seed=4321,
               jit_compile=False, bucket_by_length=False,
               num_train_epochs=3, train_batch_size=8,
               save_checkpoints_steps=3, log_steps=1)
  return flags


def _run_kill_resume(tmp_path_factory, signal_name, kill_seed, **overrides):
  root = str(tmp_path_factory.mktemp("resume_" + signal_name.lower()))
  # One layer: the same code paths, less tracing per restart.
  base = tiny_fixtures.make_job(root, num_hidden_layers=1)
  flags = dict(_job_flags(base), **overrides)
  work_dir = os.path.join(root, "kill_resume")
  cmd = [sys.executable, os.path.join(REPO_ROOT, "scripts", "lab", "kill_resume.py"),
         "--work_dir=" + work_dir, "--kills=%d" % KILLS, "--startup_kills=1",
         "--kill_seed=%d" % kill_seed, "--tolerance=1e-6",
         "--signal=" + signal_name, "--"]
  cmd += tiny_fixtures.flag_args(flags)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500,
                        env=env, cwd=REPO_ROOT)
  summary_path = os.path.join(work_dir, "summary.json")
  summary = None
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
  return {"proc": proc, "summary": summary, "work_dir": work_dir,
          "base": base, "root": root, "flags": flags}


@pytest.fixture(scope="module")
def kill_resume(tmp_path_factory):
  return _run_kill_resume(tmp_path_factory, "KILL", 2024)


@pytest.fixture(scope="module")
def term_resume(tmp_path_factory):
  # With another adapter method (LoRA): resuming is method-independent.
  return _run_kill_resume(tmp_path_factory, "TERM", 7, adapter_config="lora",
                          adapter_size=None)


def _report(run):
  proc = run["proc"]
  logs = ""
  for name in ("interrupted.log", "uninterrupted.log"):
    path = os.path.join(run["work_dir"], name)
    if os.path.exists(path):
      with open(path) as f:
        logs += "\n== %s ==\n%s" % (name, f.read()[-3000:])
  return "exit %s\n%s\n%s%s" % (proc.returncode, proc.stdout,
                                  proc.stderr[-3000:], logs)


def test_sigterm_at_five_moments_resumes_from_each_saved_step(term_resume):
  # (This run trains a LoRA adapter: --adapter_config=lora.)
  # SIGTERM (a preemptible VM, a batch scheduler) at 5 random moments: each
  # stopped run exits 143; while training it saves at the next step
  # boundary and names that step, and the rerun resumes from exactly that
  # step (kill_resume.py checks it); the end equals the uninterrupted run.
  summary = term_resume["summary"]
  report = _report(term_resume)
  assert summary is not None, report
  events = summary["kill_events"]
  assert len(events) == KILLS, report
  assert all(e["exit_code"] in (143, -15) for e in events), events
  training = [e for e in events if e["kind"] == "training"]
  assert len(training) >= KILLS - 1, events
  for event in training:
    assert event["exit_code"] == 143, events
    # Saved at the step boundary after the last reported one.
    assert event["saved_step"] >= event["last_reported_step"], events
  saved = [e["saved_step"] for e in training]
  assert saved == sorted(saved) and len(set(saved)) == len(saved), events
  assert summary["final_run"]["resumed_from"] == saved[-1], summary
  weights = summary["weights"]
  total = 64 // 8 * 3
  assert weights["global_steps"] == [total, total], weights
  assert weights["only_in_one"] == [], weights
  assert weights["max_abs_diff"] <= 1e-6, weights
  # The LoRA weights (the only adapter variables of this run) compared.
  assert weights["max_abs_diff_by_group"]["adapters"] <= 1e-6, weights
  assert summary["eval_max_abs_diff"] <= 1e-6, summary["eval_results"]
  assert summary["equal"] and term_resume["proc"].returncode == 0, report


def test_killed_run_ends_with_the_uninterrupted_weights(kill_resume):
  proc, summary = kill_resume["proc"], kill_resume["summary"]
  report = _report(kill_resume)
  assert summary is not None, report
  events = summary["kill_events"]
  # Five SIGKILLs, each of a process that was still running.
  assert len(events) == KILLS, report
  assert all(e["exit_code"] == -9 for e in events), events
  # Four kills planned at distinct steps while training (the fifth during a
  # rerun's start-up, unless that rerun was quicker than planned).
  planned = [e for e in events if "target_step" in e]
  assert len(planned) == KILLS - 1, events
  assert len({e["target_step"] for e in planned}) == len(planned), events
  assert all(e["last_reported_step"] >= e["target_step"] for e in planned)
  # Reruns really resumed (from a checkpoint after step 0), never went back.
  assert max(e["resumed_from"] for e in events) > 0, events
  steps_per_run = [e["resumed_from"] for e in events]
  assert steps_per_run == sorted(steps_per_run), events
  assert summary["final_run"]["resumed_from"] > 0, summary["final_run"]
  weights = summary["weights"]
  total = 64 // 8 * 3
  assert weights["global_steps"] == [total, total], weights
  assert weights["only_in_one"] == [], weights
  assert weights["num_variables"] > 40, weights
  groups = weights["max_abs_diff_by_group"]
  assert groups["adapters"] <= 1e-6, weights
  assert weights["max_abs_diff"] <= 1e-6, weights
  evals = summary["eval_results"]
  assert evals["uninterrupted"] and evals["interrupted"], evals
  assert summary["eval_max_abs_diff"] <= 1e-6, evals
  assert summary["equal"] and proc.returncode == 0, report


def _read_adapters(output_dir):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(output_dir))
  return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
          if "/adapters/" in n and not n.endswith(("/adam_m", "/adam_v"))}


def test_adapter_weights_read_by_name_match_and_moved(kill_resume):
  """The final adapters agree by name, were trained, and were exported."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  work_dir = kill_resume["work_dir"]
  a = _read_adapters(os.path.join(work_dir, "uninterrupted"))
  b = _read_adapters(os.path.join(work_dir, "interrupted"))
  assert sorted(a) == sorted(b) and len(a) == 8  # 1 layer x 2 adapters x 4.
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6)
  # Training moved them: the oldest kept checkpoint holds other values.
  state = tf.train.get_checkpoint_state(os.path.join(work_dir, "interrupted"))
  oldest = tf.train.load_checkpoint(state.all_model_checkpoint_paths[0])
  assert state.all_model_checkpoint_paths[0] != state.model_checkpoint_path
  assert any(not np.allclose(oldest.get_tensor(n), b[n]) for n in b)
  # The exported adapter directory holds the final values.
  exported = tf.train.load_checkpoint(
      os.path.join(work_dir, "interrupted", "adapter", "adapter.ckpt"))
  for name in b:
    np.testing.assert_array_equal(exported.get_tensor(name), b[name])


def _other_config_cases(kill_resume):
  """(id, flag overrides, expected parts of the error)."""
  root = kill_resume["root"]
  # RTE-layout data (index, sentence1, sentence2, label).
  rte = os.path.join(root, "RTE")
  if not os.path.exists(rte):
    os.makedirs(rte)
    for split in ("train", "dev"):
      with open(os.path.join(rte, split + ".tsv"), "w") as f:
        f.write("index\tsentence1\tsentence2\tlabel\n")
        for i in range(16):
          f.write("%d\tthe cat sat .\ta cat sat .\t%s\n"
                  % (i, ("entailment", "not_entailment")[i % 2]))
  other_dir = os.path.join(root, "other_model")
  if not os.path.exists(other_dir):
    tiny_fixtures.write_model(other_dir, num_hidden_layers=1,
                              intermediate_size=48)
  other_model = {"bert_config_file": os.path.join(other_dir, "bert_config.json"),
                 "init_checkpoint": os.path.join(other_dir, "bert_model.ckpt")}
  same_size_dir = os.path.join(root, "other_weights")
  if not os.path.exists(same_size_dir):
    tiny_fixtures.write_model(same_size_dir, seed=9)
  return [
      ("other_task", {"task_name": "RTE", "data_dir": rte},
       ["task_name was 'MRPC', now 'RTE'"]),
      ("other_adapter_size", {"adapter_size": 8},
       ["adapter_size was 4, now 8"]),
      ("other_adapter_method", {"adapter_config": "pfeiffer"},
       ["adapter_config was None, now 'pfeiffer'"]),
      ("other_model", {"bert_config_file": other_model["bert_config_file"],
                       "init_checkpoint": other_model["init_checkpoint"]},
       ["bert_config.intermediate_size was 32, now 48"]),
      # Same config, other weights: told apart by the checkpoint index.
      ("other_base_weights",
       {"init_checkpoint": os.path.join(same_size_dir, "bert_model.ckpt")},
       ["init_checkpoint_sha256 was '"]),
      ("no_run_config", {}, ["no run_config.json"]),
  ]


def test_checkpoints_of_another_configuration_are_refused(kill_resume):
  if kill_resume["summary"] is None:
    pytest.fail("the kill/resume run did not finish")
  finished = os.path.join(kill_resume["work_dir"], "uninterrupted")
  io_dir = os.path.join(kill_resume["root"], "other_config_io")
  os.makedirs(io_dir)
  jobs, before = [], {}
  for case_id, overrides, _ in _other_config_cases(kill_resume):
    output_dir = os.path.join(kill_resume["root"], "reuse_" + case_id)
    shutil.copytree(finished, output_dir)
    if case_id == "no_run_config":
      os.remove(os.path.join(output_dir, "run_config.json"))
    flags = dict(kill_resume["flags"], output_dir=output_dir, **overrides)
    jobs.append({"id": case_id, "args": tiny_fixtures.flag_args(flags),
                 "stdout": os.path.join(io_dir, case_id + ".stdout"),
                 "stderr": os.path.join(io_dir, case_id + ".stderr"),
                 "output_dir": output_dir})
    before[case_id] = bad_input.snapshot(output_dir)
  results = bad_input._run_driver(jobs, io_dir)
  for case_id, _, expected in _other_config_cases(kill_resume):
    code, stdout, stderr = results[case_id]
    report = "%s: exit %s\n%s\n%s" % (case_id, code, stdout, stderr[-3000:])
    assert code == 1, report
    assert "Traceback" not in stdout + stderr, report
    messages = [line for line in stderr.splitlines()
                if line.strip() and not bad_input._LOG_LINE.match(line)]
    assert len(messages) == 1, report
    message = messages[0]
    output_dir = [j["output_dir"] for j in jobs if j["id"] == case_id][0]
    assert message.startswith("error: --output_dir=%s holds checkpoints"
                              % output_dir), report
    for part in expected:
      assert part in message, report
    assert "Resumed from" not in stderr, report
    assert bad_input.snapshot(output_dir) == before[case_id], case_id
