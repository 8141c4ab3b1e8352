"""Entity-level scores exactly as the CoNLL `conlleval` script computes them.

A port of the chunk logic of the Perl conlleval (v2.2, Tjong Kim Sang and
Buchholz): a tag is "O" or "<prefix>-<type>" (B, I, and the script's E);
a chunk ends and starts where its `endOfChunk` / `startOfChunk` rules say,
so that IOB1 and IOB2 read alike: an entity starting with `I-` after `O`
is a chunk, and a type change always starts one. A predicted
chunk is correct when it starts and ends where the gold one does with the
same type. Sentence boundaries count as `O`.

  precision = 100 * correct chunks / predicted chunks
  recall    = 100 * correct chunks / gold chunks
  F1        = 2 * precision * recall / (precision + recall)
  accuracy  = 100 * tokens whose tag equals the gold tag / tokens

(0 where a denominator is 0.)
"""

import collections


def split_tag(tag):
  """("B", "PER") from "B-PER"; ("O", "") from "O"."""
  if tag == "O":
    return "O", ""
  prefix, _, kind = tag.partition("-")
  return prefix, kind


def end_of_chunk(prev_tag, tag, prev_type, kind):
  """conlleval's endOfChunk: whether a chunk ended before this token."""
  end = (prev_tag, tag) in (("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"),
                            ("E", "E"), ("E", "I"), ("E", "O"))
  if prev_tag not in ("O", ".") and prev_type != kind:
    end = True
  if prev_tag in ("]", "["):  # conlleval: chunks of length 1.
    end = True
  return end


def start_of_chunk(prev_tag, tag, prev_type, kind):
  """conlleval's startOfChunk: whether a chunk starts at this token."""
  start = (prev_tag, tag) in (("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"),
                              ("E", "E"), ("E", "I"), ("O", "E"))
  if tag not in ("O", ".") and prev_type != kind:
    start = True
  if tag in ("[", "]"):
    start = True
  return start


def _ratios(correct, guessed, gold):
  precision = 100.0 * correct / guessed if guessed else 0.0
  recall = 100.0 * correct / gold if gold else 0.0
  f1 = (2 * precision * recall / (precision + recall)
        if precision + recall else 0.0)
  return precision, recall, f1


def evaluate(gold_sentences, predicted_sentences):
  """Scores tag sequences.

  Args:
    gold_sentences: list of lists of gold tags (one list per sentence).
    predicted_sentences: the predicted tags, the same shapes.

  Returns:
    dict: "precision", "recall", "f1", "accuracy" (percent), "tokens",
    "gold_chunks", "predicted_chunks", "correct_chunks", and "types":
    {type: {"precision", "recall", "f1", "gold_chunks", "predicted_chunks",
    "correct_chunks"}} for every type seen in either.

  Raises:
    ValueError: for sentences of different lengths.
  """
  if len(gold_sentences) != len(predicted_sentences):
    raise ValueError("%d gold sentences, %d predicted"
                     % (len(gold_sentences), len(predicted_sentences)))
  correct = guessed = found = correct_tags = tokens = 0
  by_type = collections.defaultdict(lambda: [0, 0, 0])  # correct, guessed, gold
  last_correct, last_guessed = "O", "O"
  last_correct_type, last_guessed_type = "", ""
  in_correct = False

  def step(correct_tag, guessed_tag, counted):
    nonlocal correct, guessed, found, correct_tags, tokens, in_correct
    nonlocal last_correct, last_guessed, last_correct_type, last_guessed_type
    c_tag, c_type = split_tag(correct_tag)
    g_tag, g_type = split_tag(guessed_tag)
    c_end = end_of_chunk(last_correct, c_tag, last_correct_type, c_type)
    g_end = end_of_chunk(last_guessed, g_tag, last_guessed_type, g_type)
    c_start = start_of_chunk(last_correct, c_tag, last_correct_type, c_type)
    g_start = start_of_chunk(last_guessed, g_tag, last_guessed_type, g_type)
    if in_correct:
      if c_end and g_end and last_guessed_type == last_correct_type:
        in_correct = False
        correct += 1
        by_type[last_correct_type][0] += 1
      elif c_end != g_end or g_type != c_type:
        in_correct = False
    if c_start and g_start and g_type == c_type:
      in_correct = True
    if c_start:
      found += 1
      by_type[c_type][2] += 1
    if g_start:
      guessed += 1
      by_type[g_type][1] += 1
    if counted:
      if c_tag == g_tag and c_type == g_type:
        correct_tags += 1
      tokens += 1
    last_correct, last_guessed = c_tag, g_tag
    last_correct_type, last_guessed_type = c_type, g_type

  for gold, predicted in zip(gold_sentences, predicted_sentences):
    if len(gold) != len(predicted):
      raise ValueError("a sentence of %d gold tags has %d predicted"
                       % (len(gold), len(predicted)))
    for g, p in zip(gold, predicted):
      step(g, p, True)
    step("O", "O", False)  # The sentence boundary.
  if in_correct:
    correct += 1
    by_type[last_correct_type][0] += 1
  precision, recall, f1 = _ratios(correct, guessed, found)
  types = {}
  for kind, (c, g, f) in sorted(by_type.items()):
    if not kind:
      continue
    p, r, score = _ratios(c, g, f)
    types[kind] = {"precision": p, "recall": r, "f1": score,
                   "correct_chunks": c, "predicted_chunks": g,
                   "gold_chunks": f}
  return {"precision": precision, "recall": recall, "f1": f1,
          "accuracy": 100.0 * correct_tags / tokens if tokens else 0.0,
          "tokens": tokens, "gold_chunks": found, "predicted_chunks": guessed,
          "correct_chunks": correct, "types": types}


def results_lines(scores):
  """`key = value` lines of eval_results.txt: overall, then per type."""
  lines = []
  for key in ("precision", "recall", "f1", "accuracy"):
    lines.append("%s = %s" % (key, scores[key]))
  for kind, values in scores["types"].items():
    for key in ("precision", "recall", "f1"):
      lines.append("%s_%s = %s" % (kind, key, values[key]))
  return lines
