"""Readers that trust nothing (issue 34): each case a hostile user tried.

Command-line cases run `run_classifier.py` (in one driver process, as
tests/test_bad_input.py does) and must exit 1 with one `error:` line and the
prepared output_dir untouched. API cases must raise the toolkit's UserError
and leave the model exactly as it was: every variable's value, trainable
flag and path, the adapters, heads and active setup. The needless refusals
the issue lists must now be accepted.
"""

import collections
import csv
import json
import os
import struct
import zipfile

import numpy as np
import pytest

from adapter_bert import adapters
from adapter_bert.adapters import composition
from adapter_bert.data import conll
from adapter_bert.data import ner_pipeline
from adapter_bert.data import user_data
from adapter_bert.errors import UserError
from adapter_bert.errors import clip_value
from adapter_bert.model import modeling
from adapter_bert.storage import torch_formats
import test_bad_input as battery
from test_huggingface import _hf_dir_of
import tiny_fixtures as fx


# --- Malformed files. ---------------------------------------------------------


def _split_safetensors(path):
  with open(path, "rb") as f:
    data = f.read()
  (size,) = struct.unpack("<Q", data[:8])
  return json.loads(data[8:8 + size]), data[8 + size:]


def _join_safetensors(path, header_text, body):
  raw = header_text.encode("utf-8")
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)) + raw + body)


def _two_of_a_size(header):
  """Two tensor names of the same dtype and byte length."""
  by_size = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    begin, end = info["data_offsets"]
    key = (info["dtype"], end - begin)
    if key in by_size:
      return by_size[key], name
    by_size[key] = name
  raise AssertionError("no two tensors of one size")


def broken_safetensors(path, how):
  """Rewrites a valid safetensors file at `path` broken in one way:

  "negative": a tensor's begin offset negative (Python slicing would read
  another tensor's bytes); "overlap": two tensors sharing the same bytes;
  "duplicate": a tensor name listed twice in the header (the last would win).
  """
  header, body = _split_safetensors(path)
  first, second = _two_of_a_size(header)
  if how == "negative":
    begin, end = header[first]["data_offsets"]
    header[first]["data_offsets"] = [begin - len(body), end]
    text = json.dumps(header)
  elif how == "overlap":
    header[second]["data_offsets"] = list(header[first]["data_offsets"])
    text = json.dumps(header)
  elif how == "duplicate":
    text = json.dumps(header)
    entry = json.dumps({first: header[second]})[1:-1]
    text = text[:-1] + ", " + entry + "}"
  else:
    raise ValueError(how)
  _join_safetensors(path, text, body)


def tiny_model_dir(root):
  """A tiny BERT written by tiny_fixtures; its files."""
  return fx.write_model(os.path.join(root, "google"))


def hf_dir(root, name, google_files):
  google = modeling.BertAdapterModel.from_pretrained(
      google_files["bert_config_file"], vocab_file=google_files["vocab_file"],
      init_checkpoint=google_files["init_checkpoint"])
  return _hf_dir_of(google, os.path.join(root, name))


# --- Command line. ------------------------------------------------------------


def _adapter_config_file(root, name, config):
  path = os.path.join(root, name + ".json")
  with open(path, "w") as f:
    json.dump(config, f)
  return path


PFEIFFER = {"architecture": "bottleneck", "mh_adapter": False,
            "output_adapter": True, "reduction_factor": 4,
            "non_linearity": "relu"}


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("hostile"))
  base = fx.make_job(root)
  google = {k: base[k] for k in ("bert_config_file", "vocab_file",
                                 "init_checkpoint")}
  p = {"base": base}
  for how in ("negative", "overlap", "duplicate"):
    d = hf_dir(root, "hf_" + how, google)
    broken_safetensors(os.path.join(d, "model.safetensors"), how)
    p["hf_" + how] = d
  d = hf_dir(root, "hf_eps", google)
  with open(os.path.join(d, "config.json")) as f:
    config = json.load(f)
  config["layer_norm_eps"] = "auto"
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(config, f)
  p["hf_eps"] = d
  p["cfg_mh_string"] = _adapter_config_file(
      root, "mh_string", dict(PFEIFFER, mh_adapter="false"))
  p["cfg_leave_out_string"] = _adapter_config_file(
      root, "leave_out_string", dict(PFEIFFER, leave_out="0,1"))
  p["cfg_leave_out_99"] = _adapter_config_file(
      root, "leave_out_99", dict(PFEIFFER, leave_out=[0, 99]))
  p["cfg_huge_value"] = _adapter_config_file(
      root, "huge_value", dict(PFEIFFER, non_linearity="x" * 10_000_000))
  return p


def _cli_cases(p):
  """(id, flag overrides, expected parts of the one error line)."""
  def hf(key):
    return {"init_checkpoint": p[key],
            "bert_config_file": os.path.join(p[key], "config.json"),
            "adapter_size": None}
  return [
      ("safetensors_negative_offsets", hf("hf_negative"),
       ["model.safetensors", "not a valid safetensors file"]),
      ("safetensors_overlapping_tensors", hf("hf_overlap"),
       ["model.safetensors", "not a valid safetensors file"]),
      ("safetensors_duplicate_name", hf("hf_duplicate"),
       ["model.safetensors", "twice"]),
      ("hf_layer_norm_eps_auto", hf("hf_eps"),
       ["config.json", "layer_norm_eps", "auto", "a number"]),
      ("mh_adapter_a_string", {"adapter_config": p["cfg_mh_string"],
                               "adapter_size": None},
       ["mh_adapter=false", "(str)", "true or false"]),
      ("leave_out_a_string", {"adapter_config": p["cfg_leave_out_string"],
                              "adapter_size": None},
       ["leave_out=0,1", "a list of integers"]),
      ("leave_out_out_of_range", {"adapter_config": p["cfg_leave_out_99"],
                                  "adapter_size": None},
       ["leave_out", "99", "0..1"]),
      ("a_ten_megabyte_value", {"adapter_config": p["cfg_huge_value"],
                                "adapter_size": None},
       ["non_linearity", "characters)", "is not one of"]),
  ]


CLI_IDS = [c[0] for c in _cli_cases({k: "/x" for k in (
    "hf_negative", "hf_overlap", "hf_duplicate", "hf_eps", "cfg_mh_string",
    "cfg_leave_out_string", "cfg_leave_out_99", "cfg_huge_value")})]


@pytest.fixture(scope="module")
def cli_results(cli_inputs, tmp_path_factory):
  root = {"base": cli_inputs["base"],
          "runs": str(tmp_path_factory.mktemp("hostile_runs")),
          "io": str(tmp_path_factory.mktemp("hostile_io"))}
  jobs = [battery._prepare_case((case_id, overrides, parts, {}), root)
          for case_id, overrides, parts in _cli_cases(cli_inputs)]
  before = {job["id"]: battery.snapshot(job["watched"]) for job in jobs}
  work_dir = os.path.join(root["io"], "driver")
  os.makedirs(work_dir)
  outputs = battery._run_driver(jobs, work_dir)
  return {job["id"]: dict(job, code=outputs[job["id"]][0],
                          stdout=outputs[job["id"]][1],
                          stderr=outputs[job["id"]][2],
                          before=before[job["id"]],
                          after=battery.snapshot(job["watched"]))
          for job in jobs}


@pytest.mark.parametrize("case_id", CLI_IDS)
def test_command_line_case(case_id, cli_inputs, cli_results):
  expected = {c[0]: c[2] for c in _cli_cases(cli_inputs)}[case_id]
  r = cli_results[case_id]
  report = "exit %s\nstderr:\n%s" % (r["code"], r["stderr"][-3000:])
  assert r["code"] == 1, report
  assert "Traceback" not in r["stdout"] + r["stderr"], report
  messages = [line for line in r["stderr"].splitlines()
              if line.strip() and not battery._LOG_LINE.match(line)]
  assert len(messages) == 1 and messages[0].startswith("error: "), report
  for part in expected:
    assert part in messages[0], "%r not in %r" % (part, messages[0])
  assert len(messages[0]) < 2100, "a %d-character line" % len(messages[0])
  assert r["after"] == r["before"], "%s changed" % r["watched"]


# --- Readers, through the API. ------------------------------------------------


def _tensors(seed=0):
  rng = np.random.default_rng(seed)
  return {"a": rng.normal(size=(3, 4)).astype(np.float32),
          "b": rng.normal(size=(3, 4)).astype(np.float32),
          "c": np.arange(5, dtype=np.int64)}


@pytest.mark.parametrize("how", ["negative", "overlap", "duplicate"])
def test_a_malformed_safetensors_file_is_refused(tmp_path, how):
  path = str(tmp_path / "t.safetensors")
  torch_formats.write_safetensors(path, _tensors())
  for name, value in torch_formats.read_safetensors(path).items():
    np.testing.assert_array_equal(value, _tensors()[name])
  broken_safetensors(path, how)
  with pytest.raises(UserError, match="t.safetensors"):
    torch_formats.read_safetensors(path)


def test_a_dtype_numpy_cannot_hold_is_one_line(tmp_path):
  path = str(tmp_path / "f8.safetensors")
  _join_safetensors(path, json.dumps({"x": {
      "dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}}), bytes(8))
  with pytest.raises(UserError, match="tensor x has dtype F8_E4M3"):
    torch_formats.read_safetensors(path)


def test_a_torch_storage_shorter_than_its_pickle_says_is_refused(tmp_path):
  path = str(tmp_path / "pytorch_model.bin")
  torch_formats.write_torch_bin(path, {"w": np.ones((4, 4), np.float32)})
  np.testing.assert_array_equal(torch_formats.read_torch_bin(path)["w"],
                                np.ones((4, 4), np.float32))
  with zipfile.ZipFile(path) as z:
    entries = {n: z.read(n) for n in z.namelist()}
  storage = [n for n in entries if "/data/" in n]
  assert len(storage) == 1
  entries[storage[0]] = entries[storage[0]][:-4 * 4]  # 12 floats, not 16.
  with zipfile.ZipFile(path, "w") as z:
    for name, raw in entries.items():
      z.writestr(name, raw)
  with pytest.raises(UserError, match="holds 12 elements; its pickle says 16"):
    torch_formats.read_torch_bin(path)


@pytest.mark.parametrize("field,value,allowed", [
    ("mh_adapter", "false", "true or false"),
    ("leave_out", "0,1", "a list of integers"),
    ("leave_out", [0, True], "a list of integers"),
    ("reduction_factor", "16", "a number > 0"),
    ("dropout", "0.1", "a number"),
    ("init_weights_seed", 1.5, "an integer or null"),
])
def test_config_fields_are_typed_as_declared(field, value, allowed):
  with pytest.raises(UserError) as e:
    adapters.config_from_dict(dict(PFEIFFER, **{field: value}))
  assert field in str(e.value) and allowed in str(e.value)


def test_config_messages_cut_long_values():
  with pytest.raises(UserError) as e:
    adapters.config_from_dict(dict(PFEIFFER, mh_adapter="y" * 1_000_000))
  assert "(1000000 characters)" in str(e.value)
  assert len(str(e.value)) < 300
  assert len(str(UserError("z" * 10_000_000))) < 2100
  assert clip_value("a\nb") == "a b"


def test_csv_with_a_bom_and_a_200_kb_field_is_read(tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  long_text = "word " * 40_000  # 200 KB, over the csv module's 128 KiB.
  with open(data / "train.csv", "w", encoding="utf-8-sig", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["text", "label"])
    writer.writerow(["a short one", "pos"])
    writer.writerow([long_text, "neg"])
  with open(data / "dev.jsonl", "w", encoding="utf-8-sig") as f:
    f.write(json.dumps({"text": "fine", "label": "pos"}) + "\n")
  processor = user_data.TableProcessor(text_a_column="text",
                                       label_column="label")
  train = processor.get_train_examples(str(data))
  assert [e.label for e in train] == ["pos", "neg"]
  assert train[1].text_a == long_text
  assert [e.text_a for e in processor.get_dev_examples(str(data))] == ["fine"]


def test_conll_labels_are_closed_over_entity_types(tmp_path):
  vocab_file, _ = fx.write_vocab(str(tmp_path))
  train = "Paris NNP B-NP B-LOC\nis VBZ B-VP O\n\nRome NNP B-NP B-LOC\n"
  assert conll.label_list(conll.read_conll(
      _write(tmp_path / "t.txt", train))) == ["O", "B-LOC", "I-LOC"]
  for dev, unseen in (("New NNP B-NP B-LOC\nYork NNP I-NP I-LOC\n", None),
                      ("Bob NNP B-NP B-PER\n", "B-PER")):
    data_dir = tmp_path / ("unseen" if unseen else "seen")
    data_dir.mkdir()
    _write(data_dir / "train.txt", train)
    _write(data_dir / "valid.txt", dev)
    data = ner_pipeline.NerData(str(data_dir), vocab_file, True, 16)
    data.set_labels(conll.label_list(data.sentences("train")))
    if unseen is None:
      data.check_labels("dev")  # I-LOC: LOC was seen (as B-LOC only).
    else:
      with pytest.raises(UserError, match=unseen):
        data.check_labels("dev")


def _write(path, text):
  path.write_text(text)
  return str(path)


# --- The model after a failed call. -------------------------------------------


def tiny_config():
  return modeling.BertConfig(
      vocab_size=40, hidden_size=16, num_hidden_layers=2,
      num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
      type_vocab_size=2)


def _features():
  ids = np.array([[2, 5, 6, 3, 0], [2, 7, 3, 0, 0]], np.int32)
  return {"input_ids": ids, "input_mask": (ids > 0).astype(np.int32),
          "segment_ids": np.zeros_like(ids)}


def state(model):
  """Everything a failed call must leave as it was."""
  return {
      "variables": [(v.path, v.trainable, v.numpy().tobytes())
                    for v in model.weights],
      "adapters": sorted(model.adapter_configs),
      "heads": sorted(model.heads),
      "active": repr(model.active_setup()),
  }


def assert_same_state(before, after):
  assert [v[0] for v in after["variables"]] == [
      v[0] for v in before["variables"]], "variables added or taken away"
  assert after == before


def _saved_adapterhub_adapter(tmp_path):
  model = modeling.BertAdapterModel(tiny_config())
  model.add_adapter("sst", "pfeiffer")
  model.add_classification_head("sst", 2, layers=2, use_pooler=False)
  model.set_active_adapters("sst")
  model(_features())
  directory = str(tmp_path / "ah")
  model.save_adapter(directory, "sst", format="adapterhub")
  return directory


def _fresh_model():
  model = modeling.BertAdapterModel(tiny_config())
  model.add_adapter("other", "lora")
  model.add_classification_head("other", 3)
  model.set_active_adapters("other")
  model(_features())
  return model


@pytest.mark.parametrize("damage", [
    "head_weights_missing", "head_num_labels_wrong", "head_num_labels_string",
    "adapter_weights_missing"])
def test_a_failed_adapterhub_load_leaves_the_model_as_it_was(tmp_path,
                                                             damage):
  directory = _saved_adapterhub_adapter(tmp_path)
  model = _fresh_model()
  name = model.load_adapter(directory, load_as="good")  # It loads whole.
  model.delete_adapter(name)
  model.delete_head(name)
  before = state(model)
  head_config = os.path.join(directory, "head_config.json")
  with open(head_config) as f:
    record = json.load(f)
  if damage == "head_weights_missing":
    for f in ("pytorch_model_head.bin", "model_head.safetensors"):
      if os.path.exists(os.path.join(directory, f)):
        os.remove(os.path.join(directory, f))
    expected = "no head weights"
  elif damage == "adapter_weights_missing":
    for f in ("pytorch_adapter.bin", "adapter.safetensors"):
      if os.path.exists(os.path.join(directory, f)):
        os.remove(os.path.join(directory, f))
    expected = "no adapter weights"
  else:
    record["config"]["num_labels"] = (5 if damage == "head_num_labels_wrong"
                                      else "2")
    expected = ("output_weights is \\[2, 16\\] there, \\[5, 16\\] here"
                if damage == "head_num_labels_wrong"
                else "num_labels=2 is not an integer")
  with open(head_config, "w") as f:
    json.dump(record, f)
  with pytest.raises(UserError, match=expected):
    model.load_adapter(directory)
  assert_same_state(before, state(model))


def test_delete_head_and_delete_adapter_untrack_their_variables():
  model = _fresh_model()
  before = state(model)
  model.add_classification_head("extra", 4, layers=2)
  model.add_adapter("more", "pfeiffer")
  model.set_active_adapters("more")
  model.active_head = "extra"
  model(_features())
  assert len(model.weights) > len(before["variables"])
  model.delete_head("extra")
  model.delete_adapter("more")
  model.set_active_adapters("other")
  model.active_head = None
  assert_same_state(before, state(model))
  # Added again: the model holds its variables once, not twice.
  model.add_classification_head("extra", 4, layers=2)
  head = [v.path for v in model.heads["extra"].weights]
  assert head
  assert collections.Counter(v.path for v in model.weights) == (
      collections.Counter(v[0] for v in before["variables"])
      + collections.Counter(head))


def test_a_failed_add_adapter_leaves_the_model_as_it_was():
  model = _fresh_model()
  before = state(model)
  for config in (dict(PFEIFFER, leave_out=[0, 7]),
                 dict(PFEIFFER, mh_adapter="false")):
    with pytest.raises(UserError):
      model.add_adapter("bad", config)
    assert_same_state(before, state(model))


def test_batch_split_misuse_is_the_toolkits_error():
  model = modeling.BertAdapterModel(tiny_config())
  model.add_adapter("a", "pfeiffer")
  model.add_adapter("b", "pfeiffer")
  model.add_classification_head("a", 2)
  model.add_classification_head("b", 2)
  model.set_active_adapters(composition.BatchSplit("a", "b",
                                                   batch_sizes=[1, 2]))
  with pytest.raises(UserError, match="needs batches of 3 examples"):
    model(_features())
  model.set_active_adapters(composition.MultiTask("a", "b"))
  with pytest.raises(UserError, match="task_ids must be 0..1"):
    model(dict(_features(), task_ids=np.array([0, 2], np.int32)))
