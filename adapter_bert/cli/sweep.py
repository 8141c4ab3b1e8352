# coding=utf-8
"""The hyperparameter sweep of adapter tuning on GLUE, and its results table.

Houlsby et al. (2019), "Parameter-Efficient Transfer Learning for NLP", tune
adapters on each GLUE task over a grid of learning rates, epoch counts and
adapter sizes, and keep the best setting on the dev set. This script runs
that grid (from `configs/paper_sweep.json`, or another --sweep_config),
once per seed, with one `run_classifier.py` process per grid point
(scripts/sweep.py is its command line):

  <output_dir>/<task>/lr<lr>_ep<epochs>_m<size>_seed<seed>/   e.g.
  <output_dir>/MRPC/lr3e-04_ep3_m64_seed1/

and collects the dev results in

  <output_dir>/results.tsv   one row per run: task, learning_rate, epochs,
                             adapter_size, seed, status (ok, failed or
                             pending), main_metric (its name), main_value,
                             every eval_* metric of the runs, wall_s,
                             run_dir and message (a failure's error line);
  <output_dir>/results.md    per task, a table of the settings (learning
                             rate, epochs, adapter size) with the mean and
                             sample standard deviation over seeds of the
                             main metric (and of the other reported ones), n
                             (seeds finished) and failed runs, best first;
                             then "Best setting per task".

Both files are written atomically, first after the finished runs are found
and again after every run, so partial results can be read while the sweep
goes on. The main metric of a task (see `main_metric`) is the one GLUE
reports: Matthews correlation for CoLA, Spearman correlation for STS-B
(Pearson shown beside it), accuracy for the others (F1 shown beside it for
MRPC and QQP; the setting is still chosen on accuracy).

Resuming: a run whose output_dir holds eval_results.txt is done and is not
run again, so rerunning an interrupted sweep goes on where it stopped; a run
killed midway restarts from its own checkpoints (run_classifier.py resumes).
A run that fails (non-zero exit) is recorded as failed with the last line of
its stderr and the sweep goes on; failed runs are tried again by the next
sweep. Each run's stdout and stderr are kept in
`<output_dir>/logs/<task>/<run>.out` and `.err`, and the command, exit status
and wall time in `<run>.json`.

Every input is checked before the first run (the sweep config, the task
names, the GLUE task folders with their train and dev files, --bert_dir's
vocab.txt, bert_config.json and bert_model.ckpt); a problem is one
`error: ...` line on stderr, exit status 1, and nothing is run or written.

Exit status: 0 when no run failed (runs left for later by --max_runs
included), 1 on bad input, 2 when a run failed, 130 when interrupted.

Usage: scripts/sweep.py.
"""

import dataclasses
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

from absl import flags

from adapter_bert.storage import atomic_io
from adapter_bert.data import glue_metrics
from adapter_bert.data import glue_processors
from adapter_bert.cli import common as cli
from adapter_bert.errors import UserError

# The checkout this package sits in (its run_classifier.py and configs/).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# Each run: the card's run_classifier.py where the package is a checkout's,
# else the installed command line's module.
RUN_CLASSIFIER = (
    [os.path.join(REPO_ROOT, "run_classifier.py")]
    if os.path.isfile(os.path.join(REPO_ROOT, "run_classifier.py"))
    else ["-m", "adapter_bert.cli.classifier"])
DEFAULT_SWEEP_CONFIG = os.path.join(REPO_ROOT, "configs", "paper_sweep.json")

FLAGS = flags.FLAGS


def define_flags():
  """Defines the script's flags on FLAGS.

  Called when the script runs, not on import, so that a test can import this
  module beside other scripts that define flags of the same names.
  """
  flags.DEFINE_string(
      "sweep_config", DEFAULT_SWEEP_CONFIG,
      "JSON file of the grid: learning_rate, num_train_epochs, adapter_size, "
      "seeds, tasks (lists), train_batch_size, max_seq_length.")
  flags.DEFINE_string(
      "tasks", "", "Comma-separated GLUE tasks (empty: the sweep config's).")
  flags.DEFINE_string(
      "learning_rates", "",
      "Comma-separated learning rates (empty: the sweep config's).")
  flags.DEFINE_string(
      "epochs", "",
      "Comma-separated numbers of training epochs (empty: the sweep "
      "config's).")
  flags.DEFINE_string(
      "adapter_sizes", "",
      "Comma-separated adapter sizes (empty: the sweep config's).")
  flags.DEFINE_string(
      "seeds", "", "Comma-separated seeds (empty: the sweep config's).")
  flags.DEFINE_string(
      "glue_dir", None,
      "Folder of the GLUE data, one folder per task as download_glue_data.py "
      "writes it (MRPC/, SST-2/, ...).")
  flags.DEFINE_string(
      "bert_dir", None,
      "Folder of the pre-trained BERT: vocab.txt, bert_config.json, "
      "bert_model.ckpt.*.")
  flags.DEFINE_bool(
      "do_lower_case", True,
      "Passed to run_classifier.py: true for uncased models.")
  flags.DEFINE_string(
      "output_dir", None,
      "Root of the sweep: one folder per task and run, results.tsv, "
      "results.md, logs/.")
  flags.DEFINE_bool(
      "dry_run", False,
      "Print the commands of the runs still to do; run and write nothing.")
  flags.DEFINE_integer(
      "max_runs", 0,
      "Start at most this many runs (runs already done do not count); "
      "0 = all.")
  flags.DEFINE_string(
      "extra_flags", "",
      "run_classifier.py flags appended to every command, each as "
      "--name=value, e.g. \"--save_checkpoints_steps=100 "
      "--eval_batch_size=32\". They may override --max_seq_length and "
      "--train_batch_size, not the flags the sweep sets per run.")
  flags.DEFINE_bool("verbose", False, "Show Python tracebacks for errors.")


# The flags of run_classifier.py that the sweep sets per run; --extra_flags
# may not set them (the run names and the table would no longer say what ran).
SWEEP_SET_FLAGS = ("task_name", "do_train", "do_eval", "data_dir",
                   "vocab_file", "bert_config_file", "init_checkpoint",
                   "do_lower_case", "learning_rate", "num_train_epochs",
                   "adapter_size", "seed", "output_dir")

# The metric that chooses the best setting, per task (default: accuracy).
_MAIN_METRICS = {"CoLA": "mcc", "STS-B": "spearmanr"}

BERT_FILES = ("vocab.txt", "bert_config.json", "bert_model.ckpt.index")
STATUSES = ("ok", "failed", "pending")


@dataclasses.dataclass
class Run:
  """One grid point: a task, a setting and a seed, and what came of it.

  Attributes:
    task: canonical task name, e.g. "MRPC".
    learning_rate, epochs, adapter_size, seed: the setting.
    name: the run's folder name, e.g. "lr3e-04_ep3_m64_seed1".
    output_dir: the run's run_classifier.py --output_dir.
    command: the run_classifier.py command line.
    status: "ok" (eval_results.txt read), "failed" or "pending".
    metrics: eval_results.txt, key -> value, once ok.
    wall_s: wall seconds of the process that finished it, if known.
    message: why it failed.
  """
  task: str
  learning_rate: float
  epochs: float
  adapter_size: int
  seed: int
  name: str
  output_dir: str
  command: List[str]
  status: str = "pending"
  metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
  wall_s: Optional[float] = None
  message: str = ""

  @property
  def setting(self):
    return (self.learning_rate, self.epochs, self.adapter_size)

  def describe(self):
    return "%s lr=%s epochs=%s size=%d seed=%d" % (
        self.task, format_learning_rate(self.learning_rate),
        format_number(self.epochs), self.adapter_size, self.seed)


def main_metric(task_name):
  """The metric that picks a task's best setting, and the others shown.

  GLUE's metric of each task: Matthews correlation for CoLA, Spearman
  correlation for STS-B (Pearson is shown too), accuracy for SST-2, MNLI,
  QNLI, RTE, WNLI, and for MRPC and QQP accuracy (their F1 is shown too).

  Args:
    task_name: a GLUE task name.

  Returns:
    (main, others): eval_results.txt keys, e.g. ("eval_accuracy",
    ["eval_f1"]) for MRPC, ("eval_spearmanr", ["eval_pearson"]) for STS-B.

  Raises:
    UserError: for an unknown task, or one without dev labels (AX).
  """
  name = glue_processors.get_processor(task_name).name
  names = glue_metrics.metric_names(name)
  main = _MAIN_METRICS.get(name, "accuracy")
  assert main in names, (name, names)
  return "eval_" + main, ["eval_" + n for n in names if n != main]


def _shortest(value, conversion):
  """The fewest-digit `conversion` (g or e) form that reads back as `value`."""
  for digits in range(0, 18):
    text = ("%%.%d%s" % (digits, conversion)) % value
    if float(text) == value:
      return text
  return repr(value)


def format_number(value):
  """The shortest %g form of `value` that reads back as the same float."""
  return _shortest(value, "g")


def format_learning_rate(value):
  """`value` in the shortest exact exponent form, e.g. 3e-04, 2.5e-05."""
  return _shortest(value, "e")


def run_name(learning_rate, epochs, adapter_size, seed):
  """The folder name of a run, e.g. lr3e-04_ep3_m64_seed1."""
  return "lr%s_ep%s_m%d_seed%d" % (format_learning_rate(learning_rate),
                                   format_number(epochs), adapter_size, seed)


# --- The sweep config and the flags. ---------------------------------------


def _is_number(value):
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def _is_int(value):
  return isinstance(value, int) and not isinstance(value, bool)


_LIST_KEYS = {
    "learning_rate": ("positive numbers", lambda v: _is_number(v) and v > 0),
    "num_train_epochs": ("positive numbers",
                         lambda v: _is_number(v) and v > 0),
    "adapter_size": ("positive integers", lambda v: _is_int(v) and v > 0),
    "seeds": ("integers", _is_int),
    "tasks": ("task names", lambda v: isinstance(v, str) and v.strip()),
}
_INT_KEYS = ("train_batch_size", "max_seq_length")


def load_sweep_config(path):
  """Reads and checks a sweep config.

  Args:
    path: a JSON file with the lists learning_rate, num_train_epochs,
      adapter_size, seeds and tasks, and the integers train_batch_size and
      max_seq_length (other keys, e.g. description, are ignored).

  Returns:
    The parsed dict.

  Raises:
    UserError: naming the file and what is wrong with it.
  """
  where = "--sweep_config=%s" % path
  if not os.path.isfile(path):
    raise UserError("%s: file not found" % where)
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except json.JSONDecodeError as e:
    raise UserError("%s is not valid JSON: %s at line %d column %d"
                    % (where, e.msg, e.lineno, e.colno)) from None
  except (OSError, UnicodeDecodeError) as e:
    raise UserError("%s: cannot read it (%s)" % (where, e)) from None
  if not isinstance(config, dict):
    raise UserError("%s: expected a JSON object, got %s"
                    % (where, type(config).__name__))
  for key, (what, valid) in _LIST_KEYS.items():
    if key not in config:
      raise UserError("%s: missing key %r" % (where, key))
    values = config[key]
    if (not isinstance(values, list) or not values
        or not all(valid(v) for v in values)):
      raise UserError("%s: %r must be a non-empty list of %s, got %s"
                      % (where, key, what, json.dumps(values)))
  for key in _INT_KEYS:
    if key not in config:
      raise UserError("%s: missing key %r" % (where, key))
    if not _is_int(config[key]) or config[key] <= 0:
      raise UserError("%s: %r must be a positive integer, got %s"
                      % (where, key, json.dumps(config[key])))
  return config


def _parse_list(flag_name, text, convert, what):
  """Parses a comma-separated flag value; [] when empty."""
  values = []
  for item in text.split(","):
    item = item.strip()
    if not item:
      continue
    try:
      value = convert(item)
    except ValueError:
      value = None
    if value is None:
      raise UserError("--%s=%s: %r is not %s" % (flag_name, text, item, what))
    values.append(value)
  return values


def _positive_float(text):
  value = float(text)
  return value if math.isfinite(value) and value > 0 else None


def _positive_int(text):
  value = int(text)
  return value if value > 0 else None


def _unique(values):
  out = []
  for value in values:
    if value not in out:
      out.append(value)
  return out


def resolve_grid(config, tasks="", learning_rates="", epochs="",
                 adapter_sizes="", seeds=""):
  """The grid: the sweep config's lists, or the flags that override them.

  Args:
    config: a dict from load_sweep_config.
    tasks, learning_rates, epochs, adapter_sizes, seeds: comma-separated
      overrides; empty keeps the config's list.

  Returns:
    dict with tasks (canonical names), learning_rates, epochs,
    adapter_sizes, seeds (lists without repeats).

  Raises:
    UserError: a value that does not parse, or an unknown task.
  """
  grid = {
      "tasks": (_parse_list("tasks", tasks, str, "a task name")
                or config["tasks"]),
      "learning_rates": (_parse_list("learning_rates", learning_rates,
                                     _positive_float, "a positive number")
                         or config["learning_rate"]),
      "epochs": (_parse_list("epochs", epochs, _positive_float,
                             "a positive number")
                 or config["num_train_epochs"]),
      "adapter_sizes": (_parse_list("adapter_sizes", adapter_sizes,
                                    _positive_int, "a positive integer")
                        or config["adapter_size"]),
      "seeds": (_parse_list("seeds", seeds, int, "an integer")
                or config["seeds"]),
  }
  source = "--tasks" if tasks.strip() else "the sweep config's tasks"
  canonical = []
  for task in grid["tasks"]:
    try:
      canonical.append(glue_processors.get_processor(task).name)
    except UserError:
      raise UserError("unknown task %r in %s; valid names: %s" % (
          task, source, ", ".join(glue_processors.task_names()))) from None
    try:
      main_metric(task)
    except UserError as e:  # AX: predict-only, nothing to choose on.
      raise UserError("task %r in %s: %s" % (task, source, e)) from None
  grid["tasks"] = canonical
  grid["learning_rates"] = [float(v) for v in grid["learning_rates"]]
  grid["epochs"] = [float(v) for v in grid["epochs"]]
  return {key: _unique(values) for key, values in grid.items()}


def parse_extra_flags(text):
  """Splits --extra_flags into arguments; refuses the flags the sweep sets.

  Args:
    text: e.g. "--save_checkpoints_steps=100 --eval_batch_size=32".

  Returns:
    The list of arguments.

  Raises:
    UserError: unbalanced quotes, an argument that is not --name[=value], or
      a flag in SWEEP_SET_FLAGS.
  """
  try:
    args = shlex.split(text)
  except ValueError as e:
    raise UserError("--extra_flags=%s: %s" % (text, e)) from None
  for arg in args:
    if not arg.startswith("-") or arg.strip("-") == "":
      raise UserError("--extra_flags: %r is not a flag (write each as "
                      "--name=value)" % arg)
    name = arg.lstrip("-").split("=", 1)[0]
    bool_name = name[2:] if name.startswith("no") else None
    if name in SWEEP_SET_FLAGS or bool_name in SWEEP_SET_FLAGS:
      raise UserError("--extra_flags: %s is set by the sweep for each run "
                      "(use the sweep's flags instead)" % arg)
  return args


def check_inputs(glue_dir, bert_dir, tasks, output_dir):
  """Checks the data and model files every run needs.

  Args:
    glue_dir: folder with one folder per task.
    bert_dir: folder with vocab.txt, bert_config.json, bert_model.ckpt.*.
    tasks: canonical task names.
    output_dir: the sweep's root (may not exist yet).

  Raises:
    UserError: naming the missing or wrong path.
  """
  for flag_name, path in (("glue_dir", glue_dir), ("bert_dir", bert_dir),
                          ("output_dir", output_dir)):
    if not path:
      raise UserError("--%s is required" % flag_name)
  for flag_name, path in (("glue_dir", glue_dir), ("bert_dir", bert_dir)):
    if not os.path.isdir(path):
      raise UserError("--%s=%s: directory not found" % (flag_name, path))
  for name in BERT_FILES:
    if not os.path.isfile(os.path.join(bert_dir, name)):
      raise UserError("--bert_dir=%s: %s not found (expected %s)"
                      % (bert_dir, name, ", ".join(BERT_FILES)))
  config_file = os.path.join(bert_dir, "bert_config.json")
  try:
    with open(config_file, encoding="utf-8") as f:
      bert_config = json.load(f)
  except (ValueError, OSError) as e:  # JSONDecodeError, UnicodeDecodeError.
    raise UserError("--bert_dir=%s: bert_config.json is not valid JSON (%s)"
                    % (bert_dir, e)) from None
  if not isinstance(bert_config, dict):
    raise UserError("--bert_dir=%s: bert_config.json is not a JSON object"
                    % bert_dir)
  for task in tasks:
    processor = glue_processors.get_processor(task)
    task_dir = os.path.join(glue_dir, processor.task_dir)
    if not os.path.isdir(task_dir):
      raise UserError("--glue_dir=%s: folder %s of task %s not found"
                      % (glue_dir, processor.task_dir, task))
    for split in (glue_processors.TRAIN, glue_processors.DEV):
      file_name = processor.layouts[split].file_name
      if not os.path.isfile(os.path.join(task_dir, file_name)):
        raise UserError("--glue_dir=%s: %s of task %s not found" % (
            glue_dir, os.path.join(processor.task_dir, file_name), task))
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise UserError("--output_dir=%s exists and is not a directory"
                    % output_dir)


# --- The runs. ---------------------------------------------------------------


def plan_runs(grid, config, glue_dir, bert_dir, output_dir, do_lower_case,
              extra_args):
  """Every grid point as a Run, task by task, seeds innermost.

  Args:
    grid: from resolve_grid.
    config: the sweep config (train_batch_size, max_seq_length).
    glue_dir, bert_dir, output_dir: absolute paths.
    do_lower_case: passed to every run.
    extra_args: appended to every command (they come last, so they override
      --max_seq_length or --train_batch_size).

  Returns:
    A list of Runs, all pending.
  """
  runs = []
  for task in grid["tasks"]:
    task_dir = glue_processors.get_processor(task).task_dir
    for learning_rate in grid["learning_rates"]:
      for epochs in grid["epochs"]:
        for adapter_size in grid["adapter_sizes"]:
          for seed in grid["seeds"]:
            name = run_name(learning_rate, epochs, adapter_size, seed)
            run_dir = os.path.join(output_dir, task, name)
            command = [
                sys.executable, *RUN_CLASSIFIER,
                "--task_name=%s" % task,
                "--do_train=true",
                "--do_eval=true",
                "--data_dir=%s" % os.path.join(glue_dir, task_dir),
                "--vocab_file=%s" % os.path.join(bert_dir, "vocab.txt"),
                "--bert_config_file=%s" % os.path.join(bert_dir,
                                                       "bert_config.json"),
                "--init_checkpoint=%s" % os.path.join(bert_dir,
                                                      "bert_model.ckpt"),
                "--do_lower_case=%s" % ("true" if do_lower_case else "false"),
                "--max_seq_length=%d" % config["max_seq_length"],
                "--train_batch_size=%d" % config["train_batch_size"],
                "--learning_rate=%s" % format_learning_rate(learning_rate),
                "--num_train_epochs=%s" % format_number(epochs),
                "--adapter_size=%d" % adapter_size,
                "--seed=%d" % seed,
                "--output_dir=%s" % run_dir,
            ] + list(extra_args)
            runs.append(Run(task=task, learning_rate=learning_rate,
                            epochs=epochs, adapter_size=adapter_size,
                            seed=seed, name=name, output_dir=run_dir,
                            command=command))
  return runs


def read_eval_results(path):
  """Parses eval_results.txt (`key = value` lines) into key -> float.

  Raises:
    ValueError: a line that is not `key = number`.
  """
  results = {}
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      key, sep, value = line.partition(" = ")
      if not sep or not key.strip():
        raise ValueError("%s line %d is not `key = value`: %r"
                         % (path, number, line.rstrip("\n")))
      results[key.strip()] = float(value)
  return results


def _log_prefix(sweep_dir, run):
  return os.path.join(sweep_dir, "logs", run.task, run.name)


def load_finished(sweep_dir, run):
  """Reads a finished run's eval_results.txt (and wall time) into `run`.

  Args:
    sweep_dir: the sweep's root.
    run: a Run; made "ok" with its metrics if its output_dir holds a
      readable eval_results.txt, "failed" if that file is malformed.

  Returns:
    Whether the run is ok.
  """
  path = os.path.join(run.output_dir, "eval_results.txt")
  if not os.path.isfile(path):
    return False
  try:
    run.metrics = read_eval_results(path)
  except (ValueError, OSError) as e:
    run.status, run.message = "failed", str(e)
    return False
  run.status, run.message = "ok", ""
  try:
    with open(_log_prefix(sweep_dir, run) + ".json", encoding="utf-8") as f:
      run.wall_s = float(json.load(f)["wall_s"])
  except (OSError, ValueError, KeyError, TypeError):
    run.wall_s = None
  return True


def _last_line(path):
  """The last non-empty line of a text file ("" if none)."""
  try:
    with open(path, "rb") as f:
      f.seek(0, os.SEEK_END)
      f.seek(max(0, f.tell() - 65536))
      tail = f.read().decode("utf-8", errors="replace")
  except OSError:
    return ""
  lines = [line.strip() for line in tail.splitlines() if line.strip()]
  return lines[-1] if lines else ""


def execute(sweep_dir, run):
  """Runs run_classifier.py for `run` and waits for it.

  Its stdout and stderr go to <sweep_dir>/logs/<task>/<run>.out and .err;
  the command, exit status and wall time to <run>.json.

  Args:
    sweep_dir: the sweep's root.
    run: a Run; its status, metrics, wall_s and message are filled in.
  """
  prefix = _log_prefix(sweep_dir, run)
  os.makedirs(os.path.dirname(prefix), exist_ok=True)
  env = dict(os.environ)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  start = time.time()
  with open(prefix + ".out", "w", encoding="utf-8") as out, \
      open(prefix + ".err", "w", encoding="utf-8") as err:
    returncode = subprocess.call(run.command, stdout=out, stderr=err,
                                 stdin=subprocess.DEVNULL, env=env,
                                 cwd=REPO_ROOT if os.path.isdir(REPO_ROOT)
                                 else None)
  run.wall_s = time.time() - start
  atomic_io.atomic_write_text(prefix + ".json", json.dumps({
      "command": run.command, "returncode": returncode,
      "wall_s": run.wall_s}, indent=2) + "\n")
  if returncode != 0:
    if returncode < 0:
      how = "killed by signal %d" % -returncode
    else:
      how = "exit status %d" % returncode
    last = _last_line(prefix + ".err")
    run.status = "failed"
    run.message = "%s: %s" % (how, last) if last else how
    return
  wall_s = run.wall_s
  if not load_finished(sweep_dir, run):
    run.status = "failed"
    run.message = run.message or "ended without writing eval_results.txt"
  run.wall_s = wall_s


def _shown_metrics(run):
  main, others = main_metric(run.task)
  parts = []
  for key in [main] + others:
    if key in run.metrics:
      parts.append("%s=%.4f" % (key[len("eval_"):], run.metrics[key]))
  return " ".join(parts)


# --- The results. ------------------------------------------------------------


def _tsv_value(value):
  if value is None:
    return ""
  if isinstance(value, float):
    return repr(value)
  return " ".join(str(value).split())  # No tabs or newlines in a cell.


def results_tsv(runs, sweep_dir):
  """results.tsv: a header and one row per run (see the module docstring)."""
  metric_keys = sorted({key for run in runs for key in run.metrics
                        if key.startswith("eval_")})
  header = (["task", "learning_rate", "epochs", "adapter_size", "seed",
             "status", "main_metric", "main_value"] + metric_keys +
            ["wall_s", "run_dir", "message"])
  lines = ["\t".join(header)]
  for run in runs:
    main, _ = main_metric(run.task)
    row = [run.task, format_learning_rate(run.learning_rate),
           format_number(run.epochs), str(run.adapter_size), str(run.seed),
           run.status, main, run.metrics.get(main)]
    row += [run.metrics.get(key) for key in metric_keys]
    row += ["%.1f" % run.wall_s if run.wall_s is not None else None,
            os.path.relpath(run.output_dir, sweep_dir), run.message]
    lines.append("\t".join(_tsv_value(v) for v in row))
  return "\n".join(lines) + "\n"


def _mean_std(values):
  """(mean, sample standard deviation or None for one value)."""
  mean = statistics.fmean(values)
  std = statistics.stdev(values) if len(values) > 1 else None
  return mean, std


def _format_mean_std(values):
  if not values:
    return "-"
  mean, std = _mean_std(values)
  if std is None:
    return "%.4f" % mean
  return "%.4f ± %.4f" % (mean, std)


def summarize(runs):
  """Per task, the settings with their runs, best mean main metric first.

  Returns:
    dict task -> list of (setting, runs of that setting), sorted best first
    (settings without a finished run last, in grid order).
  """
  by_task = {}
  for run in runs:
    settings = by_task.setdefault(run.task, {})
    settings.setdefault(run.setting, []).append(run)
  ordered = {}
  for task, settings in by_task.items():
    main, _ = main_metric(task)

    def key(item, main=main):
      values = [r.metrics[main] for r in item[1]
                if r.status == "ok" and main in r.metrics]
      return (0, -statistics.fmean(values)) if values else (1, 0.0)

    ordered[task] = sorted(settings.items(), key=key)  # Stable: grid order.
  return ordered


def results_markdown(runs):
  """results.md: per task, the settings best first; then the best of each."""
  counts = {status: sum(r.status == status for r in runs)
            for status in STATUSES}
  lines = [
      "# Adapter sweep results",
      "",
      "Dev-set results of run_classifier.py over the grid; per setting the "
      "mean ± sample standard deviation over seeds, n = seeds finished. "
      "Main metric (chooses the setting): CoLA mcc, STS-B Spearman, "
      "otherwise accuracy.",
      "",
      "Runs: %d ok, %d failed, %d pending, of %d." % (
          counts["ok"], counts["failed"], counts["pending"], len(runs)),
  ]
  best = []
  for task, settings in summarize(runs).items():
    main, others = main_metric(task)
    names = [key[len("eval_"):] for key in [main] + others]
    title = names[0] + ("; also " + ", ".join(names[1:]) if others else "")
    lines += ["", "## %s (%s)" % (task, title), "",
              "| learning_rate | epochs | adapter_size | %s | n | failed |"
              % " | ".join(names),
              "|---|---|---|%s---|---|" % ("---|" * len(names))]
    for (learning_rate, epochs, adapter_size), setting_runs in settings:
      ok = [r for r in setting_runs if r.status == "ok"]
      cells = [_format_mean_std([r.metrics[key] for r in ok
                                 if key in r.metrics])
               for key in [main] + others]
      failed = sum(r.status == "failed" for r in setting_runs)
      lines.append("| %s | %s | %d | %s | %d | %d |" % (
          format_learning_rate(learning_rate), format_number(epochs),
          adapter_size, " | ".join(cells), len(ok), failed))
    (learning_rate, epochs, adapter_size), setting_runs = settings[0]
    ok = [r.metrics[main] for r in setting_runs
          if r.status == "ok" and main in r.metrics]
    if ok:
      best.append("| %s | %s | %s | %s | %d | %s | %d |" % (
          task, names[0], format_learning_rate(learning_rate),
          format_number(epochs), adapter_size, _format_mean_std(ok),
          len(ok)))
  lines += ["", "## Best setting per task", "",
            "| task | metric | learning_rate | epochs | adapter_size | "
            "mean ± std | n |",
            "|---|---|---|---|---|---|---|"] + best
  return "\n".join(lines) + "\n"


def write_results(sweep_dir, runs):
  """Writes results.tsv and results.md atomically."""
  atomic_io.atomic_write_text(os.path.join(sweep_dir, "results.tsv"),
                              results_tsv(runs, sweep_dir))
  atomic_io.atomic_write_text(os.path.join(sweep_dir, "results.md"),
                              results_markdown(runs))


# --- main. -------------------------------------------------------------------


def prepare():
  """Checks every input and plans the runs; raises UserError on bad input."""
  config = load_sweep_config(FLAGS.sweep_config)
  grid = resolve_grid(config, tasks=FLAGS.tasks,
                      learning_rates=FLAGS.learning_rates, epochs=FLAGS.epochs,
                      adapter_sizes=FLAGS.adapter_sizes, seeds=FLAGS.seeds)
  extra_args = parse_extra_flags(FLAGS.extra_flags)
  if FLAGS.max_runs < 0:
    raise UserError("--max_runs must be >= 0 (0 = all), got %d"
                    % FLAGS.max_runs)
  check_inputs(FLAGS.glue_dir, FLAGS.bert_dir, grid["tasks"],
               FLAGS.output_dir)
  return plan_runs(grid, config, os.path.abspath(FLAGS.glue_dir),
                   os.path.abspath(FLAGS.bert_dir),
                   os.path.abspath(FLAGS.output_dir), FLAGS.do_lower_case,
                   extra_args)


def main(argv):
  if len(argv) > 1:
    raise UserError("unexpected positional arguments: %s" % " ".join(argv[1:]))
  runs = prepare()
  sweep_dir = os.path.abspath(FLAGS.output_dir)
  total = len(runs)
  if FLAGS.dry_run:
    todo = [run for run in runs
            if not os.path.isfile(os.path.join(run.output_dir,
                                               "eval_results.txt"))]
    if FLAGS.max_runs:
      todo = todo[:FLAGS.max_runs]
    for run in todo:
      print(shlex.join(run.command))
    sys.stderr.write("dry run: %d of %d runs to do\n" % (len(todo), total))
    return 0

  os.makedirs(sweep_dir, exist_ok=True)
  for run in runs:
    load_finished(sweep_dir, run)
  write_results(sweep_dir, runs)
  started = 0
  try:
    for index, run in enumerate(runs, 1):
      label = "[%d/%d] %s" % (index, total, run.describe())
      if run.status == "ok":
        print("%s: skipped, done before: %s" % (label, _shown_metrics(run)),
              flush=True)
        continue
      if FLAGS.max_runs and started >= FLAGS.max_runs:
        continue
      started += 1
      print(label, flush=True)
      execute(sweep_dir, run)
      if run.status == "ok":
        print("%s: ok %s in %.1f s" % (label, _shown_metrics(run), run.wall_s),
              flush=True)
      else:
        print("%s: FAILED in %.1f s: %s" % (label, run.wall_s, run.message),
              flush=True)
      write_results(sweep_dir, runs)
  finally:
    write_results(sweep_dir, runs)
  failed = sum(run.status == "failed" for run in runs)
  pending = sum(run.status == "pending" for run in runs)
  print("sweep: %d ok, %d failed, %d pending of %d; results in %s" % (
      total - failed - pending, failed, pending, total,
      os.path.join(sweep_dir, "results.md")), flush=True)
  return 2 if failed else 0


def run_main():
  """Runs main; a UserError becomes one line on stderr and exit status 1."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run_main()
