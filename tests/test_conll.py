"""CoNLL files, tag schemes, word-piece windows and conlleval's scores,
against cases worked out by hand."""

import os

import pytest

from adapter_bert.data import conll
from adapter_bert.data import conlleval
from adapter_bert.errors import UserError

SHARED = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "..", "shared", "conll2003")


def _scores(gold, predicted):
  return conlleval.evaluate(gold, predicted)


def test_conlleval_on_hand_made_cases():
  # Gold: [PER John Smith] visited [LOC New York] [LOC Boston] (IOB2).
  # Predicted: [PER John Smith] (right), [ORG New York] (wrong type),
  # [LOC Boston] (right), and a false [MISC visited].
  gold = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "B-LOC"]]
  pred = [["B-PER", "I-PER", "B-MISC", "B-ORG", "I-ORG", "B-LOC"]]
  s = _scores(gold, pred)
  # 3 gold chunks, 4 predicted, 2 correct.
  assert (s["gold_chunks"], s["predicted_chunks"], s["correct_chunks"]) == (
      3, 4, 2)
  assert s["precision"] == pytest.approx(50.0)
  assert s["recall"] == pytest.approx(200.0 / 3)
  assert s["f1"] == pytest.approx(2 * 50 * (200 / 3) / (50 + 200 / 3))
  assert s["accuracy"] == pytest.approx(100.0 * 3 / 6)  # PER, PER, B-LOC.
  assert s["types"]["LOC"]["recall"] == pytest.approx(50.0)
  assert s["types"]["ORG"]["precision"] == 0.0
  assert s["types"]["MISC"]["predicted_chunks"] == 1
  # IOB1 and IOB2 of the same entities score the same: I- after O starts a
  # chunk; two adjacent LOC need the B- in IOB1.
  iob1 = [["I-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC"]]
  assert _scores(iob1, iob1)["f1"] == 100.0
  assert _scores(gold, iob1)["f1"] == 100.0
  # An entity at the sentence end, then one at the next sentence's start:
  # the boundary closes it.
  s = _scores([["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["B-PER",
                                                                 "O"]])
  assert s["gold_chunks"] == 2 and s["correct_chunks"] == 2
  # A predicted chunk one token too long is wrong; so is a split one.
  s = _scores([["B-ORG", "O"]], [["B-ORG", "I-ORG"]])
  assert s["correct_chunks"] == 0 and s["precision"] == 0.0
  s = _scores([["B-ORG", "I-ORG"]], [["B-ORG", "B-ORG"]])
  assert (s["predicted_chunks"], s["correct_chunks"]) == (2, 0)
  # A type change inside I- tags starts a new chunk (nested types).
  s = _scores([["B-LOC", "I-LOC", "I-ORG"]], [["B-LOC", "I-LOC", "I-ORG"]])
  assert (s["gold_chunks"], s["correct_chunks"]) == (2, 2)
  lines = conlleval.results_lines(_scores(gold, pred))
  assert lines[0] == "precision = 50.0" and "LOC_recall = 50.0" in lines
  assert "LOC_precision = 100.0" in lines  # Boston, its one LOC chunk.


def test_schemes_round_trip():
  iob1 = ["I-ORG", "O", "I-MISC", "I-PER", "I-PER", "B-PER", "O", "I-LOC"]
  iob2 = conll.to_iob2(iob1)
  assert iob2 == ["B-ORG", "O", "B-MISC", "B-PER", "I-PER", "B-PER", "O",
                  "B-LOC"]
  assert conll.to_iob1(iob2) == iob1
  assert conll.detect_scheme([iob1]) == "IOB1"
  assert conll.detect_scheme([iob2]) == "IOB2"
  assert conll.in_scheme(iob2, "IOB2") == iob2


def test_reader_and_its_errors(tmp_path):
  path = tmp_path / "x.txt"
  path.write_text("-DOCSTART- -X- O O\n\nEU NNP I-NP I-ORG\nrejects VBZ "
                  "I-VP O\n\nPeter NNP I-NP I-PER\n")
  sentences = conll.read_conll(str(path))
  assert [s.words for s in sentences] == [["EU", "rejects"], ["Peter"]]
  assert sentences[0].tags == ["I-ORG", "O"] and sentences[1].line == 6
  # Closed over entity types: PER seen only as one-word entities still
  # has I-PER (a dev file may hold it).
  assert conll.label_list(sentences) == ["O", "B-ORG", "B-PER", "I-ORG",
                                         "I-PER"]
  path.write_text("EU NNP I-NP I-ORG\nrejects VBZ O\n")
  with pytest.raises(UserError, match=r"x.txt line 2: 3 columns, expected 4"):
    conll.read_conll(str(path))
  path.write_text("EU NNP I-NP X-ORG\n")
  with pytest.raises(UserError, match=r"line 1: tag 'X-ORG' is not O"):
    conll.read_conll(str(path))
  path.write_text("-DOCSTART- -X- O O\n\n")
  with pytest.raises(UserError, match="holds no sentences"):
    conll.read_conll(str(path))
  path.write_text("EU\nrejects\n\nPeter\n")  # No tags: all O.
  assert conll.read_conll(str(path))[0].tags == ["O", "O"]


def test_windows_round_trip_words_longer_and_sentences_longer():
  def tokenize(word):  # Words split into pieces of 2 characters.
    return [word[i:i + 2] if i == 0 else "##" + word[i:i + 2]
            for i in range(0, len(word), 2)]

  words = ["ab", "cdef", "g", "hijklmnopqrstu", "vw", "x", "yz"] * 3
  for length in (6, 9, 64):
    wins = conll.windows(words, tokenize, length)
    size = length - 2
    assert all(len(w.pieces) <= size for w in wins)
    # Every word predicted exactly once; first pieces carry the words.
    owners = [i for w in wins for i, keep in zip(w.word_of_piece,
                                                  w.predicts) if keep]
    assert sorted(owners) == list(range(len(words)))
    labels = [[("L%d" % i if i >= 0 else None) for i in w.word_of_piece]
              for w in wins]
    assert conll.words_from_windows(len(words), wins, labels) == [
        "L%d" % i for i in range(len(words))]
    if length == 64:
      assert len(wins) == 1
    else:
      assert len(wins) > 1
  # A word longer than a window keeps its first window's worth.
  wins = conll.windows(["abcdefghijklmnop"], tokenize, 5)
  assert wins[0].pieces == ["ab", "##cd", "##ef"]


@pytest.mark.skipif(not os.path.isdir(SHARED),
                    reason="../shared/conll2003 is absent")
def test_the_shared_conll2003_files_read():
  train = conll.read_conll(os.path.join(SHARED, "train.txt"))
  valid = conll.read_conll(os.path.join(SHARED, "valid.txt"))
  assert (len(train), len(valid)) == (14041, 3250)
  assert sum(len(s.words) for s in valid) == 51362
  assert conll.detect_scheme(s.tags for s in train) == "IOB1"
  assert conll.label_list(train) == ["O", "B-LOC", "B-MISC", "B-ORG",
                                     "B-PER", "I-LOC", "I-MISC", "I-ORG",
                                     "I-PER"]
  # Gold against itself: 100.
  tags = [s.tags for s in valid]
  assert conlleval.evaluate(tags, tags)["f1"] == 100.0
