"""run_ner.py's job: token classification (NER) on CoNLL files.

The flags, checks, output directory, lock, checkpoints, resume and adapter
directory are run_classifier's (training.runner); the data are CoNLL
sentences cut into word-piece windows (data.ner_pipeline), the head a
tagging head, and the scores conlleval's (data.conlleval).

Outputs in output_dir: eval_results.txt (precision, recall, f1, accuracy,
overall and `<TYPE>_precision|recall|f1`, eval_loss, global_step);
with --do_predict, predictions.txt (each token of --predict_file in order,
`token gold predicted`, blank lines between sentences, tags in the file's
scheme; gold `O` when it has no tags) and, when the file has tags,
predict_results.txt with the keys of eval_results.txt.
"""

import dataclasses
import os
import time

from adapter_bert.compute import tf_startup  # noqa: F401  (first: oneDNN kernels before TensorFlow)
from absl import logging
import keras
import numpy as np

from adapter_bert.compute import precision
from adapter_bert.data import conlleval
from adapter_bert.data import frozen_activations
from adapter_bert.data import ner_pipeline
from adapter_bert.model import modeling
from adapter_bert.model import adapter_io
from adapter_bert.storage import atomic_io
from adapter_bert.storage.atomic_io import atomic_write_text
from adapter_bert.training import distribution
from adapter_bert.training import run_config
from adapter_bert.training import runner
from adapter_bert.errors import UserError
from adapter_bert.data import conll

HEAD = "ner"


@dataclasses.dataclass(frozen=True)
class _Task:
  """What adapter directories record of the task (as a GLUE processor)."""
  name: str
  labels: tuple
  is_regression: bool = False

  def get_labels(self):
    return list(self.labels)


def run(cfg, predict_file=None):
  """Runs a NER job (cfg: a validated RunConfig, task_name "NER").

  Returns:
    dict with the eval scores (if --do_eval) and the train result.
  """
  bert_config = runner.read_bert_config(cfg.bert_config_file)
  runner.check_inputs(cfg, bert_config)
  adapter_config = runner.resolve_adapter_config(cfg, bert_config)
  runner.check_adapter_flags(cfg, adapter_config)
  cfg = dataclasses.replace(cfg, adapter_size=getattr(
      adapter_config, "size", cfg.adapter_size))
  data = ner_pipeline.NerData(cfg.data_dir, cfg.vocab_file,
                              cfg.do_lower_case, cfg.max_seq_length,
                              predict_file, tfds_data_dir=cfg.tfds_data_dir)
  if cfg.do_predict and not predict_file and cfg.data_dir and (
      not os.path.isfile(data.path("test"))):
    raise UserError("--do_predict needs --predict_file (or test.txt in "
                    "--data_dir)")
  # The labels: the training file's, or those recorded with the adapter.
  if cfg.adapter_checkpoint:
    metadata, _, _ = adapter_io.read_metadata(cfg.adapter_checkpoint)
    labels = metadata.get("label_list")
  else:
    labels = None
  if labels is None:
    labels = conll_labels(data, "train")
  data.set_labels(labels)
  for split, wanted in (("train", cfg.do_train), ("dev", cfg.do_eval)):
    if wanted:
      data.check_labels(split)
  if cfg.do_predict and data.has_gold("test"):
    data.check_labels("test")
  identity = runner.run_identity(cfg, bert_config,
                                 task_name="NER:" + ",".join(labels))
  previous = runner.check_output_dir(cfg, identity)

  strategy = distribution.resolve_strategy(
      cfg.distribution, use_tpu=cfg.use_tpu, tpu_name=cfg.tpu_name,
      tpu_zone=cfg.tpu_zone, gcp_project=cfg.gcp_project, master=cfg.master,
      num_tpu_cores=cfg.num_tpu_cores)
  keras.utils.set_random_seed(cfg.seed)
  resolved, _ = precision.resolve(cfg.mixed_precision, strategy)
  cfg = dataclasses.replace(cfg, mixed_precision=resolved)
  precision.set_policy(resolved)
  num_train_steps = num_warmup_steps = 0
  if cfg.do_train:
    num_train_steps = int(data.num_windows("train") / cfg.train_batch_size
                          * cfg.num_train_epochs)
    if num_train_steps < 1:
      raise UserError("--num_train_epochs=%g with %d training windows and "
                      "--train_batch_size=%d gives no training step"
                      % (cfg.num_train_epochs, data.num_windows("train"),
                         cfg.train_batch_size))
    num_warmup_steps = int(num_train_steps * cfg.warmup_proportion)

  task = _Task(HEAD, tuple(labels))
  with strategy.scope():
    enabled = adapter_config is not None and getattr(adapter_config,
                                                     "enabled", True)
    model = modeling.BertAdapterModel(
        bert_config, adapters=[(HEAD, adapter_config)] if enabled else None)
    model.add_tagging_head(HEAD, len(labels))
    model.active_head = HEAD
    if cfg.init_checkpoint:
      model.load_base_checkpoint(cfg.init_checkpoint)
    if cfg.adapter_checkpoint:
      adapter_io.load_adapter(model, cfg.adapter_checkpoint,
                              init_checkpoint=cfg.init_checkpoint,
                              label_list=labels)
    trainable = modeling.set_train_mode(model, cfg.train_mode)
    trainer = runner.build_trainer(cfg, bert_config, model, trainable,
                                   strategy, len(labels), False,
                                   num_train_steps, num_warmup_steps)

  runner.create_output_dir(cfg)
  lock = atomic_io.DirectoryLock(cfg.output_dir).acquire()
  try:
    runner.log_trained_parameters(model, trainable, cfg.train_mode)
    runner.write_run_files(cfg, bert_config, adapter_config, identity,
                           previous, step=int(trainer.global_step.numpy()))
    results = {}
    if cfg.do_train:
      logging.info("***** Running NER training: %d sentences, %d windows, "
                   "batch %d, %d steps, labels %s *****",
                   len(data.sentences("train")), data.num_windows("train"),
                   cfg.train_batch_size, num_train_steps, ", ".join(labels))
      buckets = runner.length_buckets(cfg, strategy)
      frozen = None
      if cfg.frozen_activations:  # The layer-attention fast path.
        frozen = frozen_activations.build_or_load(
            model, data.frozen_source("train"),
            os.path.join(cfg.output_dir, "features"),
            dtype=cfg.frozen_activations_dtype,
            batch_size=cfg.train_batch_size, bucket=buckets,
            policy=trainer.policy)

      def make_dataset(start_step):
        dataset = data.train_dataset(
            cfg.train_batch_size, cfg.seed, start_step, bucket=buckets,
            group_batches=(run_config.GROUP_WINDOW_BATCHES
                           if cfg.group_by_length else None))
        return frozen.attach(dataset) if frozen is not None else dataset

      t0 = time.time()
      results["train"] = trainer.train(
          make_dataset, num_train_steps,
          iterations_per_loop=cfg.iterations_per_loop,
          save_checkpoints_steps=cfg.save_checkpoints_steps,
          log_steps=cfg.log_steps)
      results["train"]["train_seconds"] = time.time() - t0
      adapter_io.save_adapter(model, trainable,
                              os.path.join(cfg.output_dir, "adapter"),
                              adapter_config=adapter_config,
                              run_config=cfg, bert_config=bert_config,
                              processor=task,
                              init_checkpoint=cfg.init_checkpoint,
                              adapter_name=HEAD)
    if cfg.do_eval:
      results["eval"] = _score(cfg, data, trainer, "dev", "eval_results.txt")
    if cfg.do_predict:
      results["predict"] = _predict(cfg, data, trainer)
    return results
  finally:
    lock.release()


def conll_labels(data, split):
  return conll.label_list(data.sentences(split))


def _run(cfg, data, trainer, split, batch_size):
  out = trainer.predict(data.eval_dataset(
      split, batch_size, bucket=runner.length_buckets(cfg, trainer.strategy)))
  real = out["is_real_example"].astype(bool)
  tags = data.decode(split, out["logits"], out["example_index"])
  loss = float(np.mean(out["per_example_loss"][real]))
  return tags, loss


def _score(cfg, data, trainer, split, file_name):
  tags, loss = _run(cfg, data, trainer, split, cfg.eval_batch_size)
  gold = [s.tags for s in data.sentences(split)]
  scores = conlleval.evaluate(gold, tags)
  lines = conlleval.results_lines(scores) + [
      "eval_loss = %s" % loss,
      "global_step = %d" % int(trainer.global_step.numpy())]
  atomic_write_text(os.path.join(cfg.output_dir, file_name),
                    "\n".join(lines) + "\n")
  print("***** %s *****" % file_name)
  for line in lines:
    print("  " + line)
  return scores


def _predict(cfg, data, trainer):
  tags, _ = _run(cfg, data, trainer, "test", cfg.predict_batch_size)
  has_gold = data.has_gold("test")
  lines = []
  for sentence, predicted in zip(data.sentences("test"), tags):
    for word, gold, tag in zip(sentence.words, sentence.tags, predicted):
      lines.append("%s %s %s" % (word, gold if has_gold else "O", tag))
    lines.append("")
  atomic_write_text(os.path.join(cfg.output_dir, "predictions.txt"),
                    "\n".join(lines))
  logging.info("Wrote predictions.txt: %d sentences from %s",
               len(tags), data.path("test"))
  if has_gold:
    return _score_predictions(cfg, data, tags)
  return None


def _score_predictions(cfg, data, tags):
  gold = [s.tags for s in data.sentences("test")]
  scores = conlleval.evaluate(gold, tags)
  atomic_write_text(os.path.join(cfg.output_dir, "predict_results.txt"),
                    "\n".join(conlleval.results_lines(scores)) + "\n")
  return scores

