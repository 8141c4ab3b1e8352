"""Faults of the machine and of the user around a training run.

A damaged latest checkpoint on resume, a write that fails (no space, a file
size limit), SIGTERM during training, changed training flags on resume and
two runs on one output_dir. Each case runs the command line on the tiny
model and checks one line on stderr (besides log lines), the exit status, no
traceback, and that what output_dir held before still loads.
"""

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from adapter_bert.storage import atomic_io
import tiny_fixtures

_LOG_LINE = re.compile(
    r"^([IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called)")


def message_lines(stderr):
  """The lines of stderr that are not log lines."""
  return [line for line in stderr.splitlines()
          if line.strip() and not _LOG_LINE.match(line)]


def one_line(proc, status, *expected):
  lines = message_lines(proc.stderr)
  assert proc.returncode == status, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
  assert len(lines) == 1, lines
  for text in expected:
    assert text in lines[0], (text, lines[0])
  return lines[0]


def job(tmp_path, **overrides):
  flags = tiny_fixtures.make_job(tmp_path, num_hidden_layers=1)
  flags.update(do_train=True, do_eval=False, jit_compile=False,
               bucket_by_length=False, deterministic=True, seed=7,
               num_train_epochs=2, save_checkpoints_steps=4, log_steps=1)
  flags.update(overrides)
  return flags


def checkpoint_steps(output_dir):
  return sorted(int(n.split("-")[1].split(".")[0])
                for n in os.listdir(output_dir)
                if n.startswith("model.ckpt-") and n.endswith(".index"))


def trained_values(output_dir, step=None):
  """{name: array} of a checkpoint in output_dir (the latest by default)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  prefix = (os.path.join(output_dir, "model.ckpt-%d" % step) if step
            else tf.train.latest_checkpoint(output_dir))
  reader = tf.train.load_checkpoint(prefix)
  return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}


def keep_only(output_dir, step):
  """Leaves output_dir as a run stopped after saving `step` would."""
  from adapter_bert.storage import checkpoint_io  # pylint: disable=g-import-not-at-top
  kept = [s for s in checkpoint_steps(output_dir) if s <= step]
  for s in checkpoint_steps(output_dir):
    if s > step:
      for name in os.listdir(output_dir):
        if name.startswith("model.ckpt-%d." % s):
          os.remove(os.path.join(output_dir, name))
  prefixes = [os.path.join(output_dir, "model.ckpt-%d" % s) for s in kept]
  checkpoint_io.write_checkpoint_state(output_dir, prefixes[-1], prefixes)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A whole tiny run (16 steps, checkpoints every 4) to copy from."""
  root = tmp_path_factory.mktemp("finished")
  flags = job(root)
  proc = tiny_fixtures.run_cli(flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return flags


def copy_run(finished, tmp_path, step):
  flags = dict(finished, output_dir=str(tmp_path / "out"))
  shutil.copytree(finished["output_dir"], flags["output_dir"])
  keep_only(flags["output_dir"], step)
  return flags


def test_truncated_latest_checkpoint_resumes_from_an_older_one(
    finished, tmp_path):
  flags = copy_run(finished, tmp_path, 12)
  out = flags["output_dir"]
  data = os.path.join(out, "model.ckpt-12.data-00000-of-00001")
  with open(data, "rb") as f:
    content = f.read()
  with open(data, "wb") as f:
    f.write(content[:len(content) // 2])
  proc = tiny_fixtures.run_cli(flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Cannot resume from %s" % os.path.join(out, "model.ckpt-12") in (
      proc.stderr)
  assert re.search(r"Resumed from \S+model.ckpt-8 at step 8", proc.stderr)
  # It ends where the uninterrupted run ended.
  want = trained_values(finished["output_dir"])
  got = trained_values(out)
  assert got["global_step"] == 16
  for name, value in want.items():
    np.testing.assert_allclose(got[name], value, atol=1e-6, err_msg=name)


def test_no_readable_checkpoint_is_refused_in_one_line(finished, tmp_path):
  flags = copy_run(finished, tmp_path, 8)
  out = flags["output_dir"]
  for step in (4, 8):
    with open(os.path.join(out, "model.ckpt-%d.index" % step), "wb") as f:
      f.write(b"garbage" * 20)
  before = sorted(os.listdir(out))
  proc = tiny_fixtures.run_cli(flags)
  one_line(proc, 1, "--output_dir=" + out, "none of its 2 checkpoint(s) can "
           "be read", "model.ckpt-8", "model.ckpt-4")
  assert sorted(os.listdir(out)) == before


def test_a_failed_checkpoint_write_keeps_the_last_good_one(finished, tmp_path):
  # A real write failure: the process may write files of at most 20 KiB
  # (the checkpoint's data file is larger), as a full disk fails a write.
  flags = copy_run(finished, tmp_path, 8)
  out = flags["output_dir"]
  before = trained_values(out, 8)

  def limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20 * 1024, 20 * 1024))

  cmd = [sys.executable, os.path.join(tiny_fixtures.REPO_ROOT,
                                      "run_classifier.py")]
  cmd += tiny_fixtures.flag_args(flags)
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                        cwd=tiny_fixtures.REPO_ROOT, preexec_fn=limit)
  one_line(proc, 1, "cannot write checkpoint " + os.path.join(
      out, "model.ckpt-12"), "too large")
  # The last good checkpoint is still the latest and loads; nothing was
  # left half-written.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  assert tf.train.latest_checkpoint(out) == os.path.join(out, "model.ckpt-8")
  assert checkpoint_steps(out) == [4, 8]
  after = trained_values(out, 8)
  for name, value in before.items():
    np.testing.assert_array_equal(after[name], value)
  assert not [n for n in os.listdir(out) if n.endswith(".tmp")
              or n.startswith(".ckpt-tmp")]
  # The next run (with space again) resumes from it.
  proc = tiny_fixtures.run_cli(flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert re.search(r"Resumed from \S+model.ckpt-8 at step 8", proc.stderr)


def test_no_space_while_saving_is_one_clear_error(tmp_path, monkeypatch):
  # What a full disk does to TensorFlow's checkpoint writer, in process.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from adapter_bert.storage import checkpoint_io  # pylint: disable=g-import-not-at-top
  from adapter_bert.errors import UserError  # pylint: disable=g-import-not-at-top
  prefix = str(tmp_path / "model.ckpt-1")
  checkpoint_io.save_checkpoint(prefix, {"w": tf.ones([3])})

  def full(**kwargs):
    raise tf.errors.ResourceExhaustedError(
        None, None, "/x/ckpt.data-00000-of-00001.tempstate1; No space left "
        "on device [Op:SaveV2]")

  monkeypatch.setattr(tf.raw_ops, "SaveV2", full)
  with pytest.raises(UserError, match="cannot write checkpoint %s: .*No "
                     "space left on device" % re.escape(prefix)):
    checkpoint_io.save_checkpoint(prefix, {"w": tf.zeros([3])})
  monkeypatch.undo()
  reader = tf.train.load_checkpoint(prefix)
  np.testing.assert_array_equal(reader.get_tensor("w"), np.ones(3))
  # Nothing else was left there (no temporary folder).
  assert sorted(os.listdir(str(tmp_path))) == [
      "model.ckpt-1.data-00000-of-00001", "model.ckpt-1.index"]


def start_cli(flags):
  cmd = [sys.executable, os.path.join(tiny_fixtures.REPO_ROOT,
                                      "run_classifier.py")]
  cmd += tiny_fixtures.flag_args(flags)
  return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=tiny_fixtures.REPO_ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def wait_for_line(proc, pattern, timeout=300):
  """Reads stderr until a line matches; returns (match, lines so far)."""
  lines = []
  deadline = time.time() + timeout
  while time.time() < deadline:
    line = proc.stderr.readline()
    if not line:
      break
    lines.append(line)
    m = re.search(pattern, line)
    if m:
      return m, lines
  raise AssertionError("no line matched %r: %s" % (pattern, "".join(lines)))


def test_sigterm_saves_at_the_next_step_and_the_rerun_resumes(tmp_path):
  flags = job(tmp_path, num_train_epochs=2000, save_checkpoints_steps=100000)
  proc = start_cli(flags)
  m, lines = wait_for_line(proc, r"\] step (\d+)/(\d+) ")
  assert int(m.group(1)) < int(m.group(2)) - 20
  proc.send_signal(signal.SIGTERM)
  stdout, rest = proc.communicate(timeout=300)
  stderr = "".join(lines) + rest
  result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout,
                                       stderr)
  line = one_line(result, 143, "terminated (SIGTERM) at step",
                  "rerun the same command to resume")
  saved = int(re.search(r"at step (\d+)", line).group(1))
  out = flags["output_dir"]
  assert checkpoint_steps(out) == [saved]
  assert not os.path.exists(os.path.join(out, atomic_io.LOCK_FILE))
  # The rerun resumes from that very step.
  proc = start_cli(flags)
  m, _ = wait_for_line(proc, r"Resumed from \S+ at step (\d+)")
  assert int(m.group(1)) == saved
  proc.send_signal(signal.SIGTERM)
  proc.communicate(timeout=300)
  assert proc.returncode == 143


def test_changed_training_flags_on_resume(finished, tmp_path):
  flags = copy_run(finished, tmp_path, 8)
  out = flags["output_dir"]
  before = sorted(os.listdir(out))
  proc = tiny_fixtures.run_cli(dict(flags, train_batch_size=4))
  one_line(proc, 1, "--output_dir=" + out, "trained with other flags",
           "train_batch_size was 8, now 4")
  proc = tiny_fixtures.run_cli(dict(flags, seed=8, num_train_epochs=3))
  one_line(proc, 1, "num_train_epochs was 2.0, now 3.0", "seed was 7, now 8")
  proc = tiny_fixtures.run_cli(dict(flags, learning_rate=5e-3))
  one_line(proc, 1, "learning_rate was 0.01, now 0.005",
           "--allow_hyperparameter_change=true")
  proc = tiny_fixtures.run_cli(dict(flags, optimizer="adamw"))
  one_line(proc, 1, "optimizer was 'adam_weight_decay', now 'adamw'",
           "--allow_hyperparameter_change=true")
  assert sorted(os.listdir(out)) == before
  # With the explicit flag it continues, says so and records the change.
  proc = tiny_fixtures.run_cli(dict(flags, learning_rate=5e-3,
                                    allow_hyperparameter_change=True))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "changed hyperparameters: learning_rate was 0.01, now 0.005" in (
      proc.stderr)
  with open(os.path.join(out, "run_config.json")) as f:
    record = json.load(f)
  assert record["hyperparameters"]["learning_rate"] == 5e-3
  assert record["hyperparameter_changes"] == [
      {"step": 8, "changes": ["learning_rate was 0.01, now 0.005"]}]
  # A record written before --optimizer existed trained with the
  # reference's update: the same flags resume without a change.
  del record["hyperparameters"]["optimizer"]
  with open(os.path.join(out, "run_config.json"), "w") as f:
    json.dump(record, f)
  proc = tiny_fixtures.run_cli(dict(flags, learning_rate=5e-3))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "changed hyperparameters" not in proc.stderr
  # An evaluation-only rerun with other (unused) training flags is fine and
  # keeps the record of the training run.
  proc = tiny_fixtures.run_cli(dict(flags, do_train=False, do_eval=True,
                                    train_batch_size=4))
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, "run_config.json")) as f:
    assert json.load(f)["training"]["train_batch_size"] == 8


def test_one_run_at_a_time_per_output_dir(tmp_path):
  flags = job(tmp_path, num_train_epochs=2000, save_checkpoints_steps=100000)
  first = start_cli(flags)
  _, lines = wait_for_line(first, r"\] step (\d+)/")
  out = flags["output_dir"]
  holder = atomic_io.read_lock(out)
  assert holder["pid"] == first.pid
  second = tiny_fixtures.run_cli(flags)
  one_line(second, 1, "--output_dir=" + out, "is in use by process %d on "
           % first.pid, os.path.join(out, ".lock"))
  first.send_signal(signal.SIGTERM)
  first.communicate(timeout=300)
  assert first.returncode == 143
  assert atomic_io.read_lock(out) is None  # Released.
  # A lock left by a process that is gone is taken over, with a log line.
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True).stdout.strip()
  with open(os.path.join(out, ".lock"), "w") as f:
    json.dump({"pid": int(dead), "host": os.uname().nodename,
               "started": "earlier"}, f)
  proc = tiny_fixtures.run_cli(dict(flags, do_train=False, do_eval=True))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Taking over the lock" in proc.stderr
  assert atomic_io.read_lock(out) is None
