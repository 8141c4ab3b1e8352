"""CoNLL files: sentences of (token, ..., tag) lines, tag schemes, and
word-piece windows for token classification.

Files: one token per line, whitespace-separated columns, the tag last
(CoNLL-2003: token POS chunk NER); blank lines end sentences;
`-DOCSTART-` lines (and a file with no tags: one column) are handled.
Every line of a file has the same number of columns, and every tag is `O`
or `B-`/`I-` plus a type; anything else is one error naming the file and
line.

Schemes: IOB1 (an entity starts with `I-` unless it directly follows one
of the same type) and IOB2 (every entity starts with `B-`). Training works
in IOB2; predictions are written back in the input's scheme.

Windows: a sentence's words become word pieces; a word's label sits on its
first piece, the others are ignored. A sentence longer than a window
(max_seq_length - 2 pieces) is cut into overlapping windows (half a window
apart); each word is predicted by the window in which its first piece is
farthest from the window's edges, so no word is lost. A word of more
pieces than a window keeps its first window's worth.
"""

import re
from typing import List, NamedTuple

from adapter_bert.errors import UserError

_TAG = re.compile(r"^(O|[BI]-\S+)$")
DOCSTART = "-DOCSTART-"


class Sentence(NamedTuple):
  words: List[str]
  tags: List[str]  # As in the file ("O" everywhere when it has no tags).
  line: int  # The line number of its first token.


def read_conll(path, has_tags=None):
  """The sentences of a CoNLL file.

  Args:
    path: the file.
    has_tags: None (guess: more than one column means the last is the tag),
      True or False.

  Raises:
    UserError: naming the file and line, for a line whose column count
      differs from the file's first, a tag outside IOB, or a file without
      sentences.
  """
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().split("\n")
  except OSError as e:
    raise UserError("%s: cannot read: %s" % (path, e.strerror or e)) from None
  except UnicodeDecodeError as e:
    raise UserError("%s is not UTF-8 text (byte %d)" % (path, e.start)
                    ) from None
  sentences, words, tags, first = [], [], [], None
  columns = None

  def flush():
    nonlocal words, tags, first
    if words:
      sentences.append(Sentence(words, tags, first))
    words, tags, first = [], [], None

  for number, raw in enumerate(lines, start=1):
    line = raw.strip()
    if not line:
      flush()
      continue
    parts = line.split()
    if parts[0] == DOCSTART:
      flush()
      continue
    if columns is None:
      columns = len(parts)
      if has_tags is None:
        has_tags = columns > 1
    if len(parts) != columns:
      raise UserError("%s line %d: %d columns, expected %d as on the file's "
                      "first token line" % (path, number, len(parts),
                                            columns))
    tag = parts[-1] if has_tags else "O"
    if has_tags and not _TAG.match(tag):
      raise UserError("%s line %d: tag %r is not O, B-<type> or I-<type>"
                      % (path, number, tag))
    if first is None:
      first = number
    words.append(parts[0])
    tags.append(tag)
  flush()
  if not sentences:
    raise UserError("%s holds no sentences" % path)
  return sentences


def detect_scheme(tag_sequences):
  """"IOB1" if an entity starts with I- anywhere (after O or another
  type), else "IOB2"."""
  for tags in tag_sequences:
    prev = "O"
    for tag in tags:
      if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
        return "IOB1"
      prev = tag
  return "IOB2"


def to_iob2(tags):
  """IOB1 (or IOB2) -> IOB2: every entity's first tag B-."""
  out, prev = [], "O"
  for tag in tags:
    if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
      tag = "B-" + tag[2:]
    out.append(tag)
    prev = tag
  return out


def to_iob1(tags):
  """IOB2 -> IOB1: B- only where an entity follows one of the same type."""
  out, prev = [], "O"
  for tag in tags:
    if tag.startswith("B-") and not (prev != "O" and prev[2:] == tag[2:]):
      tag = "I-" + tag[2:]
    out.append(tag)
    prev = tag
  return out


def in_scheme(tags, scheme):
  """IOB2 tags written in `scheme`."""
  return to_iob1(tags) if scheme == "IOB1" else list(tags)


def label_list(sentences):
  """The IOB2 labels of sentences' entity types, sorted, "O" first.

  Closed over types: a type seen at all has both its B- and its I- label
  (training data whose LOC entities are all one word still lets a dev file
  hold I-LOC); only a type never seen is unknown to a model.
  """
  types = {t[2:] for s in sentences for t in s.tags if t != "O"}
  return ["O"] + sorted(p + t for t in types for p in ("B-", "I-"))


class Window(NamedTuple):
  """One model input of a sentence.

  Attributes:
    pieces: the word-piece strings, [CLS] and [SEP] not included.
    word_of_piece: for each piece, the index of its word, or -1 where the
      piece is not a word's first (ignored in loss and prediction).
    predicts: for each piece, whether this window predicts that word (the
      window in which its first piece is most central).
  """
  pieces: List[str]
  word_of_piece: List[int]
  predicts: List[bool]


def windows(words, tokenize, max_seq_length):
  """The windows of one sentence (see the module docstring).

  Args:
    words: the sentence's words.
    tokenize: callable(word) -> list of word pieces ([UNK] for none).
    max_seq_length: the model's input length (two are [CLS] and [SEP]).

  Returns:
    list of Window, covering every word once as "predicts".
  """
  size = max_seq_length - 2
  if size < 1:
    raise UserError("max_seq_length=%d leaves no room for words"
                    % max_seq_length)
  pieces, owner = [], []
  for i, word in enumerate(words):
    parts = list(tokenize(word)) or ["[UNK]"]
    parts = parts[:size]  # A word longer than a window keeps its start.
    pieces += parts
    owner += [i] + [-1] * (len(parts) - 1)
  if len(pieces) <= size:
    return [Window(pieces, owner, [o >= 0 for o in owner])]
  stride = max(1, size // 2)
  starts = list(range(0, len(pieces) - size, stride)) + [len(pieces) - size]
  # Each word's first piece goes to the window where it is most central.
  best = {}
  for w, start in enumerate(starts):
    for p in range(start, start + size):
      if owner[p] >= 0:
        margin = min(p - start, start + size - 1 - p)
        if owner[p] not in best or margin > best[owner[p]][0]:
          best[owner[p]] = (margin, w)
  out = []
  for w, start in enumerate(starts):
    span = range(start, start + size)
    out.append(Window([pieces[p] for p in span], [owner[p] for p in span],
                      [owner[p] >= 0 and best[owner[p]][1] == w
                       for p in span]))
  return out


def words_from_windows(num_words, windows_, predictions):
  """Per-word predictions from each window's per-piece ones.

  Args:
    num_words: the sentence's word count.
    windows_: its windows.
    predictions: one list per window, a label per piece.

  Returns:
    list of num_words labels.
  """
  out = [None] * num_words
  for window, labels in zip(windows_, predictions):
    for word, keep, label in zip(window.word_of_piece, window.predicts,
                                 labels):
      if keep:
        out[word] = label
  missing = [i for i, label in enumerate(out) if label is None]
  if missing:
    raise ValueError("words %s have no prediction" % missing[:5])
  return out
