"""Atomic writes survive SIGKILL: a reader finds the old or the new file.

`atomic_open` is tested directly (errors, permissions, leftovers), then
through processes killed at random moments while they write: result files
(`atomic_write_bytes` / `atomic_write_text`) and checkpoints
(`trainer_lib.Trainer.save`, i.e. `checkpoint_io.save_checkpoint` and the
`checkpoint` state file).
"""

import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from adapter_bert.storage import atomic_io
from adapter_bert.storage.atomic_io import atomic_open, atomic_write_bytes, atomic_write_text

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leftovers(directory, name):
  return [f for f in os.listdir(directory)
          if f.startswith("." + name + ".") and f.endswith(".tmp")]


# --- atomic_open itself. -------------------------------------------------------


def test_writes_new_file_and_replaces_old(tmp_path):
  path = str(tmp_path / "eval_results.txt")
  atomic_write_text(path, "a = 1\n")
  with open(path, encoding="utf-8") as f:
    assert f.read() == "a = 1\n"
  atomic_write_text(path, "a = 2\nb = 3\n")
  with open(path, encoding="utf-8") as f:
    assert f.read() == "a = 2\nb = 3\n"
  atomic_write_bytes(path, b"\x00\xffbytes")
  with open(path, "rb") as f:
    assert f.read() == b"\x00\xffbytes"
  assert _leftovers(str(tmp_path), "eval_results.txt") == []


def test_text_mode_keeps_newlines_and_encodes_utf8(tmp_path):
  path = str(tmp_path / "out.tsv")
  atomic_write_text(path, "caf\u00e9\r\nx\n")
  with open(path, "rb") as f:
    assert f.read() == "caf\u00e9\r\nx\n".encode("utf-8")


def test_exception_leaves_old_file_and_no_temporary(tmp_path):
  path = str(tmp_path / "test_results.tsv")
  atomic_write_text(path, "old content\n")
  with pytest.raises(RuntimeError, match="boom"):
    with atomic_open(path, "w") as f:
      f.write("half of the new content")
      f.flush()
      assert len(_leftovers(str(tmp_path), "test_results.tsv")) == 1
      raise RuntimeError("boom")
  with open(path, encoding="utf-8") as f:
    assert f.read() == "old content\n"
  assert sorted(os.listdir(str(tmp_path))) == ["test_results.tsv"]


def test_exception_on_first_write_creates_nothing(tmp_path):
  path = str(tmp_path / "MRPC.tsv")
  with pytest.raises(KeyboardInterrupt):
    with atomic_open(path, "wb") as f:
      f.write(b"partial")
      raise KeyboardInterrupt()
  assert os.listdir(str(tmp_path)) == []


def test_rejects_other_modes(tmp_path):
  for mode in ("a", "r", "w+", "ab"):
    with pytest.raises(ValueError, match="only 'w' and 'wb'"):
      with atomic_open(str(tmp_path / "x"), mode):
        pass
  assert os.listdir(str(tmp_path)) == []


def test_missing_directory_is_an_error_and_writes_nothing(tmp_path):
  # A failed write is one error naming the file (as a full disk's is).
  from adapter_bert.errors import UserError  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "no_such_dir" / "f.txt")
  with pytest.raises(UserError, match="cannot write %s: No such file or "
                     "directory" % path):
    atomic_write_text(path, "x")
  assert os.listdir(str(tmp_path)) == []


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
  from adapter_bert.errors import UserError  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "results.txt")
  atomic_write_text(path, "old\n")

  def full(fd):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "fsync", full)
  with pytest.raises(UserError, match="cannot write %s: No space left on "
                     "device" % path):
    atomic_write_text(path, "new\n")
  monkeypatch.undo()
  assert open(path).read() == "old\n"
  assert os.listdir(str(tmp_path)) == ["results.txt"]


def test_new_file_gets_umask_permissions_not_0600(tmp_path):
  old_mask = os.umask(0o022)
  try:
    path = str(tmp_path / "new.txt")
    atomic_write_text(path, "x")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    os.umask(0o027)
    path2 = str(tmp_path / "new2.txt")
    atomic_write_text(path2, "x")
    assert stat.S_IMODE(os.stat(path2).st_mode) == 0o640
  finally:
    os.umask(old_mask)


def test_replaced_file_keeps_its_permissions(tmp_path):
  path = str(tmp_path / "kept.txt")
  with open(path, "w") as f:
    f.write("old")
  os.chmod(path, 0o604)
  atomic_write_text(path, "new")
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o604
  with open(path) as f:
    assert f.read() == "new"


def test_umask_is_read_without_changing_it():
  old_mask = os.umask(0o037)
  try:
    assert atomic_io._umask() == 0o037
    assert os.umask(0o037) == 0o037
  finally:
    os.umask(old_mask)


# --- Killed writers. -----------------------------------------------------------

# Content of version `i`: a header naming i, repeated. Any mix of two
# versions, a truncation or a missing file is detected.
_CONTENT_SIZE = 3 * 1024 * 1024

_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from adapter_bert.storage.atomic_io import atomic_write_bytes, atomic_write_text
    path, start, text = sys.argv[2], int(sys.argv[3]), sys.argv[4] == "text"
    size = %d

    def content(i):
      unit = b"version %%010d\\n" %% i
      return unit * (size // len(unit))

    print("ready", flush=True)
    i = start
    while True:
      i += 1
      if text:
        atomic_write_text(path, content(i).decode("ascii"))
      else:
        atomic_write_bytes(path, content(i))
""" % _CONTENT_SIZE)


def _expected(version):
  unit = b"version %010d\n" % version
  return unit * (_CONTENT_SIZE // len(unit))


def _version_of(path):
  """The version a file holds; fails the test on a torn or missing file."""
  assert os.path.exists(path), "the file disappeared"
  with open(path, "rb") as f:
    data = f.read()
  assert data.startswith(b"version "), "torn file: %r..." % data[:40]
  version = int(data[8:18])
  assert data == _expected(version), (
      "torn file: %d bytes, header version %d" % (len(data), version))
  return version


def test_sigkilled_writer_never_leaves_a_torn_file(tmp_path):
  rng = random.Random(20240607)
  path = str(tmp_path / "eval_results.txt")
  atomic_write_bytes(path, _expected(0))
  script = str(tmp_path / "writer.py")
  with open(script, "w") as f:
    f.write(_WRITER)
  version = 0
  kills_with_temporary = 0
  iterations = 30
  for it in range(iterations):
    mode = "text" if it % 2 else "bytes"
    proc = subprocess.Popen(
        [sys.executable, script, REPO_ROOT, path, str(version), mode],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(rng.uniform(0.0, 0.25))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    new_version = _version_of(path)
    assert new_version >= version  # Old or newer, never older.
    version = new_version
    leftovers = _leftovers(str(tmp_path), "eval_results.txt")
    if leftovers:
      kills_with_temporary += 1
      for name in leftovers:  # As a user could; they are never read.
        os.unlink(os.path.join(str(tmp_path), name))
  # The kills did land mid-write (a temporary file was left) and between
  # writes (versions advanced): both cases were exercised.
  assert kills_with_temporary >= 1
  assert version >= 1


_CHECKPOINT_WRITER = textwrap.dedent("""
    import os, sys, types
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import tensorflow as tf
    from adapter_bert.training import trainer as trainer_lib

    output_dir = sys.argv[2]
    start = int(sys.argv[3])
    names = ["layer_%d/kernel" % i for i in range(6)]
    variables = [tf.Variable(np.zeros((512, 1024), np.float32)) for _ in names]
    trainer = types.SimpleNamespace(
        output_dir=output_dir,
        global_step=tf.Variable(start, dtype=tf.int64),
        trainable=list(zip(names, variables)))
    trainer.checkpoint_tensors = lambda: dict(
        trainer.trainable, global_step=trainer.global_step)
    print("ready", flush=True)
    while True:
      step = int(trainer.global_step.assign_add(1).numpy())
      for v in variables:
        v.assign(tf.fill(v.shape, float(step)))
      trainer_lib.Trainer.save(trainer)
      if step == start + 1:
        print("saved", flush=True)
""")


def _check_checkpoints(output_dir):
  """Every checkpoint the state file names is complete and consistent."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  state = tf.train.get_checkpoint_state(output_dir)
  if state is None:
    return 0
  latest = state.model_checkpoint_path
  assert latest == tf.train.latest_checkpoint(output_dir)
  paths = list(state.all_model_checkpoint_paths)
  assert paths[-1] == latest
  for prefix in paths:
    reader = tf.train.load_checkpoint(prefix)
    step = int(reader.get_tensor("global_step"))
    assert prefix.endswith("model.ckpt-%d" % step)
    for i in range(6):
      value = reader.get_tensor("layer_%d/kernel" % i)
      assert value.shape == (512, 1024)
      assert (value == step).all(), "%s holds a mix of saves" % prefix
  return int(tf.train.load_checkpoint(latest).get_tensor("global_step"))


def test_sigkilled_checkpoint_saves_leave_a_loadable_latest(tmp_path):
  from adapter_bert.storage import checkpoint_io  # pylint: disable=g-import-not-at-top
  rng = random.Random(77)
  output_dir = str(tmp_path / "out")
  os.makedirs(output_dir)
  script = str(tmp_path / "ckpt_writer.py")
  with open(script, "w") as f:
    f.write(_CHECKPOINT_WRITER)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  step = 0
  for _ in range(3):
    proc = subprocess.Popen(
        [sys.executable, script, REPO_ROOT, output_dir, str(step)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    # Kill at a random moment once saving runs (after the first save).
    assert proc.stdout.readline().strip() == "saved"
    time.sleep(rng.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    new_step = _check_checkpoints(output_dir)
    assert new_step > step
    step = new_step
  assert step >= 1
  # TensorFlow's temporary files never lie beside the checkpoints: they are
  # in hidden folders, which the next save removes once their writer is
  # dead, as it removes a killed state-file write's temporary file.
  names = os.listdir(output_dir)
  assert not [n for n in names if "tempstate" in n]
  assert all(n == "checkpoint" or n.startswith("model.ckpt-")
             or n.startswith("." + checkpoint_io.TMP_DIR_PREFIX)
             or (n.startswith(".checkpoint.") and n.endswith(".tmp"))
             for n in names), names
  checkpoint_io.remove_stale_temporaries(output_dir)
  assert all(n == "checkpoint" or n.startswith("model.ckpt-")
             for n in os.listdir(output_dir)), os.listdir(output_dir)
  assert _check_checkpoints(output_dir) == step


def test_overwriting_a_prefix_never_pairs_new_data_with_old_index(tmp_path):
  """save_checkpoint removes the old index before moving new data in."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from adapter_bert.storage import checkpoint_io  # pylint: disable=g-import-not-at-top
  prefix = str(tmp_path / "model.ckpt-4")
  checkpoint_io.save_checkpoint(prefix, {"w": np.full((3,), 1.0, np.float32)})
  calls = []
  real_rename = tf.io.gfile.rename

  def spy_rename(src, dst, overwrite=False):
    calls.append((os.path.basename(dst), os.path.exists(prefix + ".index")))
    return real_rename(src, dst, overwrite=overwrite)

  tf.io.gfile.rename = spy_rename
  try:
    checkpoint_io.save_checkpoint(prefix, {"w": np.full((3,), 2.0, np.float32)})
  finally:
    tf.io.gfile.rename = real_rename
  # Data moved in while no index existed; the index came last.
  assert calls == [("model.ckpt-4.data-00000-of-00001", False),
                   ("model.ckpt-4.index", False)]
  assert tf.train.load_checkpoint(prefix).get_tensor("w").tolist() == [2.0] * 3
  assert sorted(os.listdir(str(tmp_path))) == [
      "model.ckpt-4.data-00000-of-00001", "model.ckpt-4.index"]


def test_remove_stale_temporaries_keeps_live_writers(tmp_path):
  from adapter_bert.storage import checkpoint_io  # pylint: disable=g-import-not-at-top
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True).stdout.strip()
  prefix = "." + checkpoint_io.TMP_DIR_PREFIX
  mine = str(os.getpid())
  names = {"dead": prefix + dead + "-0123abcd",
           "mine": prefix + mine + "-0123abcd",
           "state_dead": ".checkpoint.%s-abc123.tmp" % dead,
           "state_mine": ".checkpoint.%s-abc123.tmp" % mine,
           "other_dead": ".eval_results.txt.%s-abc123.tmp" % dead,
           # Without a pid its owner cannot be told: kept.
           "unknown": ".checkpoint.abc123.tmp"}
  for key, name in names.items():
    if key in ("dead", "mine"):
      os.makedirs(str(tmp_path / name / "sub"))
    else:
      (tmp_path / name).write_text("x")
  (tmp_path / "model.ckpt-3.index").write_text("x")
  checkpoint_io.remove_stale_temporaries(str(tmp_path))
  assert sorted(os.listdir(str(tmp_path))) == sorted(
      [names["mine"], names["state_mine"], names["unknown"],
       "model.ckpt-3.index"])


def test_remove_orphans_removes_dead_writers_files_only(tmp_path):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True).stdout.strip()
  target = str(tmp_path / "train.tf_record")
  for name in ("train.tf_record.tmp-" + dead,
               "train.tf_record.tmp-%d" % os.getpid(),
               "train.tf_record.tmp-notapid",
               "dev.tf_record.tmp-" + dead,
               "train.tf_record"):
    (tmp_path / name).write_text("x")
  assert atomic_io.remove_orphans(target) == ["train.tf_record.tmp-" + dead]
  assert sorted(os.listdir(str(tmp_path))) == sorted([
      "train.tf_record.tmp-%d" % os.getpid(), "train.tf_record.tmp-notapid",
      "dev.tf_record.tmp-" + dead, "train.tf_record"])


def test_killed_feature_conversion_leaves_nothing_after_the_next_run(tmp_path):
  """A conversion killed mid-write leaves `<record>.tmp-<pid>`; the next
  conversion of that record removes it and writes the record."""
  from adapter_bert.data import input_pipeline  # pylint: disable=g-import-not-at-top
  import tiny_fixtures  # pylint: disable=g-import-not-at-top
  from adapter_bert.text import tokenization  # pylint: disable=g-import-not-at-top
  from adapter_bert.data import glue_processors  # pylint: disable=g-import-not-at-top
  job = tiny_fixtures.make_job(str(tmp_path / "job"))
  processor = glue_processors.get_processor("MRPC")
  examples = processor.get_examples("dev", job["data_dir"])
  out = tmp_path / "features"
  out.mkdir()
  path = str(out / "dev.tf_record")
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True).stdout.strip()
  (out / ("dev.tf_record.tmp-" + dead)).write_bytes(b"half a record")
  tokenizer = tokenization.InGraphTokenizer(job["vocab_file"],
                                            do_lower_case=True)
  count = input_pipeline.write_feature_file(
      examples, processor.get_labels(), False, 24, tokenizer, path)
  assert count == len(examples) > 0
  assert os.listdir(str(out)) == ["dev.tf_record"]
