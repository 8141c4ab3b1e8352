"""AdapterFusion on the model (`FusionMixin`): add, train, save and load
fusion layers over several adapters.
"""

import collections
import os

from adapter_bert.compute import tf_startup  # noqa: F401  (first: picks oneDNN kernels before TensorFlow loads)
import tensorflow as tf

from adapter_bert.adapters import composition
from adapter_bert.adapters import fusion as fusion_lib
from adapter_bert.adapters import registry
from adapter_bert.errors import UserError
from adapter_bert.model import adapter_io
from adapter_bert.model.view import fusions_of
from adapter_bert.storage import adapterhub


class FusionMixin:
  """AdapterFusion over adapters of the model (AdapterHub's semantics): add,
  delete, train, save and load fusion layers.

  Reads and keeps: `bert` (its hook points hold the fusion layers),
  `adapter_configs`, `fusions` ({name: (adapter names, config)}).
  """

  # ------------------------------------------------------------- fusion

  def _fusion_name(self, adapter_names, name=None):
    """(fusion name, adapter names) from a Fuse, a list or "a,b"."""
    if isinstance(adapter_names, composition.Fuse):
      return name or adapter_names.name, tuple(adapter_names.children)
    if isinstance(adapter_names, str):
      names = tuple(adapter_names.split(","))
      return name or adapter_names, names
    names = tuple(adapter_names)
    return name or ",".join(names), names

  def _fusion_places(self):
    """[(hook, where)] of every place a fusion can sit."""
    return [(getattr(block, point), "%s of layer %d" % (point, i))
            for i, block in enumerate(self.bert.blocks)
            for point in ("attention_output", "ffn_output")]

  def add_adapter_fusion(self, adapter_names, config=None, name=None,
                         overwrite_ok=False, set_active=False):
    """Adds an AdapterFusion of adapters (adapters.fusion), fresh weights.

    Args:
      adapter_names: a Fuse, a list of adapter names or "a,b".
      config: "dynamic" (default), "static", a dict or an
        adapters.AdapterFusionConfig.
      name: the fusion's name (default: the adapter names joined by commas).
      overwrite_ok: replace a fusion of that name.
      set_active: make `Fuse(*adapter_names)` the active setup.

    Raises:
      UserError: for unknown adapters, adapters that are not sequential
        bottlenecks, adapters at different places, or a name taken.
    """
    name, names = self._fusion_name(adapter_names, name)
    config = fusion_lib.get_fusion_config(config)
    if len(names) < 2 or len(set(names)) != len(names):
      raise UserError("a fusion takes two or more different adapters, got %s"
                      % ", ".join(names))
    for n in names:
      self._check_adapter(n)
      c = self.adapter_configs[n]
      why = registry.fusion_refusal(c)
      if why:
        raise UserError("adapter %r (%s) cannot be fused: %s"
                        % (n, c.kind, why))
    if name in self.fusions:
      if not overwrite_ok:
        raise UserError("a fusion named %r exists already (overwrite_ok="
                        "True replaces it)" % name)
      self.delete_adapter_fusion(name)
    places = []
    for hook, where in self._fusion_places():
      present = [n for n in names if n in hook.layers_by_adapter]
      if present and len(present) < len(names):
        raise UserError("adapters %s cannot be fused: at %s only %s ha%s a "
                        "bottleneck" % (", ".join(names), where,
                                        ", ".join(present),
                                        "s" if len(present) == 1 else "ve"))
      if present:
        places.append(hook)
    dropout = (config.dropout_prob if config.dropout_prob is not None
               else self.config.attention_probs_dropout_prob)
    for hook in places:
      hook.add_fusion(name, fusion_lib.FusionLayer(
          config, self.config.hidden_size, dropout,
          name="adapter_fusion"))
    self.fusions[name] = (names, config)
    if set_active:
      self.set_active_adapters(composition.Fuse(*names, name=name))

  def delete_adapter_fusion(self, adapter_names):
    """Removes a fusion (its name, a Fuse, a list of names).

    Raises:
      UserError: for an unknown fusion.
    """
    name, _ = self._fusion_name(adapter_names)
    if name not in self.fusions:
      raise UserError("unknown fusion %r; this model has %s" % (
          name, ", ".join(sorted(self.fusions)) or "no fusions"))
    for hook, _ in self._fusion_places():
      hook.remove_fusion(name)
    del self.fusions[name]
    if self._active is not None and name in fusions_of(self._active):
      self._active = None
    self._forget_traced_steps()

  def _fusion_layers(self, name):
    return [hook.fusions[name] for hook, _ in self._fusion_places()
            if name in hook.fusions]

  def train_adapter_fusion(self, adapter_setup, unfreeze_adapters=False):
    """Activates a setup with a Fuse and freezes all but its fusions and
    heads (and, with `unfreeze_adapters`, the fused adapters).

    Returns:
      The list of trained variables.

    Raises:
      UserError: for a setup without a fusion, or an unknown one.
    """
    if isinstance(adapter_setup, (list, tuple)) or (
        isinstance(adapter_setup, str) and "," in adapter_setup):
      name, names = self._fusion_name(adapter_setup)
      adapter_setup = composition.Fuse(*names, name=name)
    self.set_active_adapters(adapter_setup)
    fusions = fusions_of(self._active)
    if not fusions:
      raise UserError("train_adapter_fusion needs a setup with a Fuse, got "
                      "%r" % (self._active,))
    for variable in self.weights:
      variable.trainable = False
    trained = []
    for name in fusions:
      for layer in self._fusion_layers(name):
        trained += [v for _, v in layer.checkpoint_variables()]
      if unfreeze_adapters:
        for n in self.fusions[name][0]:
          trained += [v for key, (v, tag) in self.adapter_view(
              n).checkpoint_variables().items()
                      if tag.kind != "base" and tag.owner == n
                      and not tag.frozen]
    for branch in self.active_setup().branches:
      if branch.head is not None:
        trained += [v for _, v, _ in self.heads[
            branch.head].checkpoint_variables(None)]
    for variable in trained:
      variable.trainable = True
    self._forget_traced_steps()
    return trained

  def fusion_regularization_loss(self):
    """AdapterHub's 0.01·||I - V||² summed over the trained value matrices of
    the active setup's fusions (0.0 where none)."""
    losses = []
    for name in fusions_of(self._active):
      for layer in self._fusion_layers(name):
        loss = layer.regularization_loss()
        if loss is not None and layer.value.trainable:
          losses.append(loss)
    return tf.add_n(losses) if losses else tf.constant(0.0)

  def fusion_variables(self, name):
    """OrderedDict {checkpoint name: variable} of fusion `name`."""
    if name not in self.fusions:
      raise UserError("unknown fusion %r; this model has %s" % (
          name, ", ".join(sorted(self.fusions)) or "no fusions"))
    out = collections.OrderedDict()
    for i, block in enumerate(self.bert.blocks):
      for point in ("attention_output", "ffn_output"):
        scope = "bert/encoder/layer_%d/%s" % (i, registry.HOOK_SCOPES[point])
        for key, variable, _ in getattr(block, point).checkpoint_variables(
            scope, (), fusions=(name,)):
          out[key] = variable
    return out

  def save_adapter_fusion(self, directory, name, with_adapters=False,
                          with_head=False, format="toolkit"):  # pylint: disable=redefined-builtin
    """Writes fusion `name` (its config, fused adapter names and weights) to
    `directory`, atomically; with `with_adapters`, each fused adapter (with
    its head) in `directory/<adapter name>/` too.

    Args:
      with_head: False, or the name of a head to save with the fusion (as
        AdapterHub's `with_head`; True: the active head), which
        `load_adapter_fusion` adds back.

    Raises:
      UserError: for an unknown fusion or head, or a directory that cannot
        be written.
    """
    name, _ = self._fusion_name(name)
    variables = self.fusion_variables(name)
    names, config = self.fusions[name]
    head = None
    if with_head:
      head = self.active_head if with_head is True else with_head
      if head not in self.heads:
        raise UserError("save_adapter_fusion: no head named %r; this model "
                        "has %s" % (head, ", ".join(sorted(self.heads))
                                    or "no heads"))
    if format == "adapterhub":  # AdapterHub's save_adapter_fusion layout.
      if head is not None:
        raise UserError("save_adapter_fusion: with_head is written in this "
                        "toolkit's format only; save the head's adapter "
                        "with save_adapter")
      adapterhub.save_fusion(self, directory, name,
                             getattr(self, "base_name", None))
    elif format == "toolkit":
      adapter_io.save_fusion(self, directory, name, names, config, variables,
                             head=head)
    else:
      raise UserError("save_adapter_fusion format %r is not one of toolkit, "
                      "adapterhub" % (format,))
    if with_adapters:
      for n in names:
        self.save_adapter(os.path.join(directory, n), n, format=format)

  def load_adapter_fusion(self, directory, load_as=None, set_active=False,
                          with_head=True):
    """Loads a fusion written by `save_adapter_fusion`; its adapters must be
    in the model, or in `directory/<adapter name>/` (loaded then); with
    `with_head`, the head saved with it (made the active head).

    Returns:
      The fusion's name in the model.

    Raises:
      UserError: for a directory that is not a fusion of this base, or
        adapters missing.
    """
    if adapterhub.is_adapterhub_fusion_dir(directory):
      return adapterhub.load_fusion(self, directory, load_as, set_active)
    return adapter_io.load_fusion(self, directory, load_as, set_active,
                                  with_head)
