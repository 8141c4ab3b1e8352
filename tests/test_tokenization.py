# coding=utf-8
"""Tests for tokenization.py: golden values, Python/in-graph parity, export."""

import csv
import os
import unicodedata

import pytest
import tensorflow as tf

from adapter_bert import errors
from adapter_bert.text import tokenization

# A tiny vocabulary; the hard-case fixture adds every character it needs.
_BASE_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "un", "##want", "##ed", "wa", "want", "runn", "##ing", "##s",
    "the", "hello", "world", "how", "are", "you", "!", "?", ",", ".",
    "a", "##a", "x", "##x", "é", "##é", "e", "##e",
    "cafe", "café", "naive", "straße", "istanbul",
]

# Texts where a BERT tokenizer most easily goes wrong.
HARD_CASES = [
    "",
    " ",
    " \t\n\r\u3000\xa0 ",
    "Hello, World! How are you?",
    "unwanted running wants",
    # Accents, composed and decomposed.
    "Café naïve résumé Ångström ÇA Crème brûlée",
    "Cafe\u0301 e\u0301\u0302 \u0301alone \u0301",
    # Case mappings that differ between str.lower() and case folding.
    "Straße STRASSE ẞ İstanbul ISTANBUL ı ﬁne ǅemal ΣΑΣ ΟΔΟΣ. ὈΔΥΣΣΕΎΣ Σ",
    "ΑΣ\u0345 Σ\u0301Α Α\u0301Σ Α'Σ Α.Σ ΑΣ' ΑΣ\u200bΑ",
    # CJK ideographs (isolated), and scripts written with spaces (not).
    "中文字符test測試 日本語ひらがなカタカナ 한국어 ㄱ \U00020000x\uF900",
    # Controls, zero-width and other format characters, odd spaces.
    "a\x00b\ufffdc\u200bd\u200ce\u200df\u2060g\ufeffh\x07i\x1bj\x7fk",
    "line\u2028sep\u2029para\x85nel\x0bvt\x0cff\x1cfs \u00adsoft\u00adhyphen",
    "\u200b\u200b", "\x00", "\ufffd",
    # Emoji, with modifiers and joiners.
    "😀 👍🏽 👨‍👩‍👧 🇫🇷 ❤️ 1⃣",
    # Punctuation: ASCII symbols count, Unicode P* counts, S* does not.
    "a.b,c;d:e!f?g$h^i`j~k|l+m=n<o>p@q#r%s&t*u(v)w[x]y{z}_-'\"\\/",
    "«guillemets» „quotes“ ‘single’ — – … ¿¡ ·・、。「」 ۔ ؟ ፧",
    "© ® ™ € £ ¥ ° ± § ¶ † ‡ ‰ ′ ″ √ ∞",
    # Mixed scripts.
    "Русский текст ΕΛΛΗΝΙΚΆ עִבְרִית العَرَبِيَّة हिन्दी ไทย Tiếng Việt",
    # Combining-class ordering of spacing marks (NFD reorders these).
    "\U0001D16D\U0001D165 \u1B44\U00016FF0 \u1B44\u034f\U00016FF0 "
    "\U0001D15F\U0001D16D",
    # Very long words: ASCII and non-ASCII, below and above 200 characters.
    "a" * 200, "a" * 201, "é" * 150, "é" * 200, "é" * 201,
    "x" * 199 + "é", "E\u0301" * 150, "中" * 250,
    "word " * 40 + "a" * 300,
]


def _write_vocab(path, tokens):
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(tokens) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
  """Tiny vocab with every character of HARD_CASES (as word start and "##")."""
  tokens = list(_BASE_VOCAB)
  chars = set()
  for text in HARD_CASES:
    lowered = text.lower()
    for form in (text, lowered, unicodedata.normalize("NFD", lowered)):
      chars.update(form)
  for c in sorted(chars):
    if c.isspace() or c == "\n":
      continue
    for token in (c, "##" + c):
      if token not in tokens:
        tokens.append(token)
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  return _write_vocab(path, tokens)


@pytest.fixture(scope="module")
def tokenizers(vocab_file):
  """{do_lower_case: (FullTokenizer, InGraphTokenizer)}."""
  return {
      lower: (tokenization.FullTokenizer(vocab_file, lower),
              tokenization.InGraphTokenizer(vocab_file, lower))
      for lower in (True, False)
  }


def _python_ids(tokenizer, texts):
  return [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(t)) for t in texts]


def _graph_ids(tokenizer, texts):
  return tokenizer.tokenize(tf.constant(texts, dtype=tf.string)).to_list()


# ---------------------------------------------------------------------------
# Golden values of the Python tokenizer.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text,lower,expected", [
    (" \tHeLLo!how  \n Are yoU?  ", True,
     ["hello", "!", "how", "are", "you", "?"]),
    (" \tHeLLo!how  \n Are yoU?  ", False,
     ["HeLLo", "!", "how", "Are", "yoU", "?"]),
    ("Héllo Naïve ÇA", True, ["hello", "naive", "ca"]),
    ("Héllo Naïve ÇA", False, ["Héllo", "Naïve", "ÇA"]),
    ("Cafe\u0301", True, ["cafe"]),
    ("Cafe\u0301", False, ["Cafe\u0301"]),
    ("Straße İstanbul", True, ["straße", "istanbul"]),
    ("ΟΔΟΣ ΣΑ", True, ["οδος", "σα"]),
    ("ah博推zz", True, ["ah", "博", "推", "zz"]),
    ("한국어 ひらがな", False, ["한국어", "ひらがな"]),
    ("a.b,c", False, ["a", ".", "b", ",", "c"]),
    ("1$2^3`4", False, ["1", "$", "2", "^", "3", "`", "4"]),
    ("«x»—y¿", False, ["«", "x", "»", "—", "y", "¿"]),
    ("a©b a€b a+b", False, ["a©b", "a€b", "a", "+", "b"]),
    ("a\x00b\ufffdc\u200bd\u200de\x07f", False, ["abcdef"]),
    ("a\tb\nc\rd\xa0e\u3000f\u2028g", False,
     ["a", "b", "c", "d", "e", "f", "g"]),
    ("a\x85b", False, ["ab"]),  # NEL is a control character, not a space.
    ("", True, []),
    (" \t\n\r\u3000 ", True, []),
    ("\u0301", True, []),  # A lone accent vanishes when stripping accents.
])
def test_basic_tokenizer_golden(text, lower, expected):
  assert tokenization.BasicTokenizer(lower).tokenize(text) == expected


def test_basic_tokenizer_accepts_utf8_bytes():
  tokenizer = tokenization.BasicTokenizer(True)
  assert tokenizer.tokenize("Café".encode("utf-8")) == ["cafe"]
  assert tokenizer.tokenize(b"ab\xffc") == ["abc"]  # Invalid bytes dropped.
  with pytest.raises(ValueError):
    tokenizer.tokenize(3)


def test_wordpiece_tokenizer_golden():
  vocab = {t: i for i, t in enumerate(_BASE_VOCAB)}
  wordpiece = tokenization.WordpieceTokenizer(vocab)
  assert wordpiece.tokenize("") == []
  assert wordpiece.tokenize("unwanted running") == [
      "un", "##want", "##ed", "runn", "##ing"]
  assert wordpiece.tokenize("unwantedX running") == ["[UNK]", "runn", "##ing"]
  assert wordpiece.tokenize("a" * 200) == ["a"] + ["##a"] * 199
  assert wordpiece.tokenize("a" * 201) == ["[UNK]"]
  # The limit counts characters, not UTF-8 bytes.
  assert wordpiece.tokenize("é" * 150) == ["é"] + ["##é"] * 149
  assert wordpiece.tokenize("é" * 201) == ["[UNK]"]


def test_full_tokenizer_golden(vocab_file):
  tokenizer = tokenization.FullTokenizer(vocab_file, do_lower_case=True)
  tokens = tokenizer.tokenize("UNwant\u00E9d,running")
  assert tokens == ["un", "##want", "##ed", ",", "runn", "##ing"]
  ids = tokenizer.convert_tokens_to_ids(tokens)
  assert ids == [_BASE_VOCAB.index(t) for t in tokens]
  assert tokenizer.convert_ids_to_tokens(ids) == tokens
  assert tokenizer.vocab["[CLS]"] == 2
  assert tokenizer.tokenize("") == []
  assert tokenizer.tokenize("  \n ") == []


def test_load_vocab_keeps_line_numbers(tmp_path):
  path = _write_vocab(tmp_path / "v.txt",
                      ["[PAD]", " a \r", "", "b", "a"])
  vocab = tokenization.load_vocab(path)
  # Stripped tokens; a repeated token keeps its last line's id.
  assert list(vocab.items()) == [("[PAD]", 0), ("a", 4), ("", 2), ("b", 3)]


def test_load_vocab_errors_name_the_path(tmp_path):
  missing = str(tmp_path / "missing.txt")
  with pytest.raises(errors.UserError, match="missing.txt"):
    tokenization.load_vocab(missing)
  with pytest.raises(errors.UserError, match="directory"):
    tokenization.load_vocab(str(tmp_path))
  bad = tmp_path / "bad.txt"
  bad.write_bytes(b"[PAD]\nok\n\xff\xfe\n")
  with pytest.raises(errors.UserError, match=r"bad\.txt line 3"):
    tokenization.load_vocab(str(bad))
  with pytest.raises(errors.UserError, match="missing.txt"):
    tokenization.FullTokenizer(missing)
  with pytest.raises(errors.UserError, match="missing.txt"):
    tokenization.InGraphTokenizer(missing)


# ---------------------------------------------------------------------------
# Checkpoint casing.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint,lower_ok", [
    ("/m/uncased_L-12_H-768_A-12/bert_model.ckpt", True),
    ("gs://b/uncased_L-24_H-1024_A-16/bert_model.ckpt", True),
    ("/m/multilingual_L-12_H-768_A-12/bert_model.ckpt", True),
    ("/m/chinese_L-12_H-768_A-12/bert_model.ckpt", True),
    ("/m/cased_L-12_H-768_A-12/bert_model.ckpt", False),
    ("/m/multi_cased_L-12_H-768_A-12/bert_model.ckpt", False),
    ("/m/minilm_l6_h384_uncased/bert_model.ckpt", True),
    ("/m/minilm_l6_h384_uncased", True),
    ("/m/minilm_l6_h384_uncased/", True),
    ("/m/my-model-cased/model.ckpt-1000", False),
])
def test_validate_case_matches_checkpoint(checkpoint, lower_ok):
  # The matching flag passes.
  tokenization.validate_case_matches_checkpoint(lower_ok, checkpoint)
  with pytest.raises(errors.UserError) as info:
    tokenization.validate_case_matches_checkpoint(not lower_ok, checkpoint)
  message = str(info.value)
  assert "\n" not in message
  assert checkpoint in message
  assert "set --do_lower_case=%s" % lower_ok in message
  assert ("uncased model" if lower_ok else "a cased model") in message


@pytest.mark.parametrize("checkpoint", [
    None, "", "/m/my_model/bert_model.ckpt", "/m/cased_vs_uncased/x.ckpt",
    "/m/uncasedish/bert_model.ckpt", "bert_model.ckpt"])
def test_validate_case_unknown_names_pass(checkpoint):
  tokenization.validate_case_matches_checkpoint(True, checkpoint)
  tokenization.validate_case_matches_checkpoint(False, checkpoint)


# ---------------------------------------------------------------------------
# Python / in-graph parity.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("lower", [True, False])
def test_in_graph_words_match_basic_tokenizer(tokenizers, lower):
  python, graph = tokenizers[lower]
  words = graph.split_words(tf.constant(HARD_CASES)).to_list()
  for text, got in zip(HARD_CASES, words):
    expected = python.basic_tokenizer.tokenize(text)
    assert [w.decode("utf-8") for w in got] == expected, repr(text)


def test_in_graph_words_match_on_every_character(tokenizers):
  """Each assigned code point, alone and next to letters and sigmas.

  With lower-casing, which runs every step of the cased path too.
  """
  python, graph = tokenizers[True]
  texts = []
  for cp in range(0x110000):
    char = chr(cp)
    if 0xD800 <= cp <= 0xDFFF or unicodedata.category(char) in ("Cn", "Co"):
      continue
    texts.append("%s A%s\u03a3 \u0391\u03a3%s\u0301" % ((char,) * 3))
  assert len(texts) > 100000
  mismatches = []
  for start in range(0, len(texts), 16384):
    batch = texts[start:start + 16384]
    words = graph.split_words(tf.constant(batch)).to_list()
    for text, got in zip(batch, words):
      expected = python.basic_tokenizer.tokenize(text)
      if [w.decode("utf-8") for w in got] != expected:
        mismatches.append(text)
  assert not mismatches, mismatches[:5]


@pytest.mark.parametrize("lower", [True, False])
def test_in_graph_ids_match_full_tokenizer(tokenizers, lower):
  python, graph = tokenizers[lower]
  expected = _python_ids(python, HARD_CASES)
  got = _graph_ids(graph, HARD_CASES)
  for text, e, g in zip(HARD_CASES, expected, got):
    assert g == e, repr(text)
  # The fixture really exercises the vocabulary, not just [UNK].
  unk = python.vocab["[UNK]"]
  assert sum(i != unk for ids in expected for i in ids) > 500


def test_in_graph_handles_invalid_utf8_like_python(tokenizers):
  python, graph = tokenizers[True]
  texts = [b"a\xe2\x82b", b"\xf0\x9f\x98x", b"\xed\xa0\x80z", b"\xc0\xafq",
           b"\xffw", b"\x80\x80abc", b"caf\xc3"]
  assert _graph_ids(graph, texts) == _python_ids(python, texts)


def test_in_graph_attributes(tokenizers, vocab_file):
  python, graph = tokenizers[True]
  assert (graph.cls_id, graph.sep_id, graph.pad_id) == (2, 3, 0)
  assert graph.vocab_size == len(python.vocab)
  assert all(isinstance(i, int) for i in (graph.cls_id, graph.sep_id,
                                          graph.pad_id, graph.vocab_size))
  ids = graph.tokenize(tf.constant(["hello world", ""]))
  assert isinstance(ids, tf.RaggedTensor)
  assert ids.dtype == tf.int32
  assert ids.to_list() == [[14, 15], []]


def test_in_graph_ids_follow_vocab_lines(tmp_path):
  """Blank and repeated vocabulary lines keep the Python ids."""
  path = _write_vocab(tmp_path / "v.txt", [
      "[PAD]", "[UNK]", "[CLS]", "[SEP]", "", "a", "##b", "a", "c", "##b",
      "d"])
  python = tokenization.FullTokenizer(path, do_lower_case=True)
  graph = tokenization.InGraphTokenizer(path, do_lower_case=True)
  texts = ["ab c d", "abb", "x", ""]
  expected = _python_ids(python, texts)
  assert expected == [[7, 9, 8, 10], [7, 9, 9], [1], []]
  assert _graph_ids(graph, texts) == expected
  assert graph.vocab_size == 11


def test_in_graph_requires_special_tokens(tmp_path):
  path = _write_vocab(tmp_path / "v.txt", ["[PAD]", "[UNK]", "[CLS]", "a"])
  with pytest.raises(errors.UserError, match=r"no \[SEP\]"):
    tokenization.InGraphTokenizer(path)


# ---------------------------------------------------------------------------
# tf.data and SavedModel.
# ---------------------------------------------------------------------------


def test_in_graph_tokenizer_in_tf_data(tokenizers):
  python, graph = tokenizers[True]
  texts = HARD_CASES[:13]
  dataset = tf.data.Dataset.from_tensor_slices(texts).batch(4).map(
      graph.tokenize)
  got = [ids for batch in dataset for ids in batch.to_list()]
  assert got == _python_ids(python, texts)


class _Exported(tf.Module):
  """What a serving model would wrap: texts -> padded ids and lengths."""

  def __init__(self, tokenizer):
    super().__init__()
    self.tokenizer = tokenizer
    self.pad_id = tokenizer.pad_id

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def __call__(self, texts):
    ids = self.tokenizer.tokenize(texts)  # [batch, (pieces)]
    return {"ids": ids.to_tensor(default_value=self.pad_id),
            "lengths": ids.row_lengths()}


def test_in_graph_tokenizer_survives_saved_model(tokenizers, tmp_path):
  python, graph = tokenizers[True]
  texts = HARD_CASES[:13]
  expected = _python_ids(python, texts)
  export_dir = str(tmp_path / "exported")
  module = _Exported(graph)
  tf.saved_model.save(module, export_dir,
                      signatures={"serving_default": module.__call__})
  # The tables travel in the SavedModel, not in Python objects.
  loaded = tf.saved_model.load(export_dir)

  out = loaded(tf.constant(texts))
  ids, lengths = out["ids"].numpy(), out["lengths"].numpy()
  assert [list(row[:n]) for row, n in zip(ids, lengths)] == expected
  out = loaded.signatures["serving_default"](texts=tf.constant(texts))
  ids, lengths = out["ids"].numpy(), out["lengths"].numpy()
  assert [list(row[:n]) for row, n in zip(ids, lengths)] == expected
  # The tokenizer's own tf.function is exported too (ragged output).
  assert loaded.tokenizer.tokenize(tf.constant(texts)).to_list() == expected


# ---------------------------------------------------------------------------
# Every sentence of the real GLUE data.
# ---------------------------------------------------------------------------

# task -> file -> text columns (0-based).
_GLUE_TEXT_COLUMNS = {
    "MRPC": {"train": (3, 4), "dev": (3, 4), "test": (3, 4)},
    "SST-2": {"train": (0,), "dev": (0,), "test": (1,)},
    "RTE": {"train": (1, 2), "dev": (1, 2), "test": (1, 2)},
}


def _glue_sentences(glue_dir):
  """Returns (sentences, expected count from the raw line counts)."""
  sentences = []
  expected = 0
  for task, files in sorted(_GLUE_TEXT_COLUMNS.items()):
    for split, columns in sorted(files.items()):
      path = os.path.join(glue_dir, task, split + ".tsv")
      with open(path, "rb") as f:
        raw = f.read()
      data_lines = raw.count(b"\n") + (0 if raw.endswith(b"\n") else 1) - 1
      expected += data_lines * len(columns)
      with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
      for line, row in enumerate(rows[1:], start=2):
        assert len(row) > max(columns), "%s line %d" % (path, line)
        sentences.extend(row[c] for c in columns)
  return sentences, expected


def test_in_graph_matches_python_on_all_glue_sentences(
    glue_dir, minilm_dir, record_property):
  sentences, expected_count = _glue_sentences(glue_dir)
  vocab_file = os.path.join(minilm_dir, "vocab.txt")
  python = tokenization.FullTokenizer(vocab_file, do_lower_case=True)
  graph = tokenization.InGraphTokenizer(vocab_file, do_lower_case=True)
  mismatches = []
  compared = 0
  for start in range(0, len(sentences), 4096):
    batch = sentences[start:start + 4096]
    got = _graph_ids(graph, batch)
    for text, ids in zip(batch, got):
      if python.convert_tokens_to_ids(python.tokenize(text)) != ids:
        mismatches.append(text)
      compared += 1
  print("GLUE parity: compared %d sentences (MRPC, SST-2, RTE; train, dev, "
        "test), %d mismatches" % (compared, len(mismatches)))
  record_property("glue_sentences_compared", compared)
  assert compared == expected_count
  assert not mismatches, mismatches[:5]
