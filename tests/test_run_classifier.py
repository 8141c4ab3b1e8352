"""run_classifier.py end to end, training invariants, and distribution."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from adapter_bert.storage import checkpoint_io
import tiny_fixtures as fx

HERE = os.path.dirname(os.path.abspath(__file__))
FAST = {"jit_compile": False, "bucket_by_length": False}


def test_cli_train_eval_predict_end_to_end(tmp_path):
  flags = fx.make_job(tmp_path)
  flags.update(FAST, do_train=True, do_eval=True, do_predict=True)
  result = fx.run_cli(flags)
  assert result.returncode == 0, result.stderr[-3000:]
  out = flags["output_dir"]
  # The original's eval output, printed and written.
  for key in ("eval_accuracy", "eval_loss", "global_step", "loss", "eval_f1"):
    assert "  %s = " % key in result.stdout
  results = fx.read_eval_results(out)
  assert results["global_step"] == 16  # int(64 / 8 * 2)
  assert 0.0 <= results["eval_accuracy"] <= 1.0 and results["eval_loss"] > 0
  # Progress lines: step, loss, learning rate, examples/s, time left.
  assert "step 16/16 loss" in result.stderr and "examples/s" in result.stderr
  assert " left" in result.stderr
  # One probability line per test example, and the GLUE submission file.
  lines = open(os.path.join(out, "test_results.tsv")).read().splitlines()
  assert len(lines) == 12
  for line in lines:
    probs = [float(x) for x in line.split("\t")]
    assert len(probs) == 2 and abs(sum(probs) - 1.0) < 1e-5
  submission = open(os.path.join(out, "MRPC.tsv")).read().splitlines()
  assert submission[0] == "index\tprediction"
  assert [row.split("\t")[0] for row in submission[1:]] == [str(i) for i in range(12)]
  assert all(row.split("\t")[1] in ("0", "1") for row in submission[1:])
  predicted = [int(np.argmax([float(x) for x in l.split("\t")])) for l in lines]
  assert predicted == [int(row.split("\t")[1]) for row in submission[1:]]
  # Configs, checkpoints (with Adam slots and step), summaries.
  for name in ("bert_config.json", "adapter_config.json", "run_config.json"):
    assert os.path.exists(os.path.join(out, name))
  assert json.load(open(os.path.join(out, "run_config.json")))["flags"]["task_name"] == "MRPC"
  latest = tf.train.latest_checkpoint(out)
  assert latest.endswith("model.ckpt-16")
  names = tf.train.load_checkpoint(latest).get_variable_to_shape_map()
  assert "global_step" in names
  assert "bert/encoder/layer_0/output/adapters/weights1/adam_m" in names
  assert "bert/encoder/layer_0/output/dense/kernel/adam_m" not in names
  assert tf.train.load_checkpoint(latest).get_tensor("global_step") == 16
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
  assert os.listdir(os.path.join(out, "eval"))

  # Rerunning the finished command does not train again; eval agrees.
  again = fx.run_cli(dict(flags, do_predict=False))
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Training already complete at step 16" in again.stderr
  assert fx.read_eval_results(out) == results

  # The base checkpoint + the adapter directory, in a fresh output_dir and
  # with no --adapter_size (the directory's size is used, not the default
  # 64), evaluate to the same figures.
  assert flags["adapter_size"] != 64
  reloaded = {k: v for k, v in flags.items() if k != "adapter_size"}
  reloaded.update(do_train=False, do_predict=False,
                  output_dir=str(tmp_path / "from_adapter"),
                  adapter_checkpoint=os.path.join(out, "adapter"))
  from_adapter = fx.run_cli(reloaded)
  assert from_adapter.returncode == 0, from_adapter.stderr[-3000:]
  got = fx.read_eval_results(reloaded["output_dir"])
  for key in ("eval_accuracy", "eval_loss", "eval_f1"):
    assert abs(got[key] - results[key]) <= 1e-6, (key, got, results)
  # AdapterDrop at inference: layer 0 without its LoRA, another loss.
  reloaded.update(output_dir=str(tmp_path / "skipped"), skip_layers="0")
  skipped = fx.run_cli(reloaded)
  assert skipped.returncode == 0, skipped.stderr[-3000:]
  assert "without the adapters of layers 0" in skipped.stderr
  assert fx.read_eval_results(reloaded["output_dir"])["eval_loss"] != got[
      "eval_loss"]
  assert json.load(open(os.path.join(reloaded["output_dir"], "run_config.json"))
                   )["flags"]["adapter_size"] == flags["adapter_size"]


def test_use_tpu_without_a_tpu_is_a_clear_error(tmp_path):
  flags = fx.make_job(tmp_path)
  flags.update(do_train=True, use_tpu=True, tpu_name="no-such-tpu",
               tpu_zone="us-central1-b", gcp_project="no-project")
  result = fx.run_cli(flags, timeout=400)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  error = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(error) == 1 and "no-such-tpu" in error[0]


def tiny_trainer(jit_compile, train_mode="adapters", seed=0, dropout=0.1):
  model = fx.tiny_classifier(dropout=dropout)
  trainer = fx.tiny_trainer(model, train_mode, seed=seed,
                            jit_compile=jit_compile)
  rng = np.random.default_rng(seed + 1)
  data = {"input_ids": rng.integers(1, 40, (32, 10)).astype(np.int32),
          "input_mask": np.ones((32, 10), np.int32),
          "segment_ids": np.zeros((32, 10), np.int32),
          "label_ids": rng.integers(0, 2, 32).astype(np.int32)}
  make = lambda start: tf.data.Dataset.from_tensor_slices(data).repeat().batch(
      8, drop_remainder=True).skip(start)
  return model, trainer, make


def test_only_trainable_variables_change(tmp_path):
  model, trainer, make = tiny_trainer(jit_compile=True)
  trainer.output_dir = str(tmp_path)
  trainable = {n for n, _ in trainer.trainable}
  before = {n: v.numpy().copy() for n, v in checkpoint_io.checkpoint_name_map(model).items()}
  trainer.train(make, 6, iterations_per_loop=3, save_checkpoints_steps=100)
  after = {n: v.numpy() for n, v in checkpoint_io.checkpoint_name_map(model).items()}
  frozen = [n for n in before if n not in trainable]
  assert "bert/pooler/dense/kernel" in frozen and "bert/embeddings/word_embeddings" in frozen
  for name in frozen:
    assert np.array_equal(before[name], after[name]), name  # bit for bit
  changed = [n for n in trainable if not np.array_equal(before[n], after[n])]
  assert sorted(changed) == sorted(trainable)
  # Adam slots exist only for the trainable variables.
  slots = trainer.optimizer.slot_variables()
  assert {s.rsplit("/", 1)[0] for s in slots} == trainable


def test_xla_and_plain_steps_agree(tmp_path):
  # With dropout: the masks are a hash of the seed and the element index,
  # the same under XLA and with the regular kernels, so a run may resume
  # with the other --jit_compile.
  results = []
  for jit in (True, False):
    model, trainer, make = tiny_trainer(jit_compile=jit, dropout=0.1)
    trainer.output_dir = str(tmp_path / str(jit))
    trainer.train(make, 6, iterations_per_loop=6, save_checkpoints_steps=100)
    results.append({n: v.numpy() for n, v in checkpoint_io.checkpoint_name_map(model).items()})
  # Float rounding differs (XLA fuses differently) and Adam divides by the
  # gradient's running scale, so a component whose gradient is near 0 moves
  # by noise x learning rate (5e-2): 1e-4 allows that; other dropout masks
  # would move weights by ~1e-2.
  for name in results[0]:
    np.testing.assert_allclose(results[0][name], results[1][name], atol=1e-4,
                               err_msg=name)


def _worker(strategy, out, env=None):
  return subprocess.Popen(
      [sys.executable, os.path.join(HERE, "distributed_worker.py"),
       "--strategy=" + strategy, "--out=" + out],
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _load(path):
  return dict(np.load(path))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_mirrored_and_multi_worker_match_one_device(tmp_path):
  one = str(tmp_path / "one.npz")
  mirrored = str(tmp_path / "mirrored.npz")
  procs = [_worker("one", one), _worker("mirrored", mirrored)]
  for p in procs:
    output, _ = p.communicate(timeout=600)
    assert p.returncode == 0, output[-3000:]
  reference = _load(one)
  got = _load(mirrored)
  moved = max(np.max(np.abs(reference[k] - got[k])) for k in reference)
  assert moved <= 1e-5

  # Two workers on 127.0.0.1, one process each, MultiWorkerMirroredStrategy.
  ports = [_free_port(), _free_port()]
  cluster = {"worker": ["127.0.0.1:%d" % p for p in ports]}
  outs = [str(tmp_path / ("worker%d.npz" % i)) for i in range(2)]
  workers = [
      _worker("multi_worker", outs[i], env={"TF_CONFIG": json.dumps(
          {"cluster": cluster, "task": {"type": "worker", "index": i}})})
      for i in range(2)]
  for p in workers:
    output, _ = p.communicate(timeout=600)
    assert p.returncode == 0, output[-3000:]
  for path in outs:
    got = _load(path)
    for name in reference:
      np.testing.assert_allclose(got[name], reference[name], atol=1e-5,
                                 err_msg=name)
  # And training did move the adapters (the comparison is not vacuous).
  initial_adapter = "bert__encoder__layer_0__output__adapters__weights1"
  assert initial_adapter in reference


def test_cli_trains_an_adapter_method_by_name_and_reloads_it(tmp_path):
  # --adapter_config names the method (AdapterHub's "lora": rank 8 on the
  # query and value projections); only its weights and the head train, the
  # adapter directory records the method, and loading it back (no
  # --adapter_config: the directory's) evaluates to the same figures.
  flags = fx.make_job(tmp_path)
  # With AdapterDrop's recipe on (2 layers: k is always 0, the plumbing).
  flags.update(FAST, do_train=True, do_eval=True, adapter_config="lora",
               adapter_size=None, adapter_drop=True)
  result = fx.run_cli(flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "--adapter_config=lora: lora" in result.stderr
  assert "k uniform in 0..0" in result.stderr
  out = flags["output_dir"]
  results = fx.read_eval_results(out)
  names = tf.train.load_checkpoint(tf.train.latest_checkpoint(
      out)).get_variable_to_shape_map()
  slots = sorted(n[:-len("/adam_m")] for n in names if n.endswith("/adam_m"))
  assert slots == sorted(
      ["bert/encoder/layer_%d/attention/self/%s/lora_%s" % (i, p, m)
       for i in range(2) for p in ("query", "value") for m in "AB"]
      + ["output_weights", "output_bias"])
  stored = json.load(open(os.path.join(out, "adapter", "adapter_config.json")))
  assert stored["kind"] == "lora" and stored["r"] == 8
  reloaded = {k: v for k, v in flags.items()
              if k not in ("adapter_config", "adapter_drop")}
  reloaded.update(do_train=False, output_dir=str(tmp_path / "from_adapter"),
                  adapter_checkpoint=os.path.join(out, "adapter"))
  again = fx.run_cli(reloaded)
  assert again.returncode == 0, again.stderr[-3000:]
  got = fx.read_eval_results(reloaded["output_dir"])
  for key in ("eval_accuracy", "eval_loss", "eval_f1"):
    assert abs(got[key] - results[key]) <= 1e-6, (key, got, results)
  # AdapterDrop at inference: layer 0 without its LoRA, another loss.
  reloaded.update(output_dir=str(tmp_path / "skipped"), skip_layers="0")
  skipped = fx.run_cli(reloaded)
  assert skipped.returncode == 0, skipped.stderr[-3000:]
  assert "without the adapters of layers 0" in skipped.stderr
  assert fx.read_eval_results(reloaded["output_dir"])["eval_loss"] != got[
      "eval_loss"]


def test_cli_trains_layer_attention_on_frozen_activations(tmp_path):
  # --frozen_activations: the frozen encoder's states are computed once,
  # stored under output_dir/features, and read at every step.
  flags = fx.make_job(tmp_path)
  config = tmp_path / "layer_attention.json"
  config.write_text(json.dumps({"kind": "layer_attention",
                                "reduced_size": 4}))
  flags.update(FAST, do_train=True, do_eval=True, adapter_config=str(config),
               adapter_size=None, frozen_activations=True)
  result = fx.run_cli(flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Frozen activations: computed 64 examples" in result.stderr
  stored = [f for f in os.listdir(os.path.join(flags["output_dir"],
                                               "features"))
            if f.startswith("frozen-") and f.endswith(".npy")]
  assert len(stored) == 1
  assert fx.read_eval_results(flags["output_dir"])["global_step"] == 16


def test_cli_trains_on_a_hugging_face_base(tmp_path):
  # --init_checkpoint a Hugging Face directory, --bert_config_file its
  # config.json (the tiny BERT AdapterHub wrote for the interop tests).
  hf = os.path.join(fx.REPO_ROOT, "tests", "data", "adapterhub_tiny", "hf")
  flags = fx.make_job(tmp_path)
  flags.update(FAST, do_train=True, do_eval=True, init_checkpoint=hf,
               bert_config_file=os.path.join(hf, "config.json"),
               vocab_file=os.path.join(hf, "vocab.txt"), num_train_epochs=1)
  result = fx.run_cli(flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Restored" in result.stderr and "from " + hf in result.stderr
  assert fx.read_eval_results(flags["output_dir"])["global_step"] == 8


def test_your_own_files_train_as_the_glue_task_on_the_same_rows(tmp_path):
  # The tiny MRPC files rewritten with named columns (another order) as CSV,
  # TSV and JSON Lines: the same examples as --task_name=MRPC; the CSV run
  # gives the same dev figures.
  import csv as csv_lib  # pylint: disable=g-import-not-at-top
  from adapter_bert.data import glue_processors, user_data  # pylint: disable=g-import-not-at-top
  flags = fx.make_job(tmp_path)
  flags.update(FAST, do_train=True, do_eval=True, num_train_epochs=1)
  mrpc = glue_processors.get_processor("MRPC")
  for ext in ("csv", "tsv", "jsonl"):
    table_dir = tmp_path / ext
    table_dir.mkdir()
    for split, name in (("train", "train.tsv"), ("dev", "dev.tsv")):
      rows = open(os.path.join(flags["data_dir"], name),
                  encoding="utf-8").read().splitlines()[1:]
      records = [{"quality": r.split("\t")[0], "s1": r.split("\t")[3],
                  "s2": r.split("\t")[4]} for r in rows]
      path = table_dir / ("%s.%s" % (split, ext))
      with open(path, "w", encoding="utf-8", newline="") as f:
        if ext == "jsonl":
          f.write("".join(json.dumps(r) + "\n" for r in records))
        else:
          writer = csv_lib.DictWriter(f, ["s1", "s2", "quality"],
                                      delimiter="\t" if ext == "tsv" else ",")
          writer.writeheader()
          writer.writerows(records)
    table = user_data.TableProcessor("s1", "s2", "quality", str(table_dir))
    assert table.get_labels() == mrpc.get_labels()
    for split in ("train", "dev"):
      got = table.get_examples(split)
      want = mrpc.get_examples(split, flags["data_dir"])
      assert [(e.text_a, e.text_b, e.label) for e in got] == [
          (e.text_a, e.text_b, e.label) for e in want], (ext, split)
  run = fx.run_cli(dict(flags, output_dir=str(tmp_path / "mrpc")))
  assert run.returncode == 0, run.stderr[-3000:]
  table = dict(flags, task_name="csv", data_dir=str(tmp_path / "csv"),
               text_a_column="s1", text_b_column="s2",
               label_column="quality", output_dir=str(tmp_path / "table_out"))
  result = fx.run_cli(table)
  assert result.returncode == 0, result.stderr[-3000:]
  got = fx.read_eval_results(table["output_dir"])
  want = fx.read_eval_results(str(tmp_path / "mrpc"))
  for key in ("eval_accuracy", "eval_loss"):
    assert abs(got[key] - want[key]) <= 1e-6, (key, got, want)
  # A column that is not there: one line naming the file and the column.
  bad = fx.run_cli(dict(table, label_column="gold",
                        output_dir=str(tmp_path / "bad")))
  assert bad.returncode == 1
  assert "no column 'gold'" in bad.stderr and "train.csv" in bad.stderr
