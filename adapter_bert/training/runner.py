"""One run_classifier job as library calls: check, build, train, eval, predict.

Everything the user gave is checked before anything is written to
`output_dir`; outputs are written atomically.
"""

import dataclasses
import hashlib
import json
import os
import tempfile
import time

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from adapter_bert.compute import precision
from adapter_bert.model import adapter_io
from adapter_bert import adapters
from adapter_bert.adapters import registry
from adapter_bert.storage import atomic_io
from adapter_bert.storage import checkpoint_io
from adapter_bert.model import adapter_drop
from adapter_bert.training import distribution
from adapter_bert.data import frozen_activations
from adapter_bert.data import glue_metrics
from adapter_bert.data import glue_outputs
from adapter_bert.data import input_pipeline
from adapter_bert.data import user_data
from adapter_bert.model import modeling
from adapter_bert.compute import optimization
from adapter_bert.training import run_config
from adapter_bert.training import runner_tasks
from adapter_bert.training import summaries
from adapter_bert.text import tokenization
from adapter_bert.training import trainer as trainer_lib
from adapter_bert.storage.atomic_io import atomic_write_text
from adapter_bert.errors import UserError
from adapter_bert.storage import huggingface
from adapter_bert.storage import torch_formats

RUN_CONFIG_FILE = "run_config.json"


def read_bert_config(path):
  """Reads --bert_config_file; every failure is a UserError naming it."""
  try:
    return modeling.BertConfig.from_json_file(path)
  except UserError as e:
    raise UserError("--bert_config_file: %s" % e) from None


def check_inputs(cfg, bert_config):
  """Cross-checks flags, config, vocabulary, checkpoints and casing.

  Reads files only; writes nothing.

  Raises:
    UserError: naming the flag (and file) at fault.
  """
  if cfg.max_seq_length > bert_config.max_position_embeddings:
    raise UserError(
        "--max_seq_length=%d exceeds max_position_embeddings=%d of "
        "--bert_config_file=%s" % (cfg.max_seq_length,
                                   bert_config.max_position_embeddings,
                                   cfg.bert_config_file))
  layers = bert_config.num_hidden_layers
  bad = [i for i in cfg.skip_layers if i >= layers]
  if bad:
    raise UserError("--skip_layers=%s: layer %d is not one of 0..%d "
                    "(--bert_config_file=%s has %d layers)"
                    % (",".join(map(str, cfg.skip_layers)), bad[0],
                       layers - 1, cfg.bert_config_file, layers))
  vocab = tokenization.load_vocab(cfg.vocab_file)
  if len(vocab) != bert_config.vocab_size:
    raise UserError(
        "--vocab_file=%s has %d tokens but --bert_config_file=%s says "
        "vocab_size=%d" % (cfg.vocab_file, len(vocab), cfg.bert_config_file,
                           bert_config.vocab_size))
  tokenization.validate_case_matches_checkpoint(cfg.do_lower_case,
                                                cfg.init_checkpoint)
  if cfg.init_checkpoint:
    # Opens the checkpoint so that a missing or corrupt one fails here;
    # shapes are checked against the model when it is loaded.
    checkpoint_io.read_checkpoint(cfg.init_checkpoint)
  if cfg.adapter_checkpoint:
    adapter_io.read_metadata(cfg.adapter_checkpoint)


def resolve_adapter_config(cfg, bert_config):
  """The adapters of the model: from the flags, or the adapter directory's.

  With --adapter_checkpoint and no --adapter_size (RunConfig.adapter_size
  None), the directory's adapter_config.json defines the adapters; a size
  given explicitly must match it (checked when the adapters are loaded).
  """
  if cfg.adapter_checkpoint and cfg.adapter_size is None and (
      not cfg.adapter_config):
    stored = adapter_io.read_adapter_config(cfg.adapter_checkpoint)
    logging.info("Adapters from --adapter_checkpoint=%s: %s",
                 cfg.adapter_checkpoint, describe_adapter_config(stored))
    return stored
  if not cfg.adapter_config:
    return adapters.AdapterConfig(size=cfg.adapter_size,
                                  init_scale=cfg.adapter_init_scale)
  config = adapter_config_from_flag(cfg.adapter_config)
  if cfg.adapter_size is not None:
    try:
      config = registry.resize(config, cfg.adapter_size, bert_config)
    except UserError as e:
      raise UserError("--adapter_size=%d with --adapter_config=%s: %s"
                      % (cfg.adapter_size, cfg.adapter_config, e)) from None
  if isinstance(config, adapters.AdapterConfig) and (
      cfg.adapter_init_scale != config.init_scale):
    config = dataclasses.replace(config, init_scale=cfg.adapter_init_scale)
  if cfg.adapter_checkpoint:
    # An adapter directory holds the adapter as served (prefix tuning: its
    # plain prefixes, flat=True); the config that trained it means it.
    stored = adapter_io.read_adapter_config(cfg.adapter_checkpoint)
    if stored != config and registry.serving_config(config) == stored:
      config = stored
  logging.info("Adapters: --adapter_config=%s: %s", cfg.adapter_config,
               describe_adapter_config(config))
  return config


def adapter_config_from_flag(value):
  """The config --adapter_config names: a JSON file or a preset.

  Raises:
    UserError: for a file that cannot be read or holds a bad config, or an
      unknown preset.
  """
  if value.endswith(".json") or os.sep in value or os.path.exists(value):
    if not os.path.isfile(value):
      raise UserError("--adapter_config=%s: no such file" % value)
    read = adapters.config_from_json_file
  else:
    read = adapters.get_preset
  try:
    return read(value)
  except UserError as e:
    raise UserError("--adapter_config=%s: %s" % (value, e)) from None


def describe_adapter_config(config):
  if isinstance(config, adapters.AdapterConfig):
    return "adapter-bert, size %d at %s" % (config.size,
                                            ", ".join(config.locations))
  presets = sorted(n for n, c in adapters.PRESETS.items() if c == config)
  if presets:
    return "%s (preset %s)" % (config.kind, " = ".join(presets))
  if registry.is_combination(config):
    return "%s of %s" % (config.kind, ", ".join(
        describe_adapter_config(c) for c in config.configs))
  defaults = type(config)().to_dict()
  fields = {k: v for k, v in config.to_dict().items()
            if k != "kind" and v != defaults.get(k)}
  return "%s%s" % (config.kind, (" " + json.dumps(fields, sort_keys=True))
                   if fields else " (defaults)")


def _is_remote(path):
  return "://" in str(path)


def check_output_dir(cfg, identity):
  """Checks that output_dir can be written and fits this configuration.

  Writes nothing (a probe file is created and removed at once): the
  directory is created by `create_output_dir` once every input is checked.

  Returns:
    The run_config.json record of the run that wrote its checkpoints, or
    None.

  Raises:
    UserError: if it cannot be created or written, is in use by another run
      (its lock file), or holds checkpoints of another configuration (task,
      model, adapter size, ...), or of another training run (batch size,
      epochs, warmup, seed, data order; learning rate and weight decay
      unless --allow_hyperparameter_change).
  """
  out = cfg.output_dir
  if not _is_remote(out):
    probe = os.path.abspath(out)
    while not os.path.exists(probe):
      probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
      if probe == os.path.abspath(out):
        raise UserError("--output_dir=%s exists and is not a directory" % out)
      raise UserError("--output_dir=%s cannot be created: %s is not a "
                      "directory" % (out, probe))
    try:
      with tempfile.NamedTemporaryFile(dir=probe, prefix=".write_test"):
        pass
    except OSError as e:
      raise UserError("--output_dir=%s cannot be written: %s"
                      % (out, e.strerror or e)) from None
  if not tf.io.gfile.isdir(out):
    return None
  if not _is_remote(out):
    holder = atomic_io.read_lock(out)
    if holder is not None and not atomic_io.lock_is_stale(holder):
      raise UserError("--output_dir=%s is in use by %s; one run at a time per "
                      "output directory (lock file %s)"
                      % (out, atomic_io.describe_holder(holder),
                         os.path.join(out, atomic_io.LOCK_FILE)))
  latest = tf.train.latest_checkpoint(out)
  if latest is None:
    return None
  previous_path = os.path.join(out, RUN_CONFIG_FILE)
  if not tf.io.gfile.exists(previous_path):
    raise UserError(
        "--output_dir=%s holds checkpoints (%s) but no %s, so they cannot be "
        "checked against this configuration; use a new --output_dir"
        % (out, os.path.basename(latest), RUN_CONFIG_FILE))
  try:
    with tf.io.gfile.GFile(previous_path, "r") as f:
      previous = json.load(f)
    recorded = previous["identity"]
    if not isinstance(recorded, dict):
      raise TypeError("identity is not an object")
  except (tf.errors.OpError, OSError, ValueError, KeyError, TypeError) as e:
    raise UserError("--output_dir=%s: cannot read %s: %s"
                    % (out, previous_path, e)) from None
  differences = _differences(recorded, identity)
  if differences:
    raise UserError(
        "--output_dir=%s holds checkpoints (%s) of a different configuration "
        "(%s); use a new --output_dir" % (out, os.path.basename(latest),
                                          "; ".join(differences)))
  if not cfg.do_train:
    return previous
  where = "--output_dir=%s holds checkpoints (%s)" % (
      out, os.path.basename(latest))
  # Older run_config.json files lack these records: nothing to compare.
  training_flags = previous.get("training")
  if isinstance(training_flags, dict):
    differences = _differences(training_flags, cfg.training_identity())
    if differences:
      raise UserError(
          "%s trained with other flags (%s): a resumed run must take the "
          "steps and batches it would have taken; rerun with the same flags "
          "or use a new --output_dir" % (where, "; ".join(differences)))
  hyperparameters = _recorded_hyperparameters(previous)
  if isinstance(hyperparameters, dict):
    differences = _differences(hyperparameters, cfg.hyperparameters())
    if differences and not cfg.allow_hyperparameter_change:
      raise UserError(
          "%s trained with %s; pass --allow_hyperparameter_change=true to "
          "continue with the new values, or use a new --output_dir"
          % (where, "; ".join(differences)))
    if differences:
      logging.warning("Resuming %s with changed hyperparameters: %s", out,
                      "; ".join(differences))
  return previous


def _recorded_hyperparameters(previous):
  """run_config.json's hyperparameters (None in records older than them);
  records older than --optimizer trained with the reference's."""
  hyperparameters = previous.get("hyperparameters")
  if isinstance(hyperparameters, dict):
    hyperparameters = dict(hyperparameters)
    hyperparameters.setdefault("optimizer", "adam_weight_decay")
  return hyperparameters


def _differences(recorded, mine, where=""):
  """'key was X, now Y' for each value of `mine` that `recorded` lacks."""
  out = []
  for key, value in mine.items():
    theirs = recorded.get(key) if isinstance(recorded, dict) else None
    if isinstance(value, dict) and isinstance(theirs, dict):
      out += _differences(theirs, value, where + key + ".")
    elif theirs != value:
      out.append("%s%s was %r, now %r" % (where, key, theirs, value))
  return out


def create_output_dir(cfg):
  """Creates output_dir (after every check passed)."""
  try:
    tf.io.gfile.makedirs(cfg.output_dir)
  except (tf.errors.OpError, OSError) as e:
    raise UserError("--output_dir=%s cannot be created: %s"
                    % (cfg.output_dir, getattr(e, "message", None) or e)) from None


def run_identity(cfg, bert_config, task_name=None):
  """What checkpoints in output_dir depend on; a resume must agree on it.

  Besides the RunConfig's identity fields and the model config, it holds a
  fingerprint of the --init_checkpoint: the SHA-256 of its `.index` file,
  which lists every tensor with its shape and CRC32C, so another base model
  (even of the same size) is told apart without reading the weights.
  """
  identity = cfg.identity()
  identity["task_name"] = task_name or runner_tasks.get_processor(cfg).name
  identity["bert_config"] = bert_config.to_dict()
  identity["init_checkpoint_sha256"] = init_checkpoint_fingerprint(
      cfg.init_checkpoint)
  return identity


def init_checkpoint_fingerprint(path):
  """SHA-256 (hex, 16 digits) of the checkpoint's `.index` file, or None."""
  if not path:
    return None
  if huggingface.is_hf_dir(path):  # Its weights file stands for the index.
    weights = torch_formats.exists_any(path, huggingface.WEIGHT_FILES)
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()[:16]
  if "://" not in path:
    path = checkpoint_io.resolve_checkpoint_path(path)
  elif path.endswith(".index"):
    path = path[:-len(".index")]
  try:
    with tf.io.gfile.GFile(path + ".index", "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()[:16]
  except (tf.errors.OpError, OSError) as e:
    raise UserError("--init_checkpoint=%s: cannot read %s.index: %s"
                    % (path, path, getattr(e, "message", None) or e)) from None


def write_run_files(cfg, bert_config, adapter_config, identity,
                    previous=None, step=0):
  """The configs used, for the record and for resume checks.

  run_config.json keeps the training flags and hyperparameters of the run
  that trained (an evaluation-only rerun keeps the recorded ones), and lists
  every hyperparameter change a resume made, with its step.
  """
  out = cfg.output_dir
  previous = previous or {}
  atomic_write_text(os.path.join(out, "bert_config.json"),
                    bert_config.to_json_string())
  atomic_write_text(os.path.join(out, "adapter_config.json"),
                    registry.config_to_json(adapter_config))
  changes = list(previous.get("hyperparameter_changes") or [])
  training_flags = previous.get("training")
  hyperparameters = _recorded_hyperparameters(previous)
  if cfg.do_train:
    if isinstance(hyperparameters, dict):
      differences = _differences(hyperparameters, cfg.hyperparameters())
      if differences:
        changes.append({"step": int(step), "changes": differences})
    training_flags = cfg.training_identity()
    hyperparameters = cfg.hyperparameters()
  record = {"flags": json.loads(cfg.to_json_string()),
            "identity": identity}
  if training_flags is not None:
    record["training"] = training_flags
    record["hyperparameters"] = hyperparameters
  if changes:
    record["hyperparameter_changes"] = changes
  atomic_write_text(os.path.join(out, RUN_CONFIG_FILE),
                    json.dumps(record, indent=2, sort_keys=True) + "\n")


def run(cfg):
  """Runs the job described by a validated RunConfig.

  Returns:
    dict with the eval results (if --do_eval) and the train result.
  """
  # Everything the user gave is read and checked first; nothing is written
  # to output_dir before the model, its checkpoints and the data are known
  # to be right.
  processor = runner_tasks.get_processor(cfg)
  bert_config = read_bert_config(cfg.bert_config_file)
  check_inputs(cfg, bert_config)
  adapter_config = resolve_adapter_config(cfg, bert_config)
  check_adapter_flags(cfg, adapter_config)
  cfg = dataclasses.replace(cfg, adapter_size=getattr(
      adapter_config, "size", cfg.adapter_size))
  identity = run_identity(cfg, bert_config)  # Reads the checkpoint index.
  previous = check_output_dir(cfg, identity)

  strategy = distribution.resolve_strategy(
      cfg.distribution, use_tpu=cfg.use_tpu, tpu_name=cfg.tpu_name,
      tpu_zone=cfg.tpu_zone, gcp_project=cfg.gcp_project, master=cfg.master,
      num_tpu_cores=cfg.num_tpu_cores)
  replicas = strategy.num_replicas_in_sync
  for flag in ("train_batch_size", "eval_batch_size", "predict_batch_size"):
    distribution.per_replica_batch_size(getattr(cfg, flag), replicas,
                                        "--" + flag)

  keras.utils.set_random_seed(cfg.seed)
  if cfg.deterministic:
    tf.config.experimental.enable_op_determinism()
  resolved, why = precision.resolve(cfg.mixed_precision, strategy)
  if cfg.mixed_precision == "auto":
    logging.info("--mixed_precision=auto: %s (%s)",
                 "float32" if resolved == "none" else resolved, why)
  cfg = dataclasses.replace(cfg, mixed_precision=resolved)
  precision.set_policy(resolved)

  label_list = processor.get_labels()
  is_regression = processor.is_regression
  num_labels = 1 if is_regression else len(label_list)

  data = input_pipeline.GlueData(
      processor=processor, data_dir=cfg.data_dir, vocab_file=cfg.vocab_file,
      do_lower_case=cfg.do_lower_case, max_seq_length=cfg.max_seq_length,
      cache_dir=os.path.join(cfg.output_dir, "features"),
      tfds_data_dir=cfg.tfds_data_dir)
  # Read (and check) every split needed; features are converted (and cached
  # under output_dir) only later, when a dataset is first built.
  num_train_steps = num_warmup_steps = 0
  if cfg.do_train:
    num_train_examples = data.num_examples("train")
    num_train_steps = int(num_train_examples / cfg.train_batch_size
                          * cfg.num_train_epochs)
    if num_train_steps > run_config.MAX_TRAIN_STEPS:
      raise UserError("--num_train_epochs=%g with %d training examples and "
                      "--train_batch_size=%d gives %d steps, more than %d"
                      % (cfg.num_train_epochs, num_train_examples,
                         cfg.train_batch_size, num_train_steps,
                         run_config.MAX_TRAIN_STEPS))
    if num_train_steps < 1:
      raise UserError("--num_train_epochs=%g with %d training examples and "
                      "--train_batch_size=%d gives no training step"
                      % (cfg.num_train_epochs, num_train_examples,
                         cfg.train_batch_size))
    num_warmup_steps = int(num_train_steps * cfg.warmup_proportion)
  if cfg.do_eval:
    data.num_examples("dev")
  if cfg.do_predict:
    data.num_examples("test")

  with strategy.scope():
    model = modeling.BertClassifier(bert_config, num_labels, adapter_config,
                                    adapter_name=processor.name.lower())
    if cfg.init_checkpoint:
      model.load_base_checkpoint(cfg.init_checkpoint)
    if cfg.adapter_checkpoint:
      adapter_io.load_adapter(model, cfg.adapter_checkpoint,
                              init_checkpoint=cfg.init_checkpoint,
                              label_list=label_list)
    trainable = modeling.set_train_mode(model, cfg.train_mode)
    trainer = build_trainer(cfg, bert_config, model, trainable, strategy,
                            num_labels, is_regression, num_train_steps,
                            num_warmup_steps)

  create_output_dir(cfg)
  # One run at a time: nothing is written into output_dir without its lock.
  lock = (None if _is_remote(cfg.output_dir)
          else atomic_io.DirectoryLock(cfg.output_dir).acquire())
  try:
    log_trained_parameters(model, trainable, cfg.train_mode)
    write_run_files(cfg, bert_config, adapter_config, identity, previous,
                    step=int(trainer.global_step.numpy()))
    results = {}

    if cfg.do_train:
      if cfg.adapter_drop:
        logging.info("--adapter_drop: each step skips the adapters of its k "
                     "lowest layers, k uniform in 0..%d",
                     adapter_drop.num_choices(
                         bert_config.num_hidden_layers) - 1)
      writer = tf.summary.create_file_writer(cfg.output_dir)
      logging.info("***** Running training: %d examples, batch %d, %d steps "
                   "*****", data.num_examples("train"), cfg.train_batch_size,
                   num_train_steps)

      buckets = length_buckets(cfg, strategy)
      frozen = None
      if cfg.frozen_activations:
        frozen = frozen_activations.build_or_load(
            model, data.feature_file("train"), data.cache_dir,
            dtype=cfg.frozen_activations_dtype,
            batch_size=cfg.train_batch_size, bucket=buckets,
            policy=trainer.policy)

      def make_dataset(start_step):
        dataset = data.train_dataset(
            batch_size=cfg.train_batch_size, seed=cfg.seed,
            start_step=start_step, bucket=buckets,
            group_batches=(run_config.GROUP_WINDOW_BATCHES
                           if cfg.group_by_length else None))
        return frozen.attach(dataset) if frozen is not None else dataset

      t0 = time.time()
      train_result = trainer.train(
          make_dataset, num_train_steps,
          iterations_per_loop=cfg.iterations_per_loop,
          save_checkpoints_steps=cfg.save_checkpoints_steps,
          log_steps=cfg.log_steps, summary_writer=writer)
      train_result["train_seconds"] = time.time() - t0
      results["train"] = train_result
      # Only the trained variables, on their own; nothing in full mode.
      adapter_io.save_adapter(model, trainable,
                              os.path.join(cfg.output_dir, "adapter"),
                              adapter_config=adapter_config, run_config=cfg,
                              bert_config=bert_config, processor=processor,
                              init_checkpoint=cfg.init_checkpoint,
                              adapter_name=processor.name.lower())

    if cfg.skip_layers:  # AdapterDrop at inference.
      logging.info("--skip_layers: eval and predict without the adapters of "
                   "layers %s", ",".join(map(str, cfg.skip_layers)))
      model.set_active_adapters(model.active_adapters,
                                skip_layers=cfg.skip_layers)
    if cfg.do_eval:
      results["eval"] = evaluate(cfg, data, trainer, processor)

    if cfg.do_predict:
      predict(cfg, data, trainer, processor)
    return results
  finally:
    if lock is not None:
      lock.release()


def check_adapter_flags(cfg, adapter_config):
  """--adapter_drop and --frozen_activations against the adapter method.

  Raises:
    UserError: for a method they do not apply to.
  """
  if cfg.adapter_drop and (
      adapter_config is None or not getattr(adapter_config, "enabled", True)
      or registry.method_of(adapter_config).encoder_level):
    raise UserError("--adapter_drop skips adapters in the lowest layers; %s "
                    "has none there" % (
                        "no adapter" if adapter_config is None or not getattr(
                            adapter_config, "enabled", True) else
                        "--adapter_config=%s (%s reads the frozen encoder's "
                        "output)" % (cfg.adapter_config,
                                     adapter_config.kind)))
  if cfg.frozen_activations and cfg.do_train and (
      adapter_config is None or not getattr(adapter_config, "enabled", True)
      or not registry.method_of(adapter_config).encoder_level
      or cfg.train_mode != "adapters"):
    raise UserError("--frozen_activations needs an adapter that reads the "
                    "frozen encoder (--adapter_config=layer_attention) and "
                    "--train_mode=adapters; got --adapter_config=%s, "
                    "--train_mode=%s" % (cfg.adapter_config,
                                         cfg.train_mode))


def build_trainer(cfg, bert_config, model, trainable, strategy, num_labels,
                  is_regression, num_train_steps, num_warmup_steps):
  """The run's optimizer and Trainer (inside strategy.scope()), restored
  from output_dir's latest checkpoint when there is one."""
  optimizer = optimization.create_optimizer(
      cfg.learning_rate, max(num_train_steps, 1), num_warmup_steps,
      weight_decay_rate=cfg.weight_decay_rate,
      adapter_weight_decay_rate=cfg.adapter_weight_decay_rate,
      optimizer=cfg.optimizer)
  trainer = trainer_lib.Trainer(
      model, optimizer, trainable, strategy, cfg.output_dir,
      num_labels=num_labels, is_regression=is_regression,
      global_batch_size=cfg.train_batch_size, seed=cfg.seed,
      jit_compile=cfg.jit_compile,
      loss_scale=2.0**15 if cfg.mixed_precision == "float16" else None,
      micro_batch_size=_micro_batch_size(cfg, bert_config, strategy),
      adapter_drop=cfg.adapter_drop)
  trainer.restore_latest()
  return trainer


def _micro_batch_size(cfg, bert_config, strategy):
  """Examples per micro-batch of a training step (per replica)."""
  per_replica = max(1, cfg.train_batch_size // strategy.num_replicas_in_sync)
  if cfg.micro_batch_size:
    size = min(cfg.micro_batch_size, per_replica)
  else:
    size = trainer_lib.auto_micro_batch_size(
        bert_config, cfg.train_mode, per_replica, cfg.max_seq_length, strategy)
  if cfg.do_train and size < per_replica:
    logging.info("Each training batch runs as micro-batches of %d examples "
                 "(--micro_batch_size; the same numbers, less memory).", size)
  return size


def log_trained_parameters(model, trainable, train_mode):
  """Logs how many of the model's parameters train (both jobs' line)."""
  n_train = sum(int(np.prod(v.shape)) for _, v in trainable)
  n_total = sum(int(np.prod(v.shape))
                for v in checkpoint_io.checkpoint_name_map(model).values())
  logging.info("Training %s of %s parameters (%.2f%%), mode %s",
               f"{n_train:,}", f"{n_total:,}", 100.0 * n_train / n_total,
               train_mode)


def length_buckets(cfg, strategy):
  """The length buckets batches are trimmed to, or False (fixed shapes).

  Never on TPU (one compiled shape). Finer buckets where a new width only
  compiles the small element-wise kernels (CPU) than where it compiles the
  whole step (see `bucket_granularity`).
  """
  if not cfg.bucket_by_length:
    return False
  return bucket_boundaries(cfg.max_seq_length, cfg.jit_compile, strategy)


def bucket_boundaries(max_seq_length, jit_compile, strategy):
  """run_classifier's length buckets under `strategy`, or False on TPU."""
  if isinstance(strategy, tf.distribute.TPUStrategy):
    return False
  return input_pipeline.default_bucket_boundaries(
      max_seq_length, bucket_granularity(jit_compile, strategy))


def bucket_granularity(jit_compile, strategy):
  """Width step of the length buckets: 16 if a width compiles the whole step.

  With 8 (CPU) a GLUE epoch pays ~6% less padding than with 16 (MRPC: mean
  width 58.7 against 62.7 tokens) for a few more small kernel compilations.
  """
  return 16 if trainer_lib.compiles_whole_step(jit_compile, strategy) else 8


def evaluate(cfg, data, trainer, processor):
  """Evaluates on the dev set; writes and prints eval_results.txt."""
  dataset = data.eval_dataset("dev", batch_size=cfg.eval_batch_size,
                              bucket=length_buckets(cfg, trainer.strategy))
  out = trainer.predict(dataset)
  out = _in_example_order(out)
  real = out["is_real_example"].astype(bool)
  logits = out["logits"]
  if processor.is_regression:
    predictions = logits[:, 0]
  else:
    predictions = np.argmax(logits, axis=-1)
  metrics = glue_metrics.compute_metrics(
      processor.name, predictions, out["label_ids"], out["is_real_example"])
  result = {}
  if not processor.is_regression:
    result["eval_accuracy"] = float(np.mean(predictions[real] == out["label_ids"][real]))
  result["eval_loss"] = float(np.mean(out["per_example_loss"][real]))
  # Estimator's `loss`: the mean over eval batches of each batch's mean loss.
  result["loss"] = float(np.mean(out["batch_mean_loss"]))
  result["global_step"] = int(trainer.global_step.numpy())
  for key, value in metrics.items():
    result.setdefault("eval_" + key if not key.startswith("eval_") else key,
                      float(value))
  lines = ["%s = %s" % (key, result[key]) for key in sorted(result)]
  atomic_write_text(os.path.join(cfg.output_dir, "eval_results.txt"),
                    "\n".join(lines) + "\n")
  print("***** Eval results *****")
  for line in lines:
    print("  " + line)
  sys_flush()
  writer = tf.summary.create_file_writer(os.path.join(cfg.output_dir, "eval"))
  summaries.write_scalars(writer, result["global_step"], {
      k: v for k, v in result.items() if k != "global_step"})
  return result


def predict(cfg, data, trainer, processor):
  """Predicts the test set; writes test_results.tsv and the GLUE file."""
  dataset = data.eval_dataset("test", batch_size=cfg.predict_batch_size,
                              bucket=length_buckets(cfg, trainer.strategy))
  out = _in_example_order(trainer.predict(dataset))
  real = out["is_real_example"].astype(bool)
  logits = out["logits"][real]
  if processor.is_regression:
    outputs = logits[:, 0]
    predictions = outputs
  else:
    outputs = tf.nn.softmax(logits, axis=-1).numpy()
    predictions = np.argmax(outputs, axis=-1)
  glue_outputs.write_test_results(
      os.path.join(cfg.output_dir, "test_results.tsv"), outputs)
  examples = data.examples("test")
  indices = [ex.index if getattr(ex, "index", None) is not None else i
             for i, ex in enumerate(examples)]
  if processor.name == user_data.NAME:  # No GLUE submission file.
    logging.info("Wrote %d predictions to test_results.tsv",
                 len(predictions))
    return
  path = glue_outputs.write_submission(cfg.output_dir, processor.name,
                                       indices, predictions)
  logging.info("Wrote %d predictions to test_results.tsv and %s",
               len(predictions), path)


def _in_example_order(out):
  """Reorders prediction outputs by example_index when bucketing shuffled them."""
  if "example_index" not in out:
    return out
  order = np.argsort(out["example_index"], kind="stable")
  real = out["is_real_example"][order].astype(bool)
  # Real examples first in their original order, then the padding.
  order = np.concatenate([order[real], order[~real]])
  return {k: (v[order] if k != "batch_mean_loss" else v) for k, v in out.items()}


def sys_flush():
  import sys
  sys.stdout.flush()
