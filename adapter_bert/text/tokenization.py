# coding=utf-8
"""BERT WordPiece tokenization, in Python and inside the TensorFlow graph.

Two tokenizers that give the same ids:

* `FullTokenizer` follows the semantics of the original BERT release
  (google-research/bert `tokenization.py`): a `BasicTokenizer` (clean the text,
  isolate CJK ideographs, split on whitespace, optionally lower-case and strip
  accents, split off punctuation) followed by a greedy longest-match-first
  `WordpieceTokenizer`. It is the reference.

* `InGraphTokenizer` is a `tf.Module` that does the same thing with TensorFlow
  and tensorflow-text ops, so it runs inside `tf.data` pipelines and inside an
  exported SavedModel (its tables are tracked by the module and saved with
  it). It does not use tf_text's `BertTokenizer`, whose normalisation differs
  from the original (ICU case folding instead of Python's `str.lower()`, a
  byte limit on words instead of a character limit, other punctuation and
  control-character sets). Instead every character class is built from
  Python's own `unicodedata` when the module is constructed, and lower-casing
  plus accent stripping is a per-character table computed with Python's
  `str.lower()` and `unicodedata.normalize("NFD")`:

    1. invalid UTF-8 is dropped (as `bytes.decode("utf-8", "ignore")` does);
    2. NUL, U+FFFD and Cc/Cf characters other than tab/newline/CR are removed
       and every character Python splits on (`str.isspace()`, category Zs) is
       replaced by a space;
    3. spaces are put around CJK ideographs (the original code point ranges);
    4. with lower-casing: a capital sigma in Python's word-final context is
       turned into a final sigma (Python's `str.lower()` is context
       sensitive there), then each character is replaced by the NFD form of
       its Python lower-case with non-spacing marks of non-zero combining
       class removed, the few spacing marks of non-zero combining class are
       put in canonical order, and the remaining non-spacing marks (combining
       class 0) are removed;
    5. spaces are put around each punctuation character (ASCII 33-47,
       58-64, 91-96, 123-126 and Unicode categories P*) and the text is
       split on spaces;
    6. words longer than 200 characters become "[UNK]"; other words go
       through tf_text's `FastWordpieceTokenizer` (greedy longest match
       first, "##" continuation), whose unmatched words become "[UNK]".

  Rows that are pure ASCII (most English text) skip the Unicode tables of
  steps 1-4 and use the ASCII part of the classes and ASCII lower-casing,
  which is the same thing for them.

Known divergence: none found. Checked on every sentence of the GLUE MRPC,
SST-2 and RTE files, on every assigned code point alone and in cased,
sigma and combining-mark contexts (both casings), and on random mixtures.
The in-graph tokenizer reproduces the Python tokenizer *running under the
same Python*: its tables come from that interpreter's Unicode database
(Unicode 14.0 for Python 3.11), so a SavedModel exported under one Python
version keeps that version's Unicode data while `FullTokenizer` follows
whichever Python runs it. Inputs that a UTF-8 tensor cannot hold (a `str`
with lone surrogates) exist only on the Python side.
"""

import collections
import functools
import re
import types
import unicodedata

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from adapter_bert import errors

# Words longer than this many characters become the unknown token.
MAX_INPUT_CHARS_PER_WORD = 200

# The CJK Unified Ideographs blocks (and extensions / compatibility blocks) as
# listed by the original BERT tokenizer. Hangul, Hiragana and Katakana are not
# in it on purpose: those scripts are written with spaces.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)

# Models whose case handling the original release knew by name.
_KNOWN_UNCASED_MODELS = (
    "uncased_L-24_H-1024_A-16",
    "uncased_L-12_H-768_A-12",
    "multilingual_L-12_H-768_A-12",
    "chinese_L-12_H-768_A-12",
)
_KNOWN_CASED_MODELS = (
    "cased_L-12_H-768_A-12",
    "cased_L-24_H-1024_A-16",
    "multi_cased_L-12_H-768_A-12",
)

_SURROGATES = (0xD800, 0xDFFF)
_MAX_CODE_POINT = 0x10FFFF
# Default of the lower-casing table: a byte that valid UTF-8 never contains.
_NOT_IN_TABLE = b"\xff"


# ---------------------------------------------------------------------------
# Text helpers.
# ---------------------------------------------------------------------------


def convert_to_unicode(text):
  """Returns `text` as `str`, decoding UTF-8 bytes (invalid bytes are dropped).

  Args:
    text: `str` or `bytes`.

  Returns:
    The text as `str`.

  Raises:
    ValueError: if `text` is neither `str` nor `bytes`.
  """
  if isinstance(text, str):
    return text
  if isinstance(text, bytes):
    return text.decode("utf-8", "ignore")
  raise ValueError("Unsupported string type: %s" % type(text))


def printable_text(text):
  """Returns `text` as `str`, suitable for printing or logging."""
  return convert_to_unicode(text)


def whitespace_tokenize(text):
  """Strips `text` and splits it on runs of whitespace (Python's definition)."""
  text = text.strip()
  if not text:
    return []
  return text.split()


def load_vocab(vocab_file):
  """Loads a WordPiece vocabulary file: one token per line, id = line number.

  As in the original, each line is stripped of surrounding whitespace; a
  token seen twice keeps the id of its last line (every line still takes an
  id).

  Args:
    vocab_file: path of the vocabulary (local or any `tf.io.gfile` path).

  Returns:
    `collections.OrderedDict` mapping token (str) to id (int).

  Raises:
    errors.UserError: if the file is missing, unreadable or not UTF-8.
  """
  path = str(vocab_file)
  try:
    if not tf.io.gfile.exists(path):
      raise errors.UserError("Vocabulary file not found: %s" % path)
    if tf.io.gfile.isdir(path):
      raise errors.UserError(
          "Vocabulary file %s is a directory, expected a vocab.txt file" % path)
    with tf.io.gfile.GFile(path, "rb") as reader:
      data = reader.read()
  except (tf.errors.OpError, OSError) as e:
    raise errors.UserError("Cannot read vocabulary file %s: %s" % (path, e))
  lines = data.split(b"\n")
  if lines and not lines[-1]:
    lines.pop()  # The newline that ends the last line starts no new line.
  vocab = collections.OrderedDict()
  for index, line in enumerate(lines):
    try:
      token = line.decode("utf-8")
    except UnicodeDecodeError:
      raise errors.UserError("Vocabulary file %s line %d is not valid UTF-8"
                             % (path, index + 1))
    vocab[token.strip()] = index
  if not vocab:
    raise errors.UserError("Vocabulary file %s is empty" % path)
  return vocab


def convert_by_vocab(vocab, items):
  """Maps each item of `items` through the dict `vocab`."""
  return [vocab[item] for item in items]


def convert_tokens_to_ids(vocab, tokens):
  return convert_by_vocab(vocab, tokens)


def convert_ids_to_tokens(inv_vocab, ids):
  return convert_by_vocab(inv_vocab, ids)


def _checkpoint_model_name(init_checkpoint):
  """Returns the directory name that names a checkpoint's model, or None."""
  path = str(init_checkpoint).rstrip("/")
  m = re.match(r"^.*?([A-Za-z0-9_-]+)/bert_model\.ckpt", path)
  if m:
    return m.group(1)
  parts = path.split("/")
  if len(parts) >= 2 and ".ckpt" in parts[-1]:
    return parts[-2] or None  # .../<model>/model.ckpt-123
  return parts[-1] or None  # A checkpoint directory.


def _casing_of_model_name(name):
  """Returns "uncased", "cased" or None for a checkpoint directory name."""
  if name in _KNOWN_UNCASED_MODELS:
    return "uncased"
  if name in _KNOWN_CASED_MODELS:
    return "cased"
  words = set(w.lower() for w in re.split(r"[^A-Za-z0-9]+", name))
  if "uncased" in words and "cased" not in words:
    return "uncased"
  if "cased" in words and "uncased" not in words:
    return "cased"
  return None


def casing_of_checkpoint(init_checkpoint):
  """"uncased", "cased" or None (unknown), read from the checkpoint's
  directory name as `validate_case_matches_checkpoint` reads it."""
  name = _checkpoint_model_name(init_checkpoint) if init_checkpoint else None
  return _casing_of_model_name(name) if name else None


def validate_case_matches_checkpoint(do_lower_case, init_checkpoint):
  """Checks that `do_lower_case` agrees with the checkpoint's casing.

  The casing is read from the checkpoint's directory name: Google's released
  model names, or any name with a word "uncased" / "cased" (separated by
  `_`, `-` or `.`), e.g. `minilm_l6_h384_uncased`. Unknown names pass.

  Args:
    do_lower_case: the value of the --do_lower_case flag.
    init_checkpoint: the --init_checkpoint path (may be empty or None).

  Raises:
    errors.UserError: if the flag contradicts the checkpoint's casing.
  """
  if not init_checkpoint:
    return
  name = _checkpoint_model_name(init_checkpoint)
  if not name:
    return
  casing = _casing_of_model_name(name)
  if casing == "uncased" and not do_lower_case:
    raise errors.UserError(
        "--do_lower_case=False but --init_checkpoint %s is an uncased model "
        "(%s); set --do_lower_case=True" % (init_checkpoint, name))
  if casing == "cased" and do_lower_case:
    raise errors.UserError(
        "--do_lower_case=True but --init_checkpoint %s is a cased model (%s); "
        "set --do_lower_case=False" % (init_checkpoint, name))


# ---------------------------------------------------------------------------
# Character classes (the original's definitions).
# ---------------------------------------------------------------------------


def _is_whitespace(char):
  """Whether `char` counts as whitespace when cleaning text."""
  if char in (" ", "\t", "\n", "\r"):
    return True
  return unicodedata.category(char) == "Zs"


def _is_control(char):
  """Whether `char` is a control character removed when cleaning text."""
  if char in ("\t", "\n", "\r"):
    return False
  return unicodedata.category(char) in ("Cc", "Cf")


def _is_punctuation(char):
  """Whether `char` is split off as its own token."""
  cp = ord(char)
  # All non-alphanumeric ASCII characters count, even those Unicode files
  # as symbols ("^", "$", "`").
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(char).startswith("P")


def _is_chinese_char(cp):
  """Whether code point `cp` is a CJK ideograph."""
  if cp < 0x3400:  # Most text: nothing below is in a CJK block.
    return False
  for lo, hi in _CJK_RANGES:
    if lo <= cp <= hi:
      return True
  return False


# ---------------------------------------------------------------------------
# Python tokenizers.
# ---------------------------------------------------------------------------


class BasicTokenizer(object):
  """Cleans text, splits on spaces and punctuation, optionally lower-cases."""

  def __init__(self, do_lower_case=True):
    """Constructs a BasicTokenizer.

    Args:
      do_lower_case: whether to lower-case and strip accents.
    """
    self.do_lower_case = do_lower_case

  def tokenize(self, text):
    """Returns the list of basic tokens (str) of `text`."""
    text = convert_to_unicode(text)
    text = self._clean_text(text)
    text = self._tokenize_chinese_chars(text)
    split_tokens = []
    for token in whitespace_tokenize(text):
      if self.do_lower_case:
        token = token.lower()
        token = self._run_strip_accents(token)
      split_tokens.extend(self._run_split_on_punc(token))
    return whitespace_tokenize(" ".join(split_tokens))

  def _run_strip_accents(self, text):
    """Decomposes `text` (NFD) and drops the non-spacing marks."""
    text = unicodedata.normalize("NFD", text)
    return "".join(c for c in text if unicodedata.category(c) != "Mn")

  def _run_split_on_punc(self, text):
    """Splits `text` so that every punctuation character is its own token."""
    output = []
    start_new_word = True
    for char in text:
      if _is_punctuation(char):
        output.append([char])
        start_new_word = True
      else:
        if start_new_word:
          output.append([])
        start_new_word = False
        output[-1].append(char)
    return ["".join(x) for x in output]

  def _tokenize_chinese_chars(self, text):
    """Puts spaces around every CJK ideograph."""
    output = []
    for char in text:
      if _is_chinese_char(ord(char)):
        output.append(" ")
        output.append(char)
        output.append(" ")
      else:
        output.append(char)
    return "".join(output)

  def _clean_text(self, text):
    """Removes invalid and control characters and normalises whitespace."""
    output = []
    for char in text:
      cp = ord(char)
      if cp == 0 or cp == 0xFFFD or _is_control(char):
        continue
      output.append(" " if _is_whitespace(char) else char)
    return "".join(output)


class WordpieceTokenizer(object):
  """Greedy longest-match-first WordPiece tokenization."""

  def __init__(self, vocab, unk_token="[UNK]",
               max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD):
    """Constructs a WordpieceTokenizer.

    Args:
      vocab: dict (or set) of the vocabulary's tokens.
      unk_token: token emitted for a word that cannot be tokenized.
      max_input_chars_per_word: longer words become `unk_token`.
    """
    self.vocab = vocab
    self.unk_token = unk_token
    self.max_input_chars_per_word = max_input_chars_per_word

  def tokenize(self, text):
    """Tokenizes already basic-tokenized text into word pieces.

    For example "unaffable" -> ["un", "##aff", "##able"].

    Args:
      text: a single token or whitespace-separated tokens.

    Returns:
      A list of word pieces (str).
    """
    text = convert_to_unicode(text)
    output_tokens = []
    for token in whitespace_tokenize(text):
      chars = list(token)
      if len(chars) > self.max_input_chars_per_word:
        output_tokens.append(self.unk_token)
        continue
      sub_tokens = []
      start = 0
      while start < len(chars):
        end = len(chars)
        piece = None
        while start < end:
          candidate = "".join(chars[start:end])
          if start > 0:
            candidate = "##" + candidate
          if candidate in self.vocab:
            piece = candidate
            break
          end -= 1
        if piece is None:
          sub_tokens = None  # The whole word is unknown.
          break
        sub_tokens.append(piece)
        start = end
      if sub_tokens is None:
        output_tokens.append(self.unk_token)
      else:
        output_tokens.extend(sub_tokens)
    return output_tokens


class FullTokenizer(object):
  """Basic tokenization followed by WordPiece, with id conversion."""

  def __init__(self, vocab_file, do_lower_case=True):
    """Constructs a FullTokenizer.

    Args:
      vocab_file: path of the WordPiece vocabulary.
      do_lower_case: whether to lower-case and strip accents.

    Raises:
      errors.UserError: if the vocabulary cannot be read.
    """
    self.vocab = load_vocab(vocab_file)
    self.inv_vocab = {v: k for k, v in self.vocab.items()}
    self.basic_tokenizer = BasicTokenizer(do_lower_case=do_lower_case)
    self.wordpiece_tokenizer = WordpieceTokenizer(vocab=self.vocab)

  def tokenize(self, text):
    """Returns the word pieces (list of str) of `text`."""
    split_tokens = []
    for token in self.basic_tokenizer.tokenize(text):
      split_tokens.extend(self.wordpiece_tokenizer.tokenize(token))
    return split_tokens

  def convert_tokens_to_ids(self, tokens):
    return convert_by_vocab(self.vocab, tokens)

  def convert_ids_to_tokens(self, ids):
    return convert_by_vocab(self.inv_vocab, ids)


# ---------------------------------------------------------------------------
# Tables for the in-graph tokenizer, computed from Python's unicodedata.
# ---------------------------------------------------------------------------


def _all_code_points():
  """Yields every Unicode scalar value (code points minus surrogates)."""
  for cp in range(0, _SURROGATES[0]):
    yield cp
  for cp in range(_SURROGATES[1] + 1, _MAX_CODE_POINT + 1):
    yield cp


@functools.lru_cache(maxsize=None)
def _characters_with_properties():
  """[(code point, category)] of all characters but unassigned/private ones.

  Unassigned (Cn) and private-use (Co) characters have no case mapping, no
  decomposition, no combining class and are neither controls, spaces nor
  punctuation, so every table below can skip them.
  """
  result = []
  for cp in _all_code_points():
    category = unicodedata.category(chr(cp))
    if category != "Cn" and category != "Co":
      result.append((cp, category))
  return result


def _to_ranges(code_points):
  """Turns an increasing list of code points into [(first, last)] runs."""
  ranges = []
  for cp in code_points:
    if ranges and ranges[-1][1] == cp - 1:
      ranges[-1][1] = cp
    else:
      ranges.append([cp, cp])
  return ranges


def _re2_class(code_points):
  """An RE2 character class matching exactly `code_points`."""
  if not code_points:
    return None
  parts = []
  for lo, hi in _to_ranges(sorted(code_points)):
    if lo == hi:
      parts.append("\\x{%X}" % lo)
    else:
      parts.append("\\x{%X}-\\x{%X}" % (lo, hi))
  return "[" + "".join(parts) + "]"


@functools.lru_cache(maxsize=None)
def _basic_classes():
  """RE2 classes for cleaning and punctuation, as BasicTokenizer defines them.

  Returns:
    A dict of character classes: "remove" (what `_clean_text` drops),
    "space" (what it or `str.split` treats as a space, except " " itself),
    their ASCII parts "ascii_remove" and "ascii_space", "cjk" (CJK
    ideographs) and "punct" (punctuation).
  """
  remove, space, punct = [], [], []
  for cp, _ in _characters_with_properties():
    char = chr(cp)
    if cp == 0 or cp == 0xFFFD or _is_control(char):
      remove.append(cp)
    elif _is_whitespace(char) or char.isspace():
      # `str.split()` also splits on U+2028/U+2029, which cleaning keeps.
      if cp != 0x20:
        space.append(cp)
    if _is_punctuation(char):
      punct.append(cp)
  cjk = "[" + "".join("\\x{%X}-\\x{%X}" % r for r in _CJK_RANGES) + "]"
  return {
      "remove": _re2_class(remove),
      "space": _re2_class(space),
      "ascii_remove": _re2_class([cp for cp in remove if cp < 0x80]),
      "ascii_space": _re2_class([cp for cp in space if cp < 0x80]),
      "cjk": cjk,
      "punct": _re2_class(punct),
  }


@functools.lru_cache(maxsize=None)
def _lower_tables():
  """Tables that reproduce `str.lower()` followed by `_run_strip_accents`.

  Returns:
    A dict with
      "keys", "values": code point -> replacement string for every character
        whose NFD(lower(char)), without non-spacing marks of non-zero
        combining class, differs from the character;
      "case_ignorable", "cased": RE2 classes of Python's Case_Ignorable
        characters and of its cased characters that are not case-ignorable
        (they decide whether a capital sigma lowers to a final sigma);
      "swaps": list of (pattern, rewrite) putting adjacent spacing marks of
        non-zero combining class in canonical order;
      "swap_any": an RE2 pattern matching any text that needs a swap;
      "nonspacing": RE2 class of all Mn characters.
  """
  keys, values = [], []
  case_ignorable, cased = [], []
  nonspacing = []
  spacing_marks = collections.defaultdict(list)  # ccc -> [cp]
  for cp, category in _characters_with_properties():
    char = chr(cp)
    ccc = unicodedata.combining(char)
    if category == "Mn":
      nonspacing.append(cp)
    elif ccc:
      spacing_marks[ccc].append(cp)
    # Probe Python's final-sigma rule. A capital sigma lowers to a final
    # sigma when the first non-case-ignorable character before it is cased
    # (and none that is cased follows).
    alone = (char + "\u03a3").lower()[-1] == "\u03c2"
    after_cased = ("A" + char + "\u03a3").lower()[-1] == "\u03c2"
    if alone:
      cased.append(cp)
    elif after_cased:
      case_ignorable.append(cp)
    # Lower-case, decompose, drop the marks that canonical ordering moves.
    mapped = "".join(
        c for c in unicodedata.normalize("NFD", char.lower())
        if not (unicodedata.combining(c) and unicodedata.category(c) == "Mn"))
    if mapped != char:
      keys.append(cp)
      values.append(mapped.encode("utf-8"))
  swaps = []
  classes = sorted(spacing_marks)
  for i, high in enumerate(classes[1:], start=1):
    lower_marks = [cp for ccc in classes[:i] for cp in spacing_marks[ccc]]
    swaps.append(("(%s)(%s)" % (_re2_class(spacing_marks[high]),
                                _re2_class(lower_marks)), r"\2\1"))
  swap_any = None
  if swaps:
    swap_any = "(?s).*(?:%s).*" % "|".join(p for p, _ in swaps)
  return {
      "keys": np.array(keys, dtype=np.int64),
      "values": np.array(values, dtype=object),
      "case_ignorable": _re2_class(case_ignorable),
      "cased": _re2_class(cased),
      "swaps": swaps,
      "swap_any": swap_any,
      "nonspacing": _re2_class(nonspacing),
  }


# ---------------------------------------------------------------------------
# In-graph tokenizer.
# ---------------------------------------------------------------------------


class InGraphTokenizer(tf.Module):
  """BERT tokenization as TensorFlow ops, with the same ids as FullTokenizer.

  Usable in `tf.data` (`dataset.batch(n).map(tokenizer.tokenize)`) and as
  part of a SavedModel: all tables are tracked by this module.

  Attributes:
    do_lower_case: whether text is lower-cased and stripped of accents.
    vocab: read-only view of the `load_vocab` dict (token -> id).
    vocab_size: number of ids (lines of the vocabulary file).
    cls_id, sep_id, pad_id, unk_id: ids of [CLS], [SEP], [PAD], [UNK].
  """

  _TF_MODULE_IGNORED_PROPERTIES = (
      tf.Module._TF_MODULE_IGNORED_PROPERTIES | frozenset(("vocab",)))

  def __init__(self, vocab_file, do_lower_case=True, name=None):
    """Constructs an InGraphTokenizer.

    Args:
      vocab_file: path of the WordPiece vocabulary.
      do_lower_case: whether to lower-case and strip accents.
      name: optional module name.

    Raises:
      errors.UserError: if the vocabulary cannot be read or lacks one of
        [CLS], [SEP], [PAD], [UNK].
    """
    super().__init__(name=name)
    vocab = load_vocab(vocab_file)
    for token in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"):
      if token not in vocab:
        raise errors.UserError("Vocabulary file %s has no %s token"
                               % (vocab_file, token))
    # A read-only view: a plain dict attribute would be wrapped and walked
    # by tf.Module's tracking.
    self.vocab = types.MappingProxyType(vocab)
    self.do_lower_case = bool(do_lower_case)
    self.vocab_size = max(vocab.values()) + 1
    self.cls_id = vocab["[CLS]"]
    self.sep_id = vocab["[SEP]"]
    self.pad_id = vocab["[PAD]"]
    self.unk_id = vocab["[UNK]"]

    classes = _basic_classes()
    self._remove_pattern = classes["remove"]
    self._space_pattern = classes["space"]
    self._ascii_remove_pattern = classes["ascii_remove"]
    self._ascii_space_pattern = classes["ascii_space"]
    self._cjk_pattern = "(%s)" % classes["cjk"]
    self._punct_group = "(%s)" % classes["punct"]

    # FastWordpieceTokenizer numbers tokens by position in its list, and
    # positions are mapped back to the vocabulary's ids. Tokens that no word
    # can match are left out: the empty one (a blank line) and those with a
    # NUL character (cleaning removes NUL; the builder rejects it).
    tokens = [t for t in vocab if t and "\x00" not in t]
    ids = [vocab[t] for t in tokens]
    self._wordpiece = tf_text.FastWordpieceTokenizer(
        vocab=tokens,
        suffix_indicator="##",
        # Long words are replaced by [UNK] before this; 4 bytes per character
        # is the most UTF-8 needs.
        max_bytes_per_word=4 * MAX_INPUT_CHARS_PER_WORD,
        token_out_type=tf.int64,
        unknown_token="[UNK]",
        no_pretokenization=True,
        support_detokenization=False)
    if ids == list(range(len(ids))):
      self._position_to_id = None
    else:
      self._position_to_id = tf.constant(ids, dtype=tf.int32)

    if self.do_lower_case:
      tables = _lower_tables()
      self._lower_table = tf.lookup.StaticHashTable(
          tf.lookup.KeyValueTensorInitializer(
              tf.constant(tables["keys"], dtype=tf.int64),
              tf.constant(tables["values"], dtype=tf.string)),
          default_value=_NOT_IN_TABLE)
      self._sigma_pattern = "(%s%s*)\u03a3(%s*(?:[^%s%s]|$))" % (
          tables["cased"], tables["case_ignorable"], tables["case_ignorable"],
          tables["cased"][1:-1], tables["case_ignorable"][1:-1])
      self._swaps = tables["swaps"]
      self._swap_any = tables["swap_any"]
      self._nonspacing_pattern = tables["nonspacing"]

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def tokenize(self, texts):
    """Tokenizes a batch of texts into WordPiece ids.

    Args:
      texts: tf.string Tensor [batch] of UTF-8 texts.

    Returns:
      tf.RaggedTensor int32 [batch, (num_wordpieces)] of ids, without [CLS]
      or [SEP].
    """
    words = self.split_words(texts)  # [batch, (words)]
    num_chars = tf.strings.length(words.flat_values, unit="UTF8_CHAR")
    flat_words = tf.where(num_chars > MAX_INPUT_CHARS_PER_WORD,
                          tf.constant("[UNK]"), words.flat_values)
    pieces = self._wordpiece.tokenize(flat_words)  # [words, (pieces)]
    ids = tf.cast(pieces.flat_values, tf.int32)
    if self._position_to_id is not None:
      ids = tf.gather(self._position_to_id, ids)
    pieces = pieces.with_flat_values(ids)  # [words, (pieces)]
    return words.with_flat_values(pieces).merge_dims(1, 2)

  def split_words(self, texts):
    """BasicTokenizer in graph: [batch] strings -> [batch, (words)] strings."""
    # Pure ASCII rows (most English text) take a short path; the others are
    # gathered, processed with the Unicode tables and scattered back.
    is_ascii = tf.strings.regex_full_match(texts, "[\\x00-\\x7f]*")
    rows = tf.where(tf.logical_not(is_ascii))  # [n, 1]
    other = tf.gather_nd(texts, rows)  # [n]
    texts = tf.strings.regex_replace(texts, self._ascii_remove_pattern, "")
    texts = tf.strings.regex_replace(texts, self._ascii_space_pattern, " ")
    other = tf.strings.unicode_transcode(
        other, "UTF-8", "UTF-8", errors="ignore")
    other = tf.strings.regex_replace(other, self._remove_pattern, "")
    other = tf.strings.regex_replace(other, self._space_pattern, " ")
    other = tf.strings.regex_replace(other, self._cjk_pattern, r" \1 ")
    if self.do_lower_case:
      texts = tf.strings.lower(texts)  # ASCII only, locale independent.
      other = self._lower_and_strip_accents(other)
    texts = tf.tensor_scatter_nd_update(texts, rows, other)
    # Only " " is left of the characters Python splits on.
    texts = tf.strings.regex_replace(texts, self._punct_group, r" \1 ")
    return tf.strings.split(texts)  # [batch, (words)]

  def _lower_and_strip_accents(self, texts):
    """str.lower() then _run_strip_accents, on cleaned texts [batch]."""
    texts = tf.strings.regex_replace(texts, self._sigma_pattern,
                                     "\\1\u03c2\\2")
    chars = tf.strings.unicode_split(texts, "UTF-8")  # [batch, (chars)]
    code_points = tf.strings.unicode_decode(texts, "UTF-8")  # [batch, (chars)]
    replacement = self._lower_table.lookup(
        tf.cast(code_points.flat_values, tf.int64))
    mapped = tf.where(replacement == _NOT_IN_TABLE, chars.flat_values,
                      replacement)
    texts = tf.strings.reduce_join(chars.with_flat_values(mapped), axis=1)
    texts = self._canonical_order(texts)
    return tf.strings.regex_replace(texts, self._nonspacing_pattern, "")

  def _canonical_order(self, texts):
    """Sorts runs of spacing marks by combining class (what NFD does)."""
    if not self._swaps:
      return texts

    def needs_swap(t):
      return tf.reduce_any(tf.strings.regex_full_match(t, self._swap_any))

    def swap(t):
      for pattern, rewrite in self._swaps:
        t = tf.strings.regex_replace(t, pattern, rewrite)
      return t

    return tf.while_loop(needs_swap, lambda t: (swap(t),), (texts,))[0]

