"""Kills a training run at random moments and checks that resuming loses nothing.

Runs a `run_classifier.py` command twice, each into its own output_dir:

  * uninterrupted: once, to the end;
  * interrupted: killed with SIGKILL (or, with `--signal=TERM`, stopped with
    SIGTERM, as a preemptible VM is) at `--kills` random moments, and rerun
    (the same command) after each kill until it finishes.

With SIGTERM each stopped run must exit with status 143 and, when it was
training, name the step it saved; the rerun must resume from that step.

Then it compares the final checkpoints of both variable by variable (model,
Adam slots, global_step) and their eval_results.txt, prints the figures and
writes them to `<work_dir>/summary.json`. With `--deterministic=true` and a
fixed `--seed` the two must agree to within `--tolerance`.

The moments are random but seeded (`--kill_seed`). Most kills happen while
training runs: once the run reports a chosen step, after a random fraction of
the time between two progress lines (so some land inside checkpoint saves).
`--startup_kills` of them (from the third run on) happen instead at a random
time during a rerun's start-up (importing, restoring, tracing, writing run
files), scaled by how long the previous rerun took to its first step.

Usage (everything after `--` is passed to run_classifier.py, which must
include --do_train=true and must not include --output_dir):

  python scripts/lab/kill_resume.py --work_dir=/tmp/kill_resume --kills=5 -- \
    --task_name=MRPC --do_train=true --do_eval=true \
    --data_dir=$GLUE_DIR/MRPC --vocab_file=$BERT_DIR/vocab.txt \
    --bert_config_file=$BERT_DIR/bert_config.json \
    --init_checkpoint=$BERT_DIR/bert_model.ckpt --max_seq_length=128 \
    --train_batch_size=32 --learning_rate=3e-4 --num_train_epochs=0.3 \
    --save_checkpoints_steps=5 --log_steps=1 --deterministic=true --seed=1

Exit status: 0 when the interrupted run ends equal to the uninterrupted one,
1 when it does not, 2 on a usage error or a run that failed.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

from absl import app
from absl import flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from adapter_bert.storage.atomic_io import atomic_write_text  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", None, "Folder for both runs (created; must "
                    "not hold an earlier comparison).")
flags.DEFINE_integer("kills", 5, "How many times the interrupted run is "
                     "killed.")
flags.DEFINE_integer("startup_kills", 1, "How many of the kills happen "
                     "during a rerun's start-up instead of while training.")
flags.DEFINE_integer("kill_seed", 0, "Seed of the kill moments.")
flags.DEFINE_float("tolerance", 1e-6, "Largest allowed absolute difference "
                   "of a final variable or eval metric.")
flags.DEFINE_bool("parallel", True, "Run the uninterrupted run at the same "
                  "time as the interrupted one.")
flags.DEFINE_integer("timeout_s", 7200, "Give up on a run after this long.")
flags.DEFINE_enum("signal", "KILL", ["KILL", "TERM"], "The signal sent: KILL "
                  "(no chance to save) or TERM (the run saves at the next "
                  "step boundary and exits with status 143).")

_STEP_LINE = re.compile(r"\] step (\d+)/(\d+) ")
_RESUMED_LINE = re.compile(r"Resumed from \S+ at step (\d+)")
_TERMINATED_LINE = re.compile(r"^terminated \(SIGTERM\)(?: at step (\d+))?")


class RunFailed(Exception):
  pass


class Run(object):
  """One run_classifier process whose stderr is followed line by line."""

  def __init__(self, cmd, log_path):
    self.log = open(log_path, "a", encoding="utf-8")
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    self.start = time.time()
    self.proc = subprocess.Popen(cmd, stdout=self.log,
                                 stderr=subprocess.PIPE, text=True, env=env,
                                 cwd=REPO_ROOT)
    self.lock = threading.Condition()
    self.step = None          # Last step reported.
    self.total = None
    self.resumed_from = 0
    self.terminated_at = None  # The step a SIGTERM saved (None: not said).
    self.first_progress = None   # Seconds from start to the first step line.
    self.step_times = []
    self.tail = []
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self):
    for line in self.proc.stderr:
      self.log.write(line)
      self.log.flush()
      with self.lock:
        self.tail = (self.tail + [line.rstrip("\n")])[-20:]
        m = _RESUMED_LINE.search(line)
        if m:
          self.resumed_from = int(m.group(1))
        m = _TERMINATED_LINE.search(line)
        if m and m.group(1):
          self.terminated_at = int(m.group(1))
        m = _STEP_LINE.search(line)
        if m:
          now = time.time() - self.start
          if self.first_progress is None:
            self.first_progress = now
          self.step, self.total = int(m.group(1)), int(m.group(2))
          self.step_times.append(now)
        self.lock.notify_all()
    with self.lock:
      self.lock.notify_all()

  def wait_for(self, predicate, timeout):
    """Waits until predicate(self) holds or the process ends; returns it."""
    deadline = time.time() + timeout
    with self.lock:
      while not predicate(self):
        if self.proc.poll() is not None and not self.reader.is_alive():
          return False
        remaining = deadline - time.time()
        if remaining <= 0:
          return False
        self.lock.wait(min(remaining, 0.5))
      return True

  def step_interval(self):
    times = self.step_times[-5:]
    if len(times) < 2:
      return 0.05
    return (times[-1] - times[0]) / (len(times) - 1)

  def kill(self, signum=signal.SIGKILL):
    self.proc.send_signal(signum)
    return self.finish()

  def finish(self, timeout=None):
    code = self.proc.wait(timeout=timeout)
    self.reader.join()
    self.log.close()
    return code


# Checkpoint-name parts of every adapter method's variables.
_ADAPTER_MARKERS = ("/adapters/", "/lora_", "/invertible_adapter/",
                    "/prefix_tuning/", "/prompt_tuning/", "/layer_attention/")


def _output_dir_flag(output_dir):
  return "--output_dir=" + output_dir


def _run_to_end(cmd, log_path, timeout):
  run = Run(cmd, log_path)
  code = run.finish(timeout=timeout)
  if code != 0:
    raise RunFailed("%s exited with %s; see %s: %s"
                    % (" ".join(cmd[:2]), code, log_path,
                       " | ".join(run.tail[-3:])))
  return {"seconds": time.time() - run.start, "resumed_from": run.resumed_from,
          "last_step": run.step}


def interrupted_run(cmd, log_path, kills, startup_kills, rng, timeout,
                    signum=signal.SIGKILL):
  """Kills `cmd` `kills` times at random moments, then runs it to the end.

  Returns:
    (list of one dict per kill, dict of the final run).
  """
  events = []
  targets = None
  startup_cycles = set()
  restart_startup = None  # Seconds a rerun took to its first progress line.
  last_saved = None  # The step the last SIGTERM saved.
  for cycle in range(kills):
    run = Run(cmd, log_path)
    if targets is None:
      # The first run shows the number of steps and the start-up time.
      if not run.wait_for(lambda r: r.total is not None, timeout):
        run.kill()
        raise RunFailed("no progress line from the first run; see %s: %s"
                        % (log_path, " | ".join(run.tail[-3:])))
      total = run.total
      # Start-up kills come after a rerun showed how long start-up takes.
      training_kills = kills - min(startup_kills, max(kills - 2, 0))
      if total - 2 < training_kills:
        run.kill()
        raise RunFailed("only %d training steps: too few for %d kills while "
                        "training" % (total, training_kills))
      targets = sorted(rng.sample(range(1, total - 1), training_kills))
      startup_cycles = set(rng.sample(range(2, kills),
                                      kills - training_kills))
    event = {"cycle": cycle + 1}
    if cycle in startup_cycles:
      delay = rng.uniform(0.15, 0.9) * restart_startup
      started = run.wait_for(lambda r: r.step is not None, delay)
      event.update(kind="startup" if not started else "training",
                   planned_seconds=round(delay, 3))
    else:
      target = targets.pop(0)
      if not run.wait_for(lambda r, t=target: r.step is not None and r.step >= t,
                          timeout):
        run.kill()
        raise RunFailed("run %d ended before step %d; see %s: %s"
                        % (cycle + 1, target, log_path,
                           " | ".join(run.tail[-3:])))
      extra = rng.uniform(0.0, 1.0) * run.step_interval()
      time.sleep(extra)
      event.update(kind="training", target_step=target,
                   extra_delay_seconds=round(extra, 4))
    with run.lock:
      event.update(resumed_from=run.resumed_from, last_reported_step=run.step)
      if cycle > 0 and run.first_progress is not None:
        restart_startup = run.first_progress
    if (last_saved is not None and run.step is not None
        and run.resumed_from != last_saved):
      run.kill()
      raise RunFailed("run %d resumed from step %d, not from step %d that "
                      "SIGTERM saved; see %s" % (
                          cycle + 1, run.resumed_from, last_saved, log_path))
    code = run.kill(signum)
    event.update(exit_code=code, seconds=round(time.time() - run.start, 2))
    expected = {-signal.SIGKILL} if signum == signal.SIGKILL else {
        143, -signal.SIGTERM}  # -SIGTERM: before Python set its handler.
    if code not in expected:
      raise RunFailed("run %d ended (exit %s) before it was killed; see %s"
                      % (cycle + 1, code, log_path))
    if signum == signal.SIGTERM:
      event["saved_step"] = run.terminated_at
      if run.terminated_at is not None:
        last_saved = run.terminated_at
      if event["kind"] == "training" and run.terminated_at is None:
        raise RunFailed("run %d got SIGTERM while training but named no "
                        "saved step; see %s" % (cycle + 1, log_path))
    events.append(event)
    print("kill %d (%s): last step %s, run had resumed from step %d, "
          "after %.1f s" % (cycle + 1, event["kind"],
                            event["last_reported_step"],
                            event["resumed_from"], event["seconds"]),
          flush=True)
  final = _run_to_end(cmd, log_path, timeout)
  if last_saved is not None and final["resumed_from"] != last_saved:
    raise RunFailed("the last run resumed from step %d, not from step %d "
                    "that SIGTERM saved" % (final["resumed_from"], last_saved))
  return events, final


def compare_checkpoints(dir_a, dir_b):
  """Max |a - b| over the variables of both final checkpoints, by group."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  prefix_a = tf.train.latest_checkpoint(dir_a)
  prefix_b = tf.train.latest_checkpoint(dir_b)
  if prefix_a is None or prefix_b is None:
    raise RunFailed("no final checkpoint in %s or %s" % (dir_a, dir_b))
  reader_a = tf.train.load_checkpoint(prefix_a)
  reader_b = tf.train.load_checkpoint(prefix_b)
  names_a = set(reader_a.get_variable_to_shape_map())
  names_b = set(reader_b.get_variable_to_shape_map())
  groups = {}
  worst = {}
  for name in sorted(names_a & names_b):
    a = reader_a.get_tensor(name)
    b = reader_b.get_tensor(name)
    if a.shape != b.shape:
      diff = float("inf")
    else:
      diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))
                   ) if a.size else 0.0
    if name.endswith(("/adam_m", "/adam_v")):
      group = "adam_slots"
    elif any(marker in name for marker in _ADAPTER_MARKERS):
      group = "adapters"
    elif name in ("output_weights", "output_bias"):
      group = "classifier_head"
    elif "LayerNorm" in name:
      group = "layer_norms"
    elif name == "global_step":
      group = "global_step"
    else:
      group = "other"
    groups[group] = max(groups.get(group, 0.0), diff)
    if diff > worst.get("diff", -1.0):
      worst = {"name": name, "diff": diff}
  return {
      "checkpoint_uninterrupted": prefix_a,
      "checkpoint_interrupted": prefix_b,
      "num_variables": len(names_a & names_b),
      "only_in_one": sorted(names_a ^ names_b),
      "max_abs_diff_by_group": groups,
      "max_abs_diff": worst.get("diff", 0.0),
      "worst_variable": worst.get("name"),
      "global_steps": [int(reader_a.get_tensor("global_step")),
                       int(reader_b.get_tensor("global_step"))],
  }


def read_eval_results(output_dir):
  path = os.path.join(output_dir, "eval_results.txt")
  if not os.path.exists(path):
    return None
  results = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      if " = " in line:
        key, value = line.strip().split(" = ", 1)
        results[key] = float(value)
  return results


def main(argv):
  passthrough = argv[1:]
  if not FLAGS.work_dir:
    raise app.UsageError("--work_dir is required")
  if any(a.startswith("--output_dir") for a in passthrough):
    raise app.UsageError("do not pass --output_dir; the script sets it")
  if not any(a in ("--do_train", "--do_train=true", "--do_train=True")
             for a in passthrough):
    raise app.UsageError("pass --do_train=true after --")
  if FLAGS.kills < 1:
    raise app.UsageError("--kills must be at least 1")
  if not any(a.startswith("--deterministic") for a in passthrough):
    print("warning: without --deterministic=true the runs may differ",
          file=sys.stderr)
  work_dir = os.path.abspath(FLAGS.work_dir)
  dirs = {k: os.path.join(work_dir, k)
          for k in ("uninterrupted", "interrupted")}
  for d in dirs.values():
    if os.path.exists(d) and os.listdir(d):
      raise app.UsageError("%s is not empty; use a new --work_dir" % d)
  os.makedirs(work_dir, exist_ok=True)
  base_cmd = [sys.executable, os.path.join(REPO_ROOT, "run_classifier.py")]
  base_cmd += passthrough
  rng = random.Random(FLAGS.kill_seed)
  summary = {"command": base_cmd[1:], "kills": FLAGS.kills,
             "signal": FLAGS.signal,
             "kill_seed": FLAGS.kill_seed, "tolerance": FLAGS.tolerance}
  t0 = time.time()
  baseline = {}

  def uninterrupted():
    try:
      baseline.update(_run_to_end(
          base_cmd + [_output_dir_flag(dirs["uninterrupted"])],
          os.path.join(work_dir, "uninterrupted.log"), FLAGS.timeout_s))
    except (RunFailed, subprocess.TimeoutExpired) as e:
      baseline["error"] = str(e)

  try:
    thread = threading.Thread(target=uninterrupted)
    if FLAGS.parallel:
      thread.start()
    else:
      uninterrupted()
    events, final = interrupted_run(
        base_cmd + [_output_dir_flag(dirs["interrupted"])],
        os.path.join(work_dir, "interrupted.log"), FLAGS.kills,
        FLAGS.startup_kills, rng, FLAGS.timeout_s,
        getattr(signal, "SIG" + FLAGS.signal))
    summary["interrupted_seconds"] = round(time.time() - t0, 1)
    if FLAGS.parallel:
      thread.join()
    if "error" in baseline:
      raise RunFailed(baseline["error"])
  except (RunFailed, subprocess.TimeoutExpired) as e:
    print("error: %s" % e, file=sys.stderr)
    sys.exit(2)
  summary["kill_events"] = events
  summary["final_run"] = final
  summary["uninterrupted_run"] = baseline
  summary["wall_seconds"] = round(time.time() - t0, 1)
  summary["weights"] = compare_checkpoints(dirs["uninterrupted"],
                                           dirs["interrupted"])
  evals = [read_eval_results(dirs[k]) for k in ("uninterrupted",
                                                 "interrupted")]
  summary["eval_results"] = {"uninterrupted": evals[0],
                             "interrupted": evals[1]}
  eval_diff = 0.0
  if evals[0] is not None or evals[1] is not None:
    if evals[0] is None or evals[1] is None or set(evals[0]) != set(evals[1]):
      eval_diff = float("inf")
    else:
      eval_diff = max(abs(evals[0][k] - evals[1][k]) for k in evals[0])
  summary["eval_max_abs_diff"] = eval_diff
  weights = summary["weights"]
  summary["equal"] = bool(
      weights["max_abs_diff"] <= FLAGS.tolerance and not weights["only_in_one"]
      and weights["global_steps"][0] == weights["global_steps"][1]
      and eval_diff <= FLAGS.tolerance)
  atomic_write_text(os.path.join(work_dir, "summary.json"),
                    json.dumps(summary, indent=2, sort_keys=True) + "\n")
  print("%d kills (%s); final step %d; max |difference| %.3g (adapters %.3g, "
        "worst %s); eval max |difference| %.3g; uninterrupted %.0f s, "
        "interrupted %.0f s -> %s" % (
            len(events), ", ".join(e["kind"] for e in events),
            weights["global_steps"][1], weights["max_abs_diff"],
            weights["max_abs_diff_by_group"].get("adapters", float("nan")),
            weights["worst_variable"], eval_diff, baseline["seconds"],
            summary["interrupted_seconds"],
            "EQUAL" if summary["equal"] else "DIFFERENT"))
  sys.exit(0 if summary["equal"] else 1)


if __name__ == "__main__":
  app.run(main)
