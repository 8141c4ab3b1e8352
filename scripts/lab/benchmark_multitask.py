"""Times multi-task prediction: one predict_all call vs N separate calls.

N adapter directories (random adapter, LayerNorm and head values; the timing
does not depend on training) are written on a real base checkpoint and
loaded onto one `multitask.MultiTaskModel`. For each batch size, the script
times

  stacked:  one `predict_all(features, stack_tasks=True)` call: the shared
            dense layers run once on the task-stacked batch;
  per-task: one `predict_all(features, stack_tasks=False)` call: one graph,
            the embedding lookup shared, each task's blocks side by side;
  separate: N `predict(task, features)` calls on the same model (the base is
            not reloaded; each call runs the whole encoder for one task);

checks that they give the same outputs (max abs difference), and prints one
table row per batch size (speedup = separate / the faster one-call way),
the file sizes of the adapters and of the base, and a JSON summary. Medians
over --repeats runs after --warmup runs, the ways alternating.

  python scripts/lab/benchmark_multitask.py \
    --bert_dir=../shared/bert/minilm_l6_h384_uncased --num_tasks=3
"""

import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
from adapter_bert.compute import tf_startup  # noqa: E402,F401  (before TensorFlow: oneDNN kernels)
import tensorflow as tf  # noqa: E402

from adapter_bert.model import adapter_io  # noqa: E402
from adapter_bert import adapters  # noqa: E402
from adapter_bert.storage import checkpoint_io  # noqa: E402
from adapter_bert.data import glue_processors  # noqa: E402
from adapter_bert.model import modeling  # noqa: E402
from adapter_bert.model import multitask  # noqa: E402
from adapter_bert.training import run_config  # noqa: E402

flags.DEFINE_string("bert_dir", None,
                    "Directory with bert_config.json and bert_model.ckpt.")
flags.DEFINE_integer("num_tasks", 3, "Number of adapter tasks.")
flags.DEFINE_integer("adapter_size", 64, "Adapter size of every task.")
flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "Batch sizes to time.")
flags.DEFINE_integer("seq_length", 128, "Sequence length of the batches.")
flags.DEFINE_integer("warmup", 2, "Untimed runs per way and batch size.")
flags.DEFINE_integer("repeats", 7, "Timed runs per way and batch size.")
flags.DEFINE_bool("jit_compile", False, "Compile the forward with XLA.")
flags.DEFINE_integer("seed", 0, "Seed of the features and adapter values.")

FLAGS = flags.FLAGS

TASKS = ("mrpc", "rte", "sst-2", "cola", "qnli", "mnli", "sts-b", "qqp")


def write_adapters(config, base, directory, num_tasks, adapter_size, seed):
  """Writes `num_tasks` adapter directories with random trained values."""
  dirs = []
  rng = np.random.default_rng(seed)
  for i in range(num_tasks):
    task = TASKS[i % len(TASKS)]
    processor = glue_processors.get_processor(task)
    model = modeling.BertClassifier(config, processor.num_labels,
                                    adapters.AdapterConfig(size=adapter_size))
    model.load_base_checkpoint(base)
    trainable = modeling.set_train_mode(model, "adapters")
    for name, variable in trainable:
      if "LayerNorm" in name:
        continue
      variable.assign(rng.normal(0.0, 0.02, variable.shape).astype(np.float32))
    cfg = run_config.RunConfig(task_name=task, output_dir=directory,
                               bert_config_file="", vocab_file="",
                               max_seq_length=FLAGS.seq_length)
    path = os.path.join(directory, "%s_%d" % (task, i))
    adapter_io.save_adapter(model, trainable, path, model.adapter_config, cfg,
                            config, processor, base)
    dirs.append(("%s_%d" % (processor.name, i), path))
    del model
  return dirs


def file_sizes(model, dirs, tmp):
  """Bytes of each adapter directory and of the base saved the same way."""
  prefix = os.path.join(tmp, "base", "bert_model.ckpt")
  checkpoint_io.save_checkpoint(prefix, checkpoint_io.base_tensors(
      model.task_view(model.branches[0])))
  return {"base": adapter_io.directory_bytes(os.path.dirname(prefix)),
          "adapters": {name: adapter_io.directory_bytes(path)
                       for name, path in dirs}}


def random_features(batch, seq, vocab_size, rng):
  lengths = rng.integers(seq // 2, seq + 1, batch)
  mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
  return {
      "input_ids": (rng.integers(1000, vocab_size, (batch, seq)) * mask
                    ).astype(np.int32),
      "input_mask": mask,
      "segment_ids": ((np.arange(seq)[None, :] >= lengths[:, None] // 2)
                      * mask).astype(np.int32),
  }


def main(argv):
  del argv
  if not FLAGS.bert_dir:
    raise app.UsageError("--bert_dir is required")
  config = modeling.BertConfig.from_json_file(
      os.path.join(FLAGS.bert_dir, "bert_config.json"))
  base = os.path.join(FLAGS.bert_dir, "bert_model.ckpt")
  rng = np.random.default_rng(FLAGS.seed)
  with tempfile.TemporaryDirectory() as tmp:
    dirs = write_adapters(config, base, tmp, FLAGS.num_tasks,
                          FLAGS.adapter_size, FLAGS.seed)
    model = multitask.build_from_adapter_dirs(config, base, dirs,
                                              jit_compile=FLAGS.jit_compile)
    sizes = file_sizes(model, dirs, tmp)
  print("base checkpoint (saved as the adapters are): %d bytes" % sizes["base"])
  for name, size in sizes["adapters"].items():
    print("adapter %s: %d bytes (%.2f%% of the base)"
          % (name, size, 100.0 * size / sizes["base"]))
  names = model.task_names
  rows = []
  print("device: %s, threads: %s, tasks: %d, seq: %d, jit: %s" % (
      "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
      os.cpu_count(), len(names), FLAGS.seq_length, FLAGS.jit_compile))
  print("%6s %13s %15s %14s %9s %11s" % (
      "batch", "stacked (ms)", "per-task (ms)", "separate (ms)", "speedup",
      "max |diff|"))
  for batch in [int(b) for b in FLAGS.batch_sizes]:
    features = random_features(batch, FLAGS.seq_length, config.vocab_size, rng)
    features = {k: tf.constant(v) for k, v in features.items()}
    ways = {
        "stacked": lambda: {k: v.numpy() for k, v in model.predict_all(
            features, stack_tasks=True).items()},
        "per_task": lambda: {k: v.numpy() for k, v in model.predict_all(
            features, stack_tasks=False).items()},
        "separate": lambda: {n: model.predict(n, features).numpy()
                             for n in names},
    }
    for _ in range(FLAGS.warmup):
      for run in ways.values():
        run()
    times = {way: [] for way in ways}
    cpu_times = {way: [] for way in ways}
    outputs = {}
    for _ in range(FLAGS.repeats):
      for way, run in ways.items():  # Alternating: the same load for all.
        t0, c0 = time.perf_counter(), time.process_time()
        outputs[way] = run()
        times[way].append(time.perf_counter() - t0)
        cpu_times[way].append(time.process_time() - c0)
    diff = max(float(np.max(np.abs(outputs[way][n] - outputs["separate"][n])))
               for way in ("stacked", "per_task") for n in names)
    row = {"batch": batch, "max_abs_diff": diff}
    for way in ways:
      row[way + "_ms"] = float(np.median(times[way])) * 1e3
      row[way + "_cpu_ms"] = float(np.median(cpu_times[way])) * 1e3
    best = min(row["stacked_ms"], row["per_task_ms"])
    row["speedup"] = row["separate_ms"] / best
    rows.append(row)
    print("%6d %13.1f %15.1f %14.1f %8.2fx %11.2e" % (
        batch, row["stacked_ms"], row["per_task_ms"], row["separate_ms"],
        row["speedup"], diff))
    print("%6s %13.1f %15.1f %14.1f   (CPU time of this process, ms)" % (
        "", row["stacked_cpu_ms"], row["per_task_cpu_ms"],
        row["separate_cpu_ms"]))
  print(json.dumps({"tasks": names, "seq_length": FLAGS.seq_length,
                    "jit_compile": FLAGS.jit_compile, "sizes": sizes,
                    "rows": rows}))


if __name__ == "__main__":
  app.run(main)
