"""The run configuration: every setting of one run_classifier job, validated.

`run_classifier.py` turns flags into a RunConfig; the library takes a RunConfig
and never reads flags. Validation happens here, before anything is written.
"""

import dataclasses
import json
import math
import os

from adapter_bert.compute import precision
from adapter_bert.errors import UserError

MIXED_PRECISION = precision.SETTINGS
DISTRIBUTIONS = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
# --group_by_length: training batches are formed within windows of this many.
GROUP_WINDOW_BATCHES = 32
TRAIN_MODES = ("adapters", "full", "head")
# --micro_batch_size=0: on a CPU host, a training step's batch is cut into
# micro-batches when the activations it keeps for the backward pass would
# exceed this (see trainer.auto_micro_batch_size).
ACTIVATION_BUDGET_MIB = 1024
# Seeds reach numpy, Python and TensorFlow (keras.utils.set_random_seed).
MAX_SEED = 2**31 - 1
# The original casts the global step to int32.
MAX_TRAIN_STEPS = 2**31 - 1
# --optimizer: the reference's update, or AdapterHub's / Hugging Face's
# (compute.optimization.OPTIMIZERS).
OPTIMIZERS = ("adam_weight_decay", "adamw")
FLOAT_FLAGS = ("learning_rate", "num_train_epochs", "warmup_proportion",
               "adapter_init_scale", "weight_decay_rate",
               "adapter_weight_decay_rate")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """One job. Field names are the flag names."""
  task_name: str
  output_dir: str
  bert_config_file: str
  vocab_file: str
  data_dir: str = None
  init_checkpoint: str = None
  adapter_checkpoint: str = None
  do_lower_case: bool = True
  max_seq_length: int = 128
  do_train: bool = False
  do_eval: bool = False
  do_predict: bool = False
  train_batch_size: int = 32
  eval_batch_size: int = 8
  predict_batch_size: int = 8
  learning_rate: float = 5e-5
  num_train_epochs: float = 3.0
  warmup_proportion: float = 0.1
  save_checkpoints_steps: int = 1000
  iterations_per_loop: int = 1000
  log_steps: int = 50
  use_tpu: bool = False
  tpu_name: str = None
  tpu_zone: str = None
  gcp_project: str = None
  master: str = None
  num_tpu_cores: int = 8
  # A preset name or a JSON file; None: adapter-bert (the reference).
  adapter_config: str = None
  # None: the --adapter_checkpoint directory's size (64 without one), or
  # the --adapter_config's own.
  adapter_size: int = 64
  adapter_init_scale: float = 1e-3
  train_mode: str = "adapters"
  weight_decay_rate: float = 0.01
  adapter_weight_decay_rate: float = 0.01
  optimizer: str = "adam_weight_decay"
  seed: int = 12345
  mixed_precision: str = "none"
  jit_compile: bool = True
  distribution: str = "auto"
  bucket_by_length: bool = True
  group_by_length: bool = True
  # 0: automatic (trainer.auto_micro_batch_size).
  micro_batch_size: int = 0
  deterministic: bool = False
  tfds_data_dir: str = None
  # AdapterDrop: the training recipe (a random number of the lowest layers'
  # adapters skipped at each step), and layers skipped at eval and predict.
  adapter_drop: bool = False
  skip_layers: tuple = ()
  # The frozen encoder's states computed once and read every epoch (an
  # adapter that reads the frozen encoder: layer_attention).
  frozen_activations: bool = False
  frozen_activations_dtype: str = "float32"
  # --task_name=csv: your own CSV/TSV/JSON Lines files' columns.
  text_a_column: str = None
  text_b_column: str = None
  label_column: str = "label"
  # Resume with another learning rate or weight decay than the checkpoints
  # in output_dir were trained with (logged and recorded).
  allow_hyperparameter_change: bool = False

  def validate(self):
    """Raises UserError naming the flag for any value out of range."""
    for name in FLOAT_FLAGS:
      value = getattr(self, name)
      if (isinstance(value, bool) or not isinstance(value, (int, float))
          or not math.isfinite(value)):
        raise UserError("--%s must be a finite number, got %r" % (name, value))
    if (isinstance(self.seed, bool) or not isinstance(self.seed, int)
        or not 0 <= self.seed <= MAX_SEED):
      raise UserError("--seed must be an integer in [0, %d], got %r"
                      % (MAX_SEED, self.seed))
    if not (self.do_train or self.do_eval or self.do_predict):
      raise UserError("at least one of --do_train, --do_eval or --do_predict "
                      "must be true")
    positive_ints = ("train_batch_size", "eval_batch_size", "predict_batch_size",
                     "save_checkpoints_steps", "iterations_per_loop",
                     "log_steps", "num_tpu_cores")
    for name in positive_ints:
      if getattr(self, name) <= 0:
        raise UserError("--%s must be a positive integer, got %r"
                        % (name, getattr(self, name)))
    if self.adapter_drop and self.train_mode != "adapters":
      raise UserError("--adapter_drop drops adapters while they train: it "
                      "needs --train_mode=adapters, got %s" % self.train_mode)
    if self.frozen_activations_dtype not in ("float32", "float16"):
      raise UserError("--frozen_activations_dtype=%s is not one of float32, "
                      "float16" % self.frozen_activations_dtype)
    for layer in self.skip_layers:
      if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise UserError("--skip_layers takes layer indices (ints >= 0), got "
                        "%r" % (list(self.skip_layers),))
    if self.micro_batch_size < 0:
      raise UserError("--micro_batch_size must be >= 0 (0 = automatic), got %r"
                      % self.micro_batch_size)
    if self.max_seq_length < 3:
      raise UserError("--max_seq_length=%d is too small: [CLS] and two [SEP] "
                      "need at least 3" % self.max_seq_length)
    if self.do_train:
      if not self.learning_rate > 0:
        raise UserError("--learning_rate must be > 0, got %r" % self.learning_rate)
      if not self.num_train_epochs > 0:
        raise UserError("--num_train_epochs must be > 0, got %r"
                        % self.num_train_epochs)
    if not 0 <= self.warmup_proportion <= 1:
      raise UserError("--warmup_proportion must be in [0, 1], got %r"
                      % self.warmup_proportion)
    if self.optimizer not in OPTIMIZERS:
      raise UserError("--optimizer=%s is not one of %s"
                      % (self.optimizer, ", ".join(OPTIMIZERS)))
    for name in ("weight_decay_rate", "adapter_weight_decay_rate"):
      if getattr(self, name) < 0:
        raise UserError("--%s must be >= 0, got %r" % (name, getattr(self, name)))
    if (self.adapter_size is None and not self.adapter_checkpoint
        and not self.adapter_config):
      raise UserError("--adapter_size is required without "
                      "--adapter_checkpoint")
    if self.adapter_size is not None and self.adapter_size < 0:
      raise UserError("--adapter_size must be >= 0 (0 = no adapters), got %d"
                      % self.adapter_size)
    if not self.adapter_init_scale > 0:
      raise UserError("--adapter_init_scale must be > 0, got %r"
                      % self.adapter_init_scale)
    if self.train_mode not in TRAIN_MODES:
      raise UserError("--train_mode=%s is not one of %s"
                      % (self.train_mode, ", ".join(TRAIN_MODES)))
    if self.train_mode == "adapters" and self.adapter_size == 0 and self.do_train:
      raise UserError("--train_mode=adapters needs --adapter_size > 0; use "
                      "--train_mode=full or head for plain BERT")
    if self.mixed_precision not in MIXED_PRECISION:
      raise UserError("--mixed_precision=%s is not one of %s"
                      % (self.mixed_precision, ", ".join(MIXED_PRECISION)))
    if self.distribution not in DISTRIBUTIONS:
      raise UserError("--distribution=%s is not one of %s"
                      % (self.distribution, ", ".join(DISTRIBUTIONS)))
    # Local paths are checked here, before TensorFlow is imported; remote
    # ones (gs://...) when they are read.
    for name in ("bert_config_file", "vocab_file"):
      path = getattr(self, name)
      if not path:
        raise UserError("--%s is required" % name)
      if _is_remote(path):
        continue
      if os.path.isdir(path):
        raise UserError("--%s=%s is a directory, expected a file"
                        % (name, path))
      if not os.path.isfile(path):
        raise UserError("--%s=%s: file not found" % (name, path))
      if not os.access(path, os.R_OK):
        raise UserError("--%s=%s: file is not readable" % (name, path))
    if self.data_dir and not _is_remote(self.data_dir):
      if not os.path.exists(self.data_dir):
        raise UserError("--data_dir=%s: directory not found" % self.data_dir)
      if not os.path.isdir(self.data_dir):
        raise UserError("--data_dir=%s is not a directory" % self.data_dir)
      if not os.access(self.data_dir, os.R_OK | os.X_OK):
        raise UserError("--data_dir=%s: directory is not readable"
                        % self.data_dir)
    if not self.output_dir:
      raise UserError("--output_dir is required")
    if self.do_train and not self.init_checkpoint and self.train_mode != "full":
      raise UserError("--init_checkpoint is required to train with "
                      "--train_mode=%s (a frozen random base learns nothing)"
                      % self.train_mode)
    return self

  @property
  def tpu(self):
    return self.use_tpu or self.distribution == "tpu"

  def to_json_string(self):
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

  # Settings that define what a checkpoint in output_dir holds; a rerun must
  # agree on them to resume.
  IDENTITY_FIELDS = ("task_name", "max_seq_length", "adapter_config",
                     "adapter_size", "train_mode", "do_lower_case",
                     "text_a_column", "text_b_column", "label_column")
  # What fixes the training run's steps, batches and their order: a resumed
  # run must agree on them to see the batches it would have seen.
  TRAINING_FIELDS = ("train_batch_size", "num_train_epochs",
                     "warmup_proportion", "seed", "group_by_length",
                     "adapter_drop")
  # Changed on resume only with --allow_hyperparameter_change.
  HYPERPARAMETER_FIELDS = ("learning_rate", "weight_decay_rate",
                           "adapter_weight_decay_rate", "optimizer")

  def identity(self):
    return {k: getattr(self, k) for k in self.IDENTITY_FIELDS}

  def training_identity(self):
    return {k: getattr(self, k) for k in self.TRAINING_FIELDS}

  def hyperparameters(self):
    return {k: getattr(self, k) for k in self.HYPERPARAMETER_FIELDS}


def _is_remote(path):
  """True for a URL-like path (gs://, hdfs://...) read through tf.io.gfile."""
  return "://" in str(path)
