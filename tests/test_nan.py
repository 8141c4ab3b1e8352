"""Numerical faults: an exploding run stops, names the step, keeps a good checkpoint.

A learning rate of 1e12 on the tiny model makes the trained weights NaN/Inf
within a few steps. Two runs (concurrently) cover both places this is caught:

  * checkpoints every 2 steps: the weights blow up between two saves, the
    next step's loss is NaN, and training stops naming that step;
  * checkpoints every step: the save after the blow-up finds non-finite
    weights and refuses to write them.

Either way: exit status 1, one `error:` line naming the step and the kept
checkpoint, no traceback, the `checkpoint` state file names that checkpoint,
and it loads (TensorFlow's reader and `checkpoint_io.load_checkpoint` into a
fresh model) with every value finite.
"""

import concurrent.futures
import os
import re

import numpy as np
import pytest

import test_bad_input as bad_input
import tiny_fixtures

RUNS = {
    # name: (save_checkpoints_steps, pattern of the message)
    "loss_nan": (2, r"training stopped: the loss became (nan|inf|-inf) at "
                    r"step (\d+) \(learning rate [^)]*\); the last good "
                    r"checkpoint (\S+) is kept$"),
    "weights_nan": (1, r"training stopped: \d+ trained weight\(s\) became NaN "
                       r"or Inf at step (\d+), e\.g\. \S+ \(try a lower "
                       r"--learning_rate\); the last good checkpoint (\S+) "
                       r"is kept$"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("nan"))
  base = tiny_fixtures.make_job(root, num_hidden_layers=1)

  def run(name):
    flags = dict(base, output_dir=os.path.join(root, name), do_train=True,
                 jit_compile=False, bucket_by_length=False,
                 learning_rate=1e12, save_checkpoints_steps=RUNS[name][0],
                 log_steps=1, deterministic=True, seed=3)
    return name, tiny_fixtures.run_cli(flags), flags

  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    out = {name: (proc, flags) for name, proc, flags in pool.map(run, RUNS)}
  return out


def _step_of(path):
  return int(re.search(r"model\.ckpt-(\d+)$", path).group(1))


@pytest.mark.parametrize("name", sorted(RUNS))
def test_nan_stops_with_a_clear_message(runs, name):
  proc, flags = runs[name]
  report = "exit %s\n%s\n%s" % (proc.returncode, proc.stdout,
                                proc.stderr[-4000:])
  assert proc.returncode == 1, report
  assert "Traceback" not in proc.stdout + proc.stderr, report
  messages = [line for line in proc.stderr.splitlines()
              if line.strip() and not bad_input._LOG_LINE.match(line)]
  assert len(messages) == 1 and messages[0].startswith("error: "), report
  m = re.search(RUNS[name][1], messages[0])
  assert m, messages[0]
  bad_step = int(m.group(m.lastindex - 1))
  kept = m.group(m.lastindex)
  # The step named is the one the progress log did not reach.
  logged = [int(s) for s in re.findall(r"\] step (\d+)/\d+ ", proc.stderr)]
  assert logged, report
  if name == "loss_nan":
    assert bad_step == max(logged) + 1, (logged, bad_step)
  else:
    # The step ran (its loss was still finite), then its save was refused.
    assert bad_step == max(logged), (logged, bad_step)
  output_dir = flags["output_dir"]
  assert kept == os.path.join(output_dir, "model.ckpt-%d" % _step_of(kept))
  assert _step_of(kept) < bad_step
  # Nothing was saved at or after the bad step; no adapter was exported.
  saved = [int(n.split("-")[1].split(".")[0]) for n in os.listdir(output_dir)
           if n.startswith("model.ckpt-")]
  assert saved and max(saved) == _step_of(kept), sorted(saved)
  assert not os.path.exists(os.path.join(output_dir, "adapter"))


@pytest.mark.parametrize("name", sorted(RUNS))
def test_last_good_checkpoint_loads_and_is_finite(runs, name):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from adapter_bert import adapters  # pylint: disable=g-import-not-at-top
  from adapter_bert.storage import checkpoint_io  # pylint: disable=g-import-not-at-top
  from adapter_bert.model import modeling  # pylint: disable=g-import-not-at-top
  proc, flags = runs[name]
  kept = re.search(r"the last good checkpoint (\S+) is kept", proc.stderr)
  assert kept, proc.stderr[-3000:]
  kept = kept.group(1)
  output_dir = flags["output_dir"]
  # The state file points at it.
  assert tf.train.latest_checkpoint(output_dir) == kept
  state = tf.train.get_checkpoint_state(output_dir)
  assert state.model_checkpoint_path == kept
  # Every value in it is finite (model, Adam slots, step).
  reader = tf.train.load_checkpoint(kept)
  names = reader.get_variable_to_shape_map()
  assert int(reader.get_tensor("global_step")) == _step_of(kept)
  for n in names:
    value = reader.get_tensor(n)
    if value.dtype.kind == "f":
      assert np.isfinite(value).all(), n
  # And it loads into a fresh model of the run's configuration.
  config = modeling.BertConfig.from_json_file(flags["bert_config_file"])
  model = modeling.BertClassifier(
      config, 2, adapters.AdapterConfig(size=flags["adapter_size"]))
  restored, fresh = checkpoint_io.load_checkpoint(model, kept)
  assert fresh == [] and len(restored) == len(
      checkpoint_io.checkpoint_name_map(model))
  for variable in model.weights:
    assert np.isfinite(variable.numpy()).all(), variable.name
  # The trained adapters are the ones in the checkpoint (not a fresh init).
  name_map = checkpoint_io.checkpoint_name_map(model)
  adapter = [n for n in name_map if "/adapters/" in n][0]
  np.testing.assert_array_equal(name_map[adapter].numpy(),
                                reader.get_tensor(adapter))
