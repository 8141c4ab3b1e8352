"""Property-based tests of the readers (hypothesis): a valid file mutated
byte by byte (bytes replaced, deleted, inserted, the file cut short) is
either read correctly or refused with the toolkit's one-line UserError;
never another exception, never weights other than the bytes the file names.

Budget: each test runs a fixed number of derandomized examples (the same
ones on every run, so CI is repeatable) with no per-example deadline; all of
them together take about a minute on a 2-core CPU.
"""

import json
import os
import struct
import tempfile

import hypothesis
from hypothesis import strategies as st
import numpy as np

from adapter_bert import adapters
from adapter_bert.data import conll
from adapter_bert.data import user_data
from adapter_bert.errors import UserError
from adapter_bert.model.config import BertConfig
from adapter_bert.storage import torch_formats

EXAMPLES = int(os.environ.get("ADAPTER_BERT_FUZZ_EXAMPLES", "400"))
FUZZ = hypothesis.settings(max_examples=EXAMPLES, deadline=None,
                           derandomize=not os.environ.get(
                               "ADAPTER_BERT_FUZZ_EXAMPLES"), database=None,
                           suppress_health_check=list(
                               hypothesis.HealthCheck))


@st.composite
def mutations(draw, data):
  """`data` with 1-4 random edits."""
  out = bytearray(data)
  for _ in range(draw(st.integers(1, 4))):
    if not out:
      break
    i = draw(st.integers(0, len(out) - 1))
    op = draw(st.sampled_from(["replace", "replace", "delete", "insert",
                               "truncate"]))
    if op == "replace":
      out[i] = draw(st.integers(0, 255))
    elif op == "delete":
      del out[i:i + draw(st.integers(1, 8))]
    elif op == "insert":
      out[i:i] = draw(st.binary(min_size=1, max_size=8))
    else:
      del out[i:]
  return bytes(out)


def _file(data, suffix):
  handle, path = tempfile.mkstemp(suffix=suffix)
  with os.fdopen(handle, "wb") as f:
    f.write(data)
  return path


def _read(reader, data, suffix):
  """reader(path of `data`): its result, or None for a UserError. Any other
  exception fails the test."""
  path = _file(data, suffix)
  try:
    return reader(path)
  except UserError as e:
    assert str(e) and "\n" not in str(e)
    return None
  finally:
    os.remove(path)


# --- safetensors. -------------------------------------------------------------

_TENSORS = {"w": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
            "b": np.array([1.5, -2.0], np.float32),
            "ids": np.array([3, 1, 4], np.int64)}


def _valid_safetensors():
  path = tempfile.mktemp(suffix=".safetensors")
  torch_formats.write_safetensors(path, _TENSORS)
  with open(path, "rb") as f:
    data = f.read()
  os.remove(path)
  return data


SAFETENSORS = _valid_safetensors()
_DTYPES = {"F32": "<f4", "I64": "<i8", "F64": "<f8", "F16": "<f2",
           "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def _independent_layout(data):
  """What the file names, parsed here independently: {name: (dtype, shape,
  begin, end)} and the body; asserts the layout a reader may accept (no
  name twice, byte ranges disjoint and covering the body)."""
  (size,) = struct.unpack("<Q", data[:8])
  pairs = json.loads(data[8:8 + size].decode("utf-8"),
                     object_pairs_hook=lambda p: p)
  names = [k for k, _ in pairs]
  assert len(names) == len(set(names)), "a name listed twice was accepted"
  body = data[8 + size:]
  layout, ranges = {}, []
  for name, info in pairs:
    if name == "__metadata__":
      continue
    info = dict(info)
    begin, end = info["data_offsets"]
    layout[name] = (info["dtype"], tuple(info["shape"]), begin, end)
    ranges.append((begin, end))
  covered = 0
  for begin, end in sorted(ranges):
    assert begin == covered, "a gap or an overlap was accepted"
    covered = end
  assert covered == len(body), "bytes outside every tensor were accepted"
  return layout, body


@FUZZ
@hypothesis.given(mutations(SAFETENSORS))
def test_safetensors_mutated(data):
  tensors = _read(torch_formats.read_safetensors, data, ".safetensors")
  if tensors is None:
    return
  layout, body = _independent_layout(data)
  assert sorted(tensors) == sorted(layout)
  for name, array in tensors.items():
    dtype, shape, begin, end = layout[name]
    assert array.shape == shape
    if dtype == "BF16":
      continue
    want = np.frombuffer(body[begin:end], _DTYPES[dtype]).reshape(shape)
    np.testing.assert_array_equal(array, want)


def test_the_unmutated_safetensors_file_reads_back():
  tensors = _read(torch_formats.read_safetensors, SAFETENSORS, ".safetensors")
  for name, value in _TENSORS.items():
    np.testing.assert_array_equal(tensors[name], value)


# --- torch zip (.bin). ----------------------------------------------------------


def _valid_torch_bin():
  path = tempfile.mktemp(suffix=".bin")
  torch_formats.write_torch_bin(path, {k: v for k, v in _TENSORS.items()
                                       if v.dtype == np.float32})
  with open(path, "rb") as f:
    data = f.read()
  os.remove(path)
  return data


TORCH_BIN = _valid_torch_bin()


@FUZZ
@hypothesis.given(mutations(TORCH_BIN))
def test_torch_bin_mutated(data):
  tensors = _read(torch_formats.read_torch_bin, data, ".bin")
  if tensors is None:
    return
  # The zip's CRCs guard the pickle and the storages: what reads at all
  # reads as written.
  assert sorted(tensors) == ["b", "w"]
  for name, array in tensors.items():
    np.testing.assert_array_equal(array, _TENSORS[name])


# --- CoNLL. ---------------------------------------------------------------------

CONLL = (b"-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n"
         b"German JJ B-NP B-MISC\ncall NN I-NP O\n\nPeter NNP B-NP B-PER\n"
         b"Blackburn NNP I-NP I-PER\n")


@FUZZ
@hypothesis.given(mutations(CONLL))
def test_conll_mutated(data):
  sentences = _read(conll.read_conll, data, ".txt")
  if sentences is None:
    return
  for sentence in sentences:
    assert len(sentence.words) == len(sentence.tags) > 0
    assert all(w.strip() for w in sentence.words)
    for tag in sentence.tags:
      assert tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)
  labels = conll.label_list(sentences)
  assert labels[0] == "O" and len(labels) == len(set(labels))


# --- CSV and JSON Lines. ----------------------------------------------------------

CSV = (b"text,label\n\"a good film\",pos\n\"dull, and long\",neg\n"
       b"\"\xc3\xa9t\xc3\xa9 \"\"quoted\"\"\",pos\n")
JSONL = (b'{"text": "a good film", "label": "pos"}\n'
         b'{"text": "dull", "label": "neg"}\n'
         b'{"text": "\\u00e9t\\u00e9", "label": "pos"}\n')


def _read_table(suffix):
  def reader(path):
    directory = tempfile.mkdtemp()
    os.rename(path, os.path.join(directory, "train" + suffix))
    try:
      processor = user_data.TableProcessor(text_a_column="text",
                                           label_column="label",
                                           data_dir=directory)
      return processor, processor.get_train_examples(directory)
    finally:
      os.rename(os.path.join(directory, "train" + suffix), path)
      os.rmdir(directory)
  return reader


def _check_examples(result):
  if result is None:
    return
  processor, examples = result
  labels = processor.get_labels()
  assert len(labels) >= 2
  for example in examples:
    assert example.text_a.strip() and example.label in labels


@FUZZ
@hypothesis.given(mutations(CSV))
def test_csv_mutated(data):
  _check_examples(_read(_read_table(".csv"), data, ".csv"))


@FUZZ
@hypothesis.given(mutations(JSONL))
def test_jsonl_mutated(data):
  _check_examples(_read(_read_table(".jsonl"), data, ".jsonl"))


# --- Adapter configs. ---------------------------------------------------------------

CONFIG = json.dumps({"architecture": "bottleneck", "mh_adapter": False,
                     "output_adapter": True, "reduction_factor": 16,
                     "non_linearity": "relu", "leave_out": [0, 1],
                     "dropout": 0.0}).encode("utf-8")


HF_CONFIG = json.dumps({
    "model_type": "bert", "architectures": ["BertModel"], "vocab_size": 40,
    "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 32, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 32,
    "type_vocab_size": 2, "initializer_range": 0.02,
    "layer_norm_eps": 1e-12}).encode("utf-8")

# (file reader, dict reader, a valid file): an adapter config, and a
# Hugging Face config.json read as a BERT config.
CONFIG_READERS = [
    (adapters.config_from_json_file, adapters.config_from_dict, CONFIG),
    (BertConfig.from_json_file, BertConfig.from_dict, HF_CONFIG)]


@FUZZ
@hypothesis.given(st.sampled_from(CONFIG_READERS).flatmap(
    lambda r: st.tuples(st.just(r), mutations(r[2]))))
def test_configs_mutated(case):
  (read_file, from_dict, _), data = case
  config = _read(read_file, data, ".json")
  if config is None:
    return
  # What reads is a whole, typed config: it round-trips through its dict.
  assert from_dict(config.to_dict()) == config
  for index in getattr(config, "leave_out", ()):
    assert isinstance(index, int) and not isinstance(index, bool)
