"""GLUE processors: every task's published file layout, errors, tfds."""

import os

import pytest

from adapter_bert.data import glue_processors
from adapter_bert.errors import UserError
from adapter_bert.data.glue_processors import InputExample


def write_tsv(path, rows, bom=False, line_end="\n"):
  """Writes rows (lists of fields, or raw strings) as a GLUE tsv file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  lines = [r if isinstance(r, str) else "\t".join(r) for r in rows]
  text = "".join(line + line_end for line in lines)
  with open(path, "wb") as f:
    f.write((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
  return path


def read(task, split, data_dir):
  return glue_processors.get_processor(task).get_examples(split, str(data_dir))


# --- One test per task, in the layout the GLUE download script writes. -------


def test_cola(tmp_path):
  d = tmp_path / "CoLA"
  write_tsv(d / "train.tsv", [
      ["gj04", "1", "", "Our friends won't buy this analysis, let alone the "
                        "next one we propose."],
      ["gj04", "0", "*", "They drank the pub."],
  ])
  write_tsv(d / "dev.tsv", [["bc01", "1", "", "The sailors rode the breeze."]])
  write_tsv(d / "test.tsv", [["index", "sentence"],
                             ["0", "Bill whistled past the house."],
                             ["1", "The car honked its way down the road."]])
  train = read("cola", "train", d)
  assert train == [
      InputExample("train-0", "Our friends won't buy this analysis, let alone "
                   "the next one we propose.", None, "1"),
      InputExample("train-1", "They drank the pub.", None, "0"),
  ]
  assert read("CoLA", "dev", d) == [
      InputExample("dev-0", "The sailors rode the breeze.", None, "1")]
  test = read("cola", "test", d)
  assert [(e.guid, e.text_a, e.label, e.index) for e in test] == [
      ("test-1", "Bill whistled past the house.", "0", "0"),
      ("test-2", "The car honked its way down the road.", "0", "1")]
  p = glue_processors.get_processor("cola")
  assert p.get_labels() == ["0", "1"] and not p.is_regression
  assert p.submission_file == "CoLA.tsv"


def test_sst2(tmp_path):
  d = tmp_path / "SST-2"
  write_tsv(d / "train.tsv", [["sentence", "label"],
                              ["hide new secretions from the parental units ",
                               "0"],
                              ["the greatest musicians ", "1"]])
  write_tsv(d / "dev.tsv", [["sentence", "label"],
                            ["it 's a charming and often affecting journey . ",
                             "1"]])
  write_tsv(d / "test.tsv", [["index", "sentence"],
                             ["0", "uneasy mishmash of styles and genres ."]])
  train = read("sst-2", "train", d)
  # Text is kept verbatim, trailing space included.
  assert train == [
      InputExample("train-1", "hide new secretions from the parental units ",
                   None, "0"),
      InputExample("train-2", "the greatest musicians ", None, "1")]
  assert read("SST2", "dev", d)[0].label == "1"
  test = read("sst-2", "test", d)
  assert test == [InputExample("test-1",
                               "uneasy mishmash of styles and genres .", None,
                               "0", "0")]
  assert glue_processors.get_processor("sst2").submission_file == "SST-2.tsv"


MRPC_HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]


def test_mrpc(tmp_path):
  d = tmp_path / "MRPC"
  write_tsv(d / "train.tsv", [
      MRPC_HEADER,
      ["1", "702876", "702977", 'Amrozi called him "the witness".',
       'Referring to him as only "the witness", Amrozi accused him.'],
      ["0", "2108705", "2108831", "Yucaipa owned Dominick's.",
       "Yucaipa bought Dominick's in 1995."]], bom=True)
  write_tsv(d / "dev.tsv", [MRPC_HEADER,
                            ["1", "1355540", "1355592", "He said so.",
                             '"The pie business does not fit.']], bom=True)
  write_tsv(d / "test.tsv", [
      ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
      ["0", "1089874", "1089925", "PCCW's chief will report to Mr So.",
       "Current Chief Mike Butcher will report to So."],
      ["1", "3019446", "3019327", "Sales declined.", "Sales fell."]])
  train = read("mrpc", "train", d)
  assert train[0] == InputExample(
      "train-1", 'Amrozi called him "the witness".',
      'Referring to him as only "the witness", Amrozi accused him.', "1")
  assert (train[1].guid, train[1].label) == ("train-2", "0")
  dev = read("mrpc", "dev", d)
  assert dev == [InputExample("dev-1", "He said so.",
                              '"The pie business does not fit.', "1")]
  test = read("mrpc", "test", d)
  assert [(e.guid, e.index, e.label, e.text_b) for e in test] == [
      ("test-1", "0", "0", "Current Chief Mike Butcher will report to So."),
      ("test-2", "1", "0", "Sales fell.")]


STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1",
               "source2", "sentence1", "sentence2", "score"]


def test_stsb(tmp_path):
  d = tmp_path / "STS-B"
  write_tsv(d / "train.tsv", [
      STSB_HEADER,
      ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none",
       "A plane is taking off.", "An air plane is taking off.", "5.000"],
      ["1", "main-captions", "MSRvid", "2012test", "0004", "none", "none",
       "A man is playing a flute.", "A man is playing a flute.", "3.800"]])
  write_tsv(d / "dev.tsv", [
      STSB_HEADER,
      ["0", "main-captions", "MSRvid", "2012test", "0000", "none", "none",
       "A man with a hard hat is dancing.", "A man is dancing.", "0.5"]])
  write_tsv(d / "test.tsv", [
      STSB_HEADER[:-1],
      ["0", "main-captions", "MSRvid", "2012test", "0024", "none", "none",
       "A girl is styling her hair.", "A girl is brushing her hair."]])
  train = read("sts-b", "train", d)
  assert train[0] == InputExample("train-1", "A plane is taking off.",
                                  "An air plane is taking off.", 5.0)
  assert train[1].label == pytest.approx(3.8)
  assert isinstance(train[1].label, float)
  assert read("stsb", "dev", d)[0].label == 0.5
  test = read("STS-B", "test", d)
  assert test == [InputExample("test-1", "A girl is styling her hair.",
                               "A girl is brushing her hair.", 0.0, "0")]
  p = glue_processors.get_processor("stsb")
  assert p.is_regression and p.get_labels() is None and p.num_labels == 1


def test_qqp(tmp_path):
  d = tmp_path / "QQP"
  header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
  write_tsv(d / "train.tsv", [
      header, ["133273", "213221", "213222", "How is life as a math student?",
               "Which level of preparation is enough?", "0"]])
  write_tsv(d / "dev.tsv", [
      header, ["201359", "303345", "303346", "Why are African-Americans so "
               "beautiful?", "Why are hispanics so beautiful?", "1"]])
  write_tsv(d / "test.tsv", [
      ["id", "question1", "question2"],
      ["0", "Would the idea of Trump win?", "Would Trump win?"],
      ["1", "What is 'the cloud'?", "What's the cloud?"]])
  assert read("qqp", "train", d) == [InputExample(
      "train-1", "How is life as a math student?",
      "Which level of preparation is enough?", "0")]
  assert read("qqp", "dev", d)[0].label == "1"
  test = read("qqp", "test", d)
  assert [(e.guid, e.index, e.text_a, e.text_b, e.label) for e in test] == [
      ("test-1", "0", "Would the idea of Trump win?", "Would Trump win?", "0"),
      ("test-2", "1", "What is 'the cloud'?", "What's the cloud?", "0")]


MNLI_TRAIN_HEADER = [
    "index", "promptID", "pairID", "genre", "sentence1_binary_parse",
    "sentence2_binary_parse", "sentence1_parse", "sentence2_parse",
    "sentence1", "sentence2", "label1", "gold_label"]
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-2] + [
    "label1", "label2", "label3", "label4", "label5", "gold_label"]
MNLI_TEST_HEADER = MNLI_TRAIN_HEADER[:-2]


def mnli_row(index, a, b, labels):
  return [str(index), "31193", "31193n", "government", "( ( x ) )",
          "( y )", "(ROOT (S x))", "(ROOT (S y))", a, b] + labels


def write_mnli(d):
  write_tsv(d / "train.tsv", [
      MNLI_TRAIN_HEADER,
      mnli_row(0, "Conceptually cream skimming has two basic dimensions.",
               "Product and geography are what make cream skimming work. ",
               ["neutral", "neutral"]),
      mnli_row(7, "you know during the season", "You lose the things.",
               ["entailment", "entailment"])])
  for suffix, first in (("matched", "The new rights are nice enough"),
                        ("mismatched", "Your contribution helped make it")):
    write_tsv(d / ("dev_%s.tsv" % suffix), [
        MNLI_DEV_HEADER,
        mnli_row(3, first, "Everyone really likes them.",
                 ["neutral", "entailment", "neutral", "neutral", "neutral",
                  "contradiction"])])
    write_tsv(d / ("test_%s.tsv" % suffix), [
        MNLI_TEST_HEADER, mnli_row(0, first + " (test)", "Hypothesis.", []),
        mnli_row(1, "Second premise.", "Second hypothesis.", [])])


def test_mnli(tmp_path):
  d = tmp_path / "MNLI"
  write_mnli(d)
  train = read("mnli", "train", d)
  # MNLI guids use the index column, as in google-research/bert.
  assert train == [
      InputExample("train-0", "Conceptually cream skimming has two basic "
                   "dimensions.", "Product and geography are what make cream "
                   "skimming work. ", "neutral"),
      InputExample("train-7", "you know during the season",
                   "You lose the things.", "entailment")]
  dev = read("MNLI", "dev", d)
  # The label is the last column (gold_label), not label1.
  assert dev == [InputExample("dev_matched-3", "The new rights are nice "
                              "enough", "Everyone really likes them.",
                              "contradiction")]
  test = read("mnli", "test", d)
  assert [(e.guid, e.index, e.text_a, e.label) for e in test] == [
      ("test-0", "0", "The new rights are nice enough (test)",
       "contradiction"),
      ("test-1", "1", "Second premise.", "contradiction")]
  p = glue_processors.get_processor("mnli")
  assert p.get_labels() == ["contradiction", "entailment", "neutral"]
  assert p.submission_file == "MNLI-m.tsv"


def test_mnli_mismatched(tmp_path):
  d = tmp_path / "MNLI"
  write_mnli(d)
  p = glue_processors.get_processor("MNLI-MM")
  assert p.name == "MNLI-mm" and p.submission_file == "MNLI-mm.tsv"
  dev = p.get_dev_examples(str(d))
  assert dev == [InputExample("dev_mismatched-3", "Your contribution helped "
                              "make it", "Everyone really likes them.",
                              "contradiction")]
  test = p.get_test_examples(str(d))
  assert test[0].text_a == "Your contribution helped make it (test)"
  assert test[0].index == "0"
  # Training data is MNLI's.
  assert len(p.get_train_examples(str(d))) == 2


def test_qnli(tmp_path):
  d = tmp_path / "QNLI"
  header = ["index", "question", "sentence", "label"]
  write_tsv(d / "train.tsv", [
      header, ["0", "When did the third Digimon series begin?",
               "Unlike the two seasons before it, it was darker.",
               "not_entailment"],
      ["1", "Which missile batteries were used?", "The batteries were used.",
       "entailment"]])
  write_tsv(d / "dev.tsv", [header, ["0", "What came into force?",
                                     "The law came into force.",
                                     "entailment"]])
  write_tsv(d / "test.tsv", [["index", "question", "sentence"],
                             ["0", "What organization is devoted to Jihad?",
                              "Al-Qaeda is devoted to it."]])
  train = read("qnli", "train", d)
  assert train[0] == InputExample(
      "train-1", "When did the third Digimon series begin?",
      "Unlike the two seasons before it, it was darker.", "not_entailment")
  assert train[1].label == "entailment"
  assert read("qnli", "dev", d)[0].guid == "dev-1"
  assert read("qnli", "test", d) == [InputExample(
      "test-1", "What organization is devoted to Jihad?",
      "Al-Qaeda is devoted to it.", "entailment", "0")]


def test_rte(tmp_path):
  d = tmp_path / "RTE"
  header = ["index", "sentence1", "sentence2", "label"]
  write_tsv(d / "train.tsv", [
      header, ["0", "No Weapons of Mass Destruction Found in Iraq Yet.",
               "Weapons of Mass Destruction Found in Iraq.",
               "not_entailment"],
      ["1", "A place of sorrow became a place of celebration.",
       "Pope Benedict XVI is the new leader.", "entailment"]])
  write_tsv(d / "dev.tsv", [header, ["0", "Dana Reeve has died.",
                                     "Christopher Reeve had an accident.",
                                     "not_entailment"]])
  write_tsv(d / "test.tsv", [["index", "sentence1", "sentence2"],
                             ["0", "Mangla was summoned.",
                              "Shukla is related to Mangla."],
                             ["1", "Authorities say 200 people are held.",
                              "200 people are held."]])
  assert [(e.guid, e.label) for e in read("rte", "train", d)] == [
      ("train-1", "not_entailment"), ("train-2", "entailment")]
  assert read("rte", "dev", d)[0].text_b == "Christopher Reeve had an accident."
  test = read("rte", "test", d)
  assert [(e.guid, e.index, e.label) for e in test] == [
      ("test-1", "0", "entailment"), ("test-2", "1", "entailment")]
  assert glue_processors.get_processor("rte").get_labels() == [
      "entailment", "not_entailment"]


def test_wnli(tmp_path):
  d = tmp_path / "WNLI"
  header = ["index", "sentence1", "sentence2", "label"]
  write_tsv(d / "train.tsv", [
      header, ["0", "I stuck a pin through a carrot. When I pulled the pin "
               "out, it had a hole.", "The carrot had a hole.", "1"],
      ["1", "John couldn't see the stage with Billy in front of him because "
       "he is so short.", "John is so short.", "1"],
      ["2", "The police arrested all of the gang members.",
       "The police were trying to stop the drug trade.", "0"]])
  write_tsv(d / "dev.tsv", [header, ["0", "The drain is clogged with hair.",
                                     "The hair has to be cleaned.", "0"]])
  write_tsv(d / "test.tsv", [["index", "sentence1", "sentence2"],
                             ["0", "Maude and Dora had seen the trains.",
                              "Horses ran away when the trains came."]])
  train = read("wnli", "train", d)
  assert [(e.guid, e.label) for e in train] == [
      ("train-1", "1"), ("train-2", "1"), ("train-3", "0")]
  assert read("wnli", "dev", d)[0].label == "0"
  assert read("wnli", "test", d) == [InputExample(
      "test-1", "Maude and Dora had seen the trains.",
      "Horses ran away when the trains came.", "0", "0")]


def test_ax(tmp_path):
  write_tsv(tmp_path / "diagnostic" / "diagnostic.tsv", [
      ["index", "sentence1", "sentence2"],
      ["0", "The cat sat on the mat.", "The cat did not sit on the mat."],
      ["1", "The cat did not sit on the mat.", "The cat sat on the mat."]])
  p = glue_processors.get_processor("AX")
  # Reads diagnostic/diagnostic.tsv given the glue_data folder.
  test = p.get_test_examples(str(tmp_path))
  assert [(e.guid, e.index, e.text_a, e.label) for e in test] == [
      ("test-1", "0", "The cat sat on the mat.", "contradiction"),
      ("test-2", "1", "The cat did not sit on the mat.", "contradiction")]
  assert p.get_labels() == ["contradiction", "entailment", "neutral"]
  assert p.submission_file == "AX.tsv"
  for split in ("train", "dev"):
    with pytest.raises(UserError, match="AX has no %s set" % split):
      p.get_examples(split, str(tmp_path))


# --- Names, folders, errors. -------------------------------------------------


def test_task_names_and_unknown_task():
  expected = {"cola": "CoLA", "SST-2": "SST-2", "sst2": "SST-2",
              "Mrpc": "MRPC", "sts-b": "STS-B", "STSB": "STS-B", "qqp": "QQP",
              "mnli": "MNLI", "mnli-mm": "MNLI-mm", "qnli": "QNLI",
              "rte": "RTE", "wnli": "WNLI", "ax": "AX"}
  for name, canonical in expected.items():
    assert glue_processors.get_processor(name).name == canonical
  with pytest.raises(UserError) as info:
    glue_processors.get_processor("mrcp")
  message = str(info.value)
  assert "mrcp" in message
  for name in ("cola", "sst-2", "mrpc", "sts-b", "qqp", "mnli", "mnli-mm",
               "qnli", "rte", "wnli", "ax"):
    assert name in message


def test_glue_data_root_or_task_folder(tmp_path):
  write_tsv(tmp_path / "RTE" / "dev.tsv", [
      ["index", "sentence1", "sentence2", "label"],
      ["0", "a b", "c d", "entailment"]])
  assert read("rte", "dev", tmp_path) == read("rte", "dev", tmp_path / "RTE")


def test_missing_file_names_the_path(tmp_path):
  (tmp_path / "RTE").mkdir()
  with pytest.raises(UserError) as info:
    read("rte", "train", tmp_path / "RTE")
  assert str(tmp_path / "RTE" / "train.tsv") in str(info.value)
  with pytest.raises(UserError, match="does not exist"):
    read("rte", "train", tmp_path / "nowhere")


RTE_HEADER = ["index", "sentence1", "sentence2", "label"]


@pytest.mark.parametrize("task,rows,line,pattern", [
    ("rte", [RTE_HEADER, ["0", "a", "b", "entailment"], ["1", "a", "b"]], 3,
     "3 tab-separated columns, expected 4"),
    ("rte", [RTE_HEADER, ["0", "a", "b", "entailment", "extra"]], 2,
     "5 tab-separated columns, expected 4"),
    ("rte", [RTE_HEADER[:3], ["0", "a", "b", "entailment"]], 1, "header"),
    ("rte", [RTE_HEADER, ["0", "a", "b", "entailment"],
             ["1", "a", "b", "maybe"]], 3, "label 'maybe' is not one of"),
    ("mrpc", [MRPC_HEADER, ["2", "1", "2", "a", "b"]], 2, "label '2'"),
    ("sst-2", [["sentence", "label"], ["", "1"]], 2, "empty text"),
    ("rte", [RTE_HEADER, ["0", "a", "   ", "entailment"]], 2, "empty text"),
    ("sts-b", [STSB_HEADER, ["0", "g", "f", "y", "o", "s", "s", "a", "b",
                             "x4.0"]], 2, "score 'x4.0' is not a number"),
    ("sts-b", [STSB_HEADER, ["0", "g", "f", "y", "o", "s", "s", "a", "b",
                             "nan"]], 2, "score 'nan' is not a number"),
    ("cola", [["gj04", "1", "", "fine"], ["gj04", "1", "sentence"]], 2,
     "3 tab-separated columns, expected 4"),
    ("rte", [RTE_HEADER, "", ["1", "a", "b", "entailment"]], 2,
     "empty line"),
])
def test_malformed_rows_name_file_and_line(tmp_path, task, rows, line,
                                           pattern):
  p = glue_processors.get_processor(task)
  path = write_tsv(tmp_path / p.task_dir / "train.tsv", rows)
  with pytest.raises(UserError) as info:
    p.get_train_examples(str(tmp_path / p.task_dir))
  message = str(info.value)
  assert "%s line %d" % (path, line) in message
  assert pattern in message
  assert "\n" not in message


def test_invalid_utf8_names_line(tmp_path):
  path = tmp_path / "SST-2" / "train.tsv"
  path.parent.mkdir()
  path.write_bytes(b"sentence\tlabel\nok\t1\nbad \xff byte\t0\n")
  with pytest.raises(UserError, match=r"train.tsv line 3: not valid UTF-8"):
    read("sst-2", "train", path.parent)


def test_bom_crlf_and_trailing_blank_lines_tolerated(tmp_path):
  # A BOM before a header-less CoLA file's first field is not part of it.
  d = tmp_path / "CoLA"
  write_tsv(d / "train.tsv", [["gj04", "1", "", "Fine."],
                              ["gj04", "0", "*", "Not fine."], "", ""],
            bom=True, line_end="\r\n")
  train = read("cola", "train", d)
  assert [(e.text_a, e.label) for e in train] == [("Fine.", "1"),
                                                  ("Not fine.", "0")]
  write_tsv(d / "test.tsv", [["index", "sentence"], ["0", "x y"]], bom=True)
  assert read("cola", "test", d)[0].index == "0"


def test_quotes_and_other_characters_kept_verbatim(tmp_path):
  d = tmp_path / "RTE"
  texts = ['"quoted"', 'an unbalanced " quote', "'single' and \"\"double\"\"",
           "caf\u00e9 \u4e2d\u6587 \u00a0nbsp", 'ends with a quote"']
  rows = [RTE_HEADER] + [[str(i), t, t + " b", "entailment"]
                         for i, t in enumerate(texts)]
  write_tsv(d / "dev.tsv", rows)
  dev = read("rte", "dev", d)
  assert [e.text_a for e in dev] == texts
  assert [e.text_b for e in dev] == [t + " b" for t in texts]
  # A tab inside quotes is still a separator (no quote processing).
  write_tsv(d / "dev.tsv", [RTE_HEADER, ["0", '"a', 'b"', "c", "entailment"]])
  with pytest.raises(UserError, match="5 tab-separated columns"):
    read("rte", "dev", d)


# --- The real GLUE files. ----------------------------------------------------


@pytest.mark.parametrize("task,counts", [
    ("mrpc", (3668, 408, 1725)),
    ("sst-2", (67349, 872, 1821)),
    ("rte", (2490, 277, 3000)),
])
def test_real_data_row_counts(glue_dir, task, counts):
  p = glue_processors.get_processor(task)
  for split, count in zip(("train", "dev", "test"), counts):
    examples = p.get_examples(split, glue_dir)
    assert len(examples) == count
    assert len({e.guid for e in examples}) == count
    if split == "test":
      assert [e.index for e in examples] == [str(i) for i in range(count)]
    else:
      assert {e.label for e in examples} == set(p.get_labels())


# --- tensorflow-datasets. ----------------------------------------------------


def _tfds_rows_dataset(rows, text_features, float_label=False):
  """A tf.data.Dataset of GLUE rows, as tfds' builder would yield them."""
  import tensorflow as tf
  columns = {name: tf.constant([r[i] for r in rows], tf.string)
             for i, name in enumerate(text_features)}
  labels = [r[len(text_features)] for r in rows]
  columns["label"] = tf.constant(labels,
                                 tf.float32 if float_label else tf.int64)
  columns["idx"] = tf.constant([r[-1] for r in rows], tf.int32)
  return tf.data.Dataset.from_tensor_slices(columns)


def test_tfds_examples_through_tfds_load(tmp_path):
  import tensorflow_datasets as tfds
  requested = []

  def as_dataset(builder, split, decoders=None, read_config=None,
                 shuffle_files=False):
    del decoders, read_config, shuffle_files
    config = builder.builder_config.name
    requested.append((config, str(split)))
    if config in ("mnli", "mnli_mismatched", "ax"):
      # tfds' MNLI classes: 0 entailment, 1 neutral, 2 contradiction.
      return _tfds_rows_dataset(
          [("Premise two.", "Hypothesis two.", 2, 5),
           ("Premise one.", "Hypothesis one.", 0, 1),
           ("Premise three.", "Hypothesis three.", 1, 9)],
          ("premise", "hypothesis"))
    if config == "cola":
      return _tfds_rows_dataset([("Sentence one.", 1, 0),
                                 ("Sentence two.", 0, 1)], ("sentence",))
    if config == "stsb":
      return _tfds_rows_dataset([("A b.", "C d.", 3.25, 0)],
                                ("sentence1", "sentence2"), float_label=True)
    if config == "rte":
      labels = [-1, -1] if "test" in str(split) else [1, 0]
      return _tfds_rows_dataset([("A.", "B.", labels[0], 0),
                                 ("C.", "D.", labels[1], 1)],
                                ("sentence1", "sentence2"))
    raise AssertionError(config)

  with tfds.testing.mock_data(as_dataset_fn=as_dataset,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    mnli = glue_processors.get_processor("mnli")
    dev = mnli.get_dev_examples(None, tfds_data_dir=str(tmp_path))
    test = mnli.get_test_examples(None, tfds_data_dir=str(tmp_path))
    mm_dev = glue_processors.get_processor("mnli-mm").get_dev_examples(None)
    ax = glue_processors.get_processor("ax").get_test_examples(None)
    cola = glue_processors.get_processor("cola").get_train_examples(None)
    stsb = glue_processors.get_processor("sts-b").get_dev_examples(None)
    rte_train = glue_processors.get_processor("rte").get_train_examples(None)
    rte_test = glue_processors.get_processor("rte").get_test_examples(None)

  assert requested == [
      ("mnli", "validation_matched"), ("mnli", "test_matched"),
      ("mnli_mismatched", "validation"), ("ax", "test"), ("cola", "train"),
      ("stsb", "validation"), ("rte", "train"), ("rte", "test")]
  # Sorted by idx, tfds class ids mapped to the task's label strings.
  assert dev == [
      InputExample("dev_matched-1", "Premise one.", "Hypothesis one.",
                   "entailment"),
      InputExample("dev_matched-5", "Premise two.", "Hypothesis two.",
                   "contradiction"),
      InputExample("dev_matched-9", "Premise three.", "Hypothesis three.",
                   "neutral")]
  assert [(e.guid, e.index, e.label) for e in test] == [
      ("test-1", "1", "contradiction"), ("test-5", "5", "contradiction"),
      ("test-9", "9", "contradiction")]
  assert [e.guid for e in mm_dev] == ["dev_mismatched-1", "dev_mismatched-5",
                                      "dev_mismatched-9"]
  assert [e.index for e in ax] == ["1", "5", "9"]
  assert cola == [InputExample("train-0", "Sentence one.", None, "1"),
                  InputExample("train-1", "Sentence two.", None, "0")]
  assert stsb == [InputExample("dev-0", "A b.", "C d.", 3.25)]
  assert [e.label for e in rte_train] == ["not_entailment", "entailment"]
  assert [(e.label, e.index) for e in rte_test] == [("entailment", "0"),
                                                    ("entailment", "1")]


@pytest.mark.parametrize("task", ["sst-2", "mrpc", "qqp", "qnli", "wnli"])
def test_tfds_random_mock_data(task):
  """tfds' own random examples go through the real tfds.load path."""
  import tensorflow_datasets as tfds
  p = glue_processors.get_processor(task)
  with tfds.testing.mock_data(num_examples=3,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    dev = p.get_dev_examples(None)
    test = p.get_test_examples(None)
  assert len(dev) == 3 and len(test) == 3
  for e in dev:
    assert e.label in p.get_labels() and e.index is None
    assert e.text_a and (e.text_b is None) == (task == "sst-2")
  assert all(e.label == p.get_labels()[0] and e.index for e in test)


def test_tfds_offline_is_a_user_error(tmp_path, monkeypatch):
  """No network: the download fails fast and the user is told --data_dir."""
  import requests
  import tensorflow_datasets as tfds

  def no_network(*args, **kwargs):
    raise requests.exceptions.ConnectionError(
        "Failed to resolve 'dl.fbaipublicfiles.com' (simulated offline)")

  # Real downloads would retry for minutes before failing without network.
  monkeypatch.setattr(tfds.download.DownloadManager, "download", no_network)
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      no_network)
  empty = tmp_path / "tfds"
  empty.mkdir()
  with pytest.raises(UserError) as info:
    glue_processors.get_processor("rte").get_train_examples(
        None, tfds_data_dir=str(empty))
  message = str(info.value)
  assert "glue/rte" in message
  assert "--data_dir" in message
  assert "\n" not in message
