"""Loading and saving (`PersistenceMixin`): the pre-trained base, adapter
directories in this toolkit's and AdapterHub's layouts, the raw-text
preprocessor that comes with a base.
"""

import json
import os

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)

from adapter_bert.adapters import composition
from adapter_bert.errors import UserError
from adapter_bert.model import adapter_io
from adapter_bert.model.config import BertConfig
from adapter_bert.model.hooks import BASE
from adapter_bert.model.view import ModelView
from adapter_bert.storage import adapterhub
from adapter_bert.storage import checkpoint_io
from adapter_bert.storage import huggingface
from adapter_bert.text import preprocessor as preprocessor_lib
from adapter_bert.text import tokenization


class PersistenceMixin:
  """Loading and saving: the pre-trained base (Google's or Hugging Face's
  layout), adapter directories in this toolkit's and AdapterHub's layouts,
  and the raw-text preprocessor that comes with a base.

  Reads and keeps: `config`, `bert`, `adapter_configs`, `heads`,
  `vocab_file`, `init_checkpoint`, `base_name`, `_text_settings`.
  """

  # ---------------------------------------------------------------- loading

  @classmethod
  def from_pretrained(cls, path, vocab_file=None, init_checkpoint=None,
                      do_lower_case=None, max_seq_length=128, **kwargs):
    """A model holding a pre-trained base, without adapters or heads.

    Args:
      path: a directory in Google's format (`bert_config.json`,
        `vocab.txt`, `bert_model.ckpt`), a Hugging Face BERT directory
        (`config.json`, `model.safetensors` or `pytorch_model.bin`,
        `vocab.txt`), or the path of a
        `bert_config.json` with `vocab_file` and `init_checkpoint` given.
      vocab_file, init_checkpoint: the other two paths, when `path` is a
        config file.
      do_lower_case, max_seq_length: how the model's `preprocessor` turns
        raw text into features (`fit`, `evaluate` and `predict` take
        strings); do_lower_case None: as the base's name says ("uncased",
        "cased"), or a Hugging Face directory's tokenizer_config.json;
        uncased when neither says.

    Returns:
      The model; `vocab_file` and `init_checkpoint` hold the paths used.

    Raises:
      UserError: for a missing file or a checkpoint that does not fit.
    """
    if huggingface.is_hf_dir(path):  # config.json, model.safetensors, vocab.
      config_file = os.path.join(path, huggingface.CONFIG_FILE)
      vocab_file = vocab_file or os.path.join(path, "vocab.txt")
      init_checkpoint = init_checkpoint or path
    elif os.path.isdir(path):
      config_file = os.path.join(path, "bert_config.json")
      vocab_file = vocab_file or os.path.join(path, "vocab.txt")
      init_checkpoint = init_checkpoint or os.path.join(path,
                                                        "bert_model.ckpt")
    else:
      config_file = path
      if init_checkpoint is None:
        raise UserError("from_pretrained(%s): give init_checkpoint= (or a "
                        "directory holding bert_config.json, vocab.txt and "
                        "bert_model.ckpt)" % path)
    if vocab_file is not None and not os.path.isfile(vocab_file):
      raise UserError("from_pretrained(%s): vocabulary %s not found"
                      % (path, vocab_file))
    model = cls(BertConfig.from_json_file(config_file), **kwargs)
    model.load_base_checkpoint(init_checkpoint)
    model.vocab_file = vocab_file
    model.init_checkpoint = init_checkpoint
    if vocab_file is not None:
      if do_lower_case is None:
        do_lower_case = _base_lower_case(path, init_checkpoint)
      model.set_preprocessor(vocab_file, do_lower_case, max_seq_length)
    # The base's name, recorded in adapters written in AdapterHub's layout
    # (its `model_name`): a Hugging Face directory's own, else the path.
    model.base_name = os.path.abspath(path)
    if huggingface.is_hf_dir(path):
      with open(os.path.join(path, huggingface.CONFIG_FILE),
                encoding="utf-8") as f:
        model.base_name = json.load(f).get("_name_or_path") or model.base_name
    return model

  def set_preprocessor(self, vocab_file, do_lower_case=True,
                       max_seq_length=128):
    """How raw text becomes features for `fit`, `evaluate` and `predict`
    (`preprocessor_lib.BertPreprocessor`, built on first use).

    Raises:
      UserError: for a missing vocabulary or a max_seq_length below 3.
    """
    preprocessor_lib.check_settings(vocab_file, max_seq_length)
    self._text_settings = (vocab_file, bool(do_lower_case),
                           int(max_seq_length))
    self._preprocessor = None

  @property
  def preprocessor(self):
    """The BertPreprocessor for raw text, or None (no vocabulary given:
    `from_pretrained` or `set_preprocessor` give one)."""
    if self._preprocessor is None and self._text_settings is not None:
      self._preprocessor = preprocessor_lib.BertPreprocessor(
          *self._text_settings)
    return self._preprocessor

  def _text_features(self, x):
    if self.preprocessor is None:
      raise UserError("raw text needs a vocabulary: build the model with "
                      "from_pretrained(...) or call set_preprocessor("
                      "vocab_file, do_lower_case, max_seq_length)")
    return self.preprocessor(x)

  def load_base_checkpoint(self, path, flag_name="init_checkpoint"):
    """Restores the base from a BERT checkpoint (original names).

    The base's variables and LayerNorms come from the checkpoint; each
    adapter's LayerNorm copies (and what its layers read from the base,
    `start_from_base`) start again from them; adapters and the head
    of the active view are restored too when the checkpoint has them (one
    written by google-research/adapter-bert), else keep their values.
    """
    checkpoint_io.load_checkpoint(self.view(composition.Branch()), path,
                                  flag_name=flag_name)
    for name in self.adapter_configs:
      self.reset_layer_norms(name)
      self.start_from_base(name)
    view = self.view()
    own = [n for n, (_, tag) in view.checkpoint_variables().items()
           if tag.kind != "base" and tag.owner is not None]
    if own:
      checkpoint_io.load_checkpoint(view, path, flag_name=flag_name,
                                    require_base=False, names=own,
                                    log_restored=False)

  def reset_layer_norms(self, name):
    """Sets adapter `name`'s LayerNorm copies to the base's values."""
    layers = [(self.bert.embeddings.layer_norms, self.bert.embeddings.layer_norm)]
    for block in self.bert.blocks:
      layers.append((block.attention_layer_norms, block.attention_layer_norm))
      layers.append((block.output_layer_norms, block.output_layer_norm))
    for copies, base in layers:
      if name in copies:
        copies[name].gamma.assign(base.gamma)
        copies[name].beta.assign(base.beta)

  # ------------------------------------------------------------ adapter I/O

  def save_adapter(self, directory, name, with_head=True, metadata=None,
                   format="toolkit"):  # pylint: disable=redefined-builtin
    """Writes adapter `name` (and its head) as an adapter directory.

    format "toolkit": the format of the command line's `output_dir/adapter`:
    the variables under the reference's TF1 names, the adapter config and
    metadata with the base fingerprint. format "adapterhub": AdapterHub's
    layout (storage.adapterhub.save), which its `load_adapter` reads.

    Raises:
      UserError: for an unknown adapter.
    """
    self._check_adapter(name)
    if self.merged_adapters:
      raise UserError("adapter %r is merged into the base weights; "
                      "reset_adapter() before saving adapters"
                      % self.merged_adapters[0])
    if format == "adapterhub":
      return adapterhub.save(self, directory, name, with_head=with_head,
                             model_name=getattr(self, "base_name", None))
    if format != "toolkit":
      raise UserError("save_adapter format %r is not one of toolkit, "
                      "adapterhub" % (format,))
    view = self.adapter_view(name)
    if not with_head:
      view = ModelView(self, composition.Branch(view.branch.adapters,
                                                view.branch.layer_norms, None))
    trainable = view.trainable_names("adapters")
    return adapter_io.save_adapter(
        view, trainable, directory, adapter_config=self.adapter_configs[name],
        run_config=dict(metadata or {}, train_mode="adapters"),
        bert_config=self.config, processor=_NamedTask(name, metadata),
        init_checkpoint=getattr(self, "init_checkpoint", None),
        adapter_name=name)

  def save_all_adapters(self, directory):
    """Writes every adapter (with its head) to `directory/<name>`.

    Returns:
      {name: directory written}.
    """
    return {name: self.save_adapter(os.path.join(directory, name), name)
            for name in self.adapter_configs}

  def load_adapter(self, directory, load_as=None, with_head=True,
                   set_active=False, flag_name="adapter"):
    """Loads an adapter directory (and its head) under a name: this
    toolkit's, or one written by AdapterHub's save_adapter (see
    storage.adapterhub).

    Args:
      directory: written by `save_adapter` or the command line
        (`output_dir/adapter`).
      load_as: the name to use (default: the name it was saved under).
      with_head: also load its head (named like the adapter).
      set_active: make it the active adapter.

    Returns:
      The name it was loaded under.

    Raises:
      UserError: for a directory of another base (fingerprint), another BERT
        config, a broken directory or a name taken. Nothing changes then.
    """
    if adapterhub.is_adapterhub_dir(directory):  # AdapterHub's save_adapter.
      return adapterhub.load(self, directory, load_as, with_head, set_active)
    metadata, adapter_config, _ = adapter_io.read_metadata(directory,
                                                           flag_name)
    name = (load_as or metadata.get("adapter_name") or metadata.get("task_name")
            or os.path.basename(os.path.normpath(directory)))
    if name in self.adapter_configs:
      raise UserError("an adapter named %r exists already; load it with "
                      "load_as=..." % name)
    if with_head and name in self.heads:
      raise UserError("a head named %r exists already; load the adapter "
                      "with load_as=..." % name)
    adapter_io.check_base_config(self.config, directory, metadata, flag_name)
    base = self.view(composition.Branch()).checkpoint_variables()
    shared = sorted(n for n in metadata["variables"]
                    if n in base and base[n][1] == BASE)
    if shared:
      raise UserError(
          "--%s=%s changes base weights shared by every task and adapter "
          "(e.g. %s; train_mode=%s); it cannot share a base"
          % (flag_name, directory, shared[0], metadata.get("train_mode")))
    has_head = any(checkpoint_io.is_head_name(n)
                   for n in metadata["variables"])
    self.add_adapter(name, adapter_config)
    added_head = False
    try:
      if with_head and has_head:
        head_config = metadata.get("head_config")
        self.add_head_from_config(name, int(metadata["num_labels"]),
                                  head_config)
        added_head = True
      view = self.adapter_view(name, head=name if added_head else None)
      adapter_io.load_adapter(view, directory, flag_name=flag_name,
                              init_checkpoint=getattr(self, "init_checkpoint",
                                                      None),
                              skip_head=not added_head)
    except BaseException:
      if added_head:
        self.delete_head(name)
      self.delete_adapter(name)
      raise
    if set_active:
      self.set_active_adapters(name)
    return name


class _NamedTask:
  """What an adapter directory records of the task, for the Python API."""

  def __init__(self, name, metadata):
    metadata = metadata or {}
    self.name = metadata.get("task_name", name)
    self.is_regression = bool(metadata.get("is_regression", False))
    self._labels = metadata.get("label_list")

  def get_labels(self):
    return self._labels


def _base_lower_case(path, init_checkpoint):
  """Whether a base's text is lower-cased: a Hugging Face directory's
  tokenizer_config.json, else the base's name; uncased when neither says."""
  config = os.path.join(path, "tokenizer_config.json") if os.path.isdir(
      path) else None
  if config and os.path.isfile(config):
    try:
      with open(config, encoding="utf-8") as f:
        value = json.load(f).get("do_lower_case")
    except (OSError, ValueError) as e:
      raise UserError("cannot read %s: %s" % (config, e)) from None
    if isinstance(value, bool):
      return value
  for name in (init_checkpoint, path):
    casing = tokenization.casing_of_checkpoint(name)
    if casing is not None:
      return casing == "uncased"
  return True
