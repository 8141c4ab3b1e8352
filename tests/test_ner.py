"""Token classification: the tagging head, its loss, its compositions, and
run_ner.py end to end."""

import os

import numpy as np
import pytest
import tensorflow as tf

from adapter_bert.model import modeling
from adapter_bert.adapters.composition import MultiTask, Parallel
from test_composition import model_of
from test_modeling import features as as_features
from test_modeling import mixed_batch


def test_tagging_head_reads_every_token_and_ignores_unlabelled_ones():
  model = model_of({"a": "pfeiffer", "b": "lora"}, heads=())
  model.add_tagging_head("a", 5)
  model.add_tagging_head("b", 3, layers=2)
  rng = np.random.default_rng(0)
  for name in ("a", "b"):
    for _, v, _ in model.heads[name].checkpoint_variables(None):
      v.assign(rng.normal(0, 0.3, v.shape).astype(np.float32))
  ids, mask, segs = mixed_batch(model.config, [9, 4, 6], 9)
  feats = as_features(ids, mask, segs)
  model.set_active_adapters("a")
  logits = model(feats).numpy()
  assert logits.shape == (3, 9, 5)
  sequence, _ = model.encode(feats)
  head = model.heads["a"]
  want = sequence.numpy() @ head.output_weights.numpy().T + (
      head.output_bias.numpy())
  np.testing.assert_allclose(logits, want, atol=1e-5)
  # The loss: each example's mean over its labelled tokens (-1: none).
  labels = np.full((3, 9), -1, np.int32)
  labels[0, [0, 2, 5]] = [1, 4, 0]
  labels[1, 1] = 3
  got = modeling.per_example_loss(tf.constant(logits), tf.constant(labels), 5,
                                  False).numpy()
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  assert abs(got[0] - -np.mean([log_probs[0, 0, 1], log_probs[0, 2, 4],
                                log_probs[0, 5, 0]])) <= 1e-5
  assert abs(got[1] + log_probs[1, 1, 3]) <= 1e-5 and got[2] == 0.0
  # Side by side and routed, each task's tags as alone.
  model.set_active_adapters("b")
  alone_b = model(feats).numpy()
  model.set_active_adapters(Parallel("a", "b"))
  both = model(feats)
  np.testing.assert_allclose(both["a"].numpy(), logits, atol=1e-5)
  np.testing.assert_allclose(both["b"].numpy(), alone_b, atol=1e-5)
  model.set_active_adapters(MultiTask("a", "b"))
  routed = model(dict(feats, task_ids=tf.constant([1, 0, 1])))
  np.testing.assert_allclose(routed["a"].numpy()[1], logits[1], atol=1e-5)
  np.testing.assert_allclose(routed["b"].numpy()[[0, 2]], alone_b[[0, 2]],
                             atol=1e-5)
  assert np.isnan(routed["a"].numpy()[0]).all()


def _write_conll(path, n, seed, scheme="IOB1", with_tags=True):
  """n sentences of fixture words; entity types PER (a word pair) and LOC."""
  import tiny_fixtures as fx  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  lines = ["-DOCSTART- -X- O O", ""]
  for _ in range(n):
    length = int(rng.integers(3, 12))
    words = [fx.WORDS[int(i)] + ("s" if rng.random() < 0.2 else "")
             for i in rng.integers(0, len(fx.WORDS), length)]
    tags = ["O"] * length
    start = int(rng.integers(0, length - 1))
    kind = "PER" if rng.random() < 0.5 else "LOC"
    tags[start] = ("I-" if scheme == "IOB1" else "B-") + kind
    if kind == "PER":
      tags[start + 1] = "I-PER"
    for w, t in zip(words, tags):
      lines.append("%s NN I-NP %s" % (w, t) if with_tags else w)
    lines.append("")
  with open(path, "w") as f:
    f.write("\n".join(lines))


def test_run_ner_trains_evaluates_and_predicts(tmp_path):
  import tiny_fixtures as fx  # pylint: disable=g-import-not-at-top
  from adapter_bert.data import conll, conlleval  # pylint: disable=g-import-not-at-top
  flags = fx.make_job(tmp_path)
  data_dir = tmp_path / "conll"
  data_dir.mkdir()
  _write_conll(data_dir / "train.txt", 48, 0)
  _write_conll(data_dir / "valid.txt", 12, 1)
  flags.update(task_name=None, data_dir=str(data_dir), do_train=True,
               do_eval=True, do_predict=True, max_seq_length=8,
               predict_file=str(data_dir / "valid.txt"), jit_compile=False,
               num_train_epochs=1, learning_rate=1e-2)
  flags.pop("task_name")
  result = fx.run_cli(flags, script="run_ner.py")
  assert result.returncode == 0, result.stderr[-3000:]
  out = flags["output_dir"]
  scores = fx.read_eval_results(out)
  for key in ("precision", "recall", "f1", "accuracy", "PER_f1", "LOC_f1",
              "eval_loss", "global_step"):
    assert key in scores, key
  # predictions.txt: every token in order; its scores are eval_results'.
  lines = open(os.path.join(out, "predictions.txt")).read().split("\n")
  sentences = conll.read_conll(str(data_dir / "valid.txt"))
  tokens = [line.split() for line in lines if line]
  assert [t[0] for t in tokens] == [w for s in sentences for w in s.words]
  assert [t[1] for t in tokens] == [t for s in sentences for t in s.tags]
  rebuilt = conll.read_conll(os.path.join(out, "predictions.txt"))
  want = conlleval.evaluate([s.tags for s in sentences],
                            [s.tags for s in rebuilt])
  for key in ("precision", "recall", "f1"):
    assert abs(want[key] - scores[key]) <= 1e-9, key
  predicted_scores = fx.read_eval_results(out, "predict_results.txt")
  assert abs(predicted_scores["f1"] - scores["f1"]) <= 1e-9
  # The fast path: layer attention on frozen states computed once.
  la_config = tmp_path / "la.json"
  la_config.write_text('{"kind": "layer_attention", "reduced_size": 4}')
  fast = dict(flags, output_dir=str(tmp_path / "fast"), do_predict=False,
              predict_file=None, adapter_size=None,
              adapter_config=str(la_config), frozen_activations=True)
  result = fx.run_cli(fast, script="run_ner.py")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "f1" in fx.read_eval_results(fast["output_dir"])
  assert any(f.startswith("frozen-") and f.endswith(".npy") for f in
             os.listdir(os.path.join(fast["output_dir"], "features")))
  # A malformed line: one error naming file and line, exit 1.
  with open(data_dir / "valid.txt", "a") as f:
    f.write("bad line here\n")
  flags.update(do_train=False, output_dir=str(tmp_path / "again"))
  bad = fx.run_cli(flags, script="run_ner.py")
  assert bad.returncode == 1
  assert "valid.txt line" in bad.stderr and "columns" in bad.stderr


def test_without_data_dir_conll2003_comes_from_tensorflow_datasets(
    tmp_path, monkeypatch):
  # tfds' real conll2003 builder with its download replaced by rows made
  # here (the test runs offline); its tags are IOB2.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from adapter_bert.data import ner_pipeline  # pylint: disable=g-import-not-at-top
  from adapter_bert.errors import UserError  # pylint: disable=g-import-not-at-top
  import tiny_fixtures as fx  # pylint: disable=g-import-not-at-top
  names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC",
           "B-MISC", "I-MISC"]
  rows = {"train": [(["sun", "moon", "cat"], ["B-PER", "I-PER", "O"]),
                    (["dog"], ["B-LOC"])],
          "dev": [(["cat", "sun"], ["O", "B-ORG"])]}

  def as_dataset(self, split, **kwargs):
    del self, kwargs
    data = rows[str(split)]
    return tf.data.Dataset.from_generator(
        lambda: ({"id": str(i), "tokens": w, "pos": [0] * len(w),
                  "chunks": [0] * len(w), "ner": [names.index(t) for t in g]}
                 for i, (w, g) in enumerate(data)),
        output_signature={"id": tf.TensorSpec([], tf.string),
                          "tokens": tf.TensorSpec([None], tf.string),
                          "pos": tf.TensorSpec([None], tf.int64),
                          "chunks": tf.TensorSpec([None], tf.int64),
                          "ner": tf.TensorSpec([None], tf.int64)})

  vocab, _ = fx.write_vocab(str(tmp_path))
  data = ner_pipeline.NerData(None, vocab, True, 16,
                              tfds_data_dir=str(tmp_path / "tfds"))
  with tfds.testing.mock_data(as_dataset_fn=as_dataset,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    train = data.sentences("train")
    dev = data.sentences("dev")
  assert [s.words for s in train] == [["sun", "moon", "cat"], ["dog"]]
  assert train[0].tags == ["B-PER", "I-PER", "O"] and dev[0].tags[1] == "B-ORG"
  assert data.path("dev") == "tensorflow-datasets conll2003 dev"
  # Offline without the mock: one clear line naming --data_dir. (A real
  # download would retry for minutes before failing without network.)
  import requests  # pylint: disable=g-import-not-at-top

  def no_network(*args, **kwargs):
    raise requests.exceptions.ConnectionError(
        "Failed to resolve 'data.deepai.org' (simulated offline)")

  monkeypatch.setattr(tfds.download.DownloadManager, "download", no_network)
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      no_network)
  with pytest.raises(UserError, match="pass --data_dir=<folder with") as info:
    ner_pipeline.tfds_sentences("dev", str(tmp_path / "empty"))
  assert "\n" not in str(info.value)


def test_layer_attention_on_stored_states_trains_as_on_the_encoder(tmp_path):
  """The NER fast path: six steps of a layer-attention tagger on the
  windows' stored frozen states equal six steps running the encoder
  (length buckets and grouping on), and bucketed evaluation (windows sorted
  by length, batches trimmed) decodes the tags of unbucketed evaluation."""
  import keras  # pylint: disable=g-import-not-at-top
  from adapter_bert import adapters  # pylint: disable=g-import-not-at-top
  from adapter_bert.compute import optimization  # pylint: disable=g-import-not-at-top
  import tiny_fixtures as fx  # pylint: disable=g-import-not-at-top
  from adapter_bert.data import conll, frozen_activations, ner_pipeline  # pylint: disable=g-import-not-at-top
  from adapter_bert.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  flags = fx.make_job(tmp_path)
  _write_conll(tmp_path / "train.txt", 40, 0)
  _write_conll(tmp_path / "valid.txt", 10, 1)
  data = ner_pipeline.NerData(str(tmp_path), flags["vocab_file"], True, 14)
  data.set_labels(conll.label_list(data.sentences("train")))
  assert data.num_windows("train") > 40  # Some sentences take two windows.
  config = modeling.BertConfig.from_json_file(flags["bert_config_file"])
  cache = str(tmp_path / "features")
  buckets = (9, 12, 14)
  results = []
  for stored in (False, True):
    keras.utils.set_random_seed(0)
    model = modeling.BertAdapterModel(config, adapters=[(
        "ner", adapters.LayerAttentionConfig(dropout=0.1, reduced_size=4))])
    model.add_tagging_head("ner", len(data.labels))
    model.active_head = "ner"
    model.load_base_checkpoint(flags["init_checkpoint"])
    trainable = modeling.set_train_mode(model, "adapters")
    trainer = trainer_lib.Trainer(
        model, optimization.create_optimizer(1e-2, 6, 1), trainable,
        tf.distribute.get_strategy(), str(tmp_path), num_labels=len(
            data.labels), is_regression=False, global_batch_size=8, seed=3)
    dataset = data.train_dataset(8, seed=1, bucket=buckets, group_batches=3)
    if stored:
      frozen = frozen_activations.build_or_load(
          model, data.frozen_source("train"), cache)
      assert frozen.array.shape[0] == int(data.lengths("train").sum())
      dataset = frozen.attach(dataset)
    widths = {int(f["input_ids"].shape[1]) for f in dataset.take(12)}
    assert widths <= set(buckets) and len(widths) > 1
    trainer._build_train_loop()  # pylint: disable=protected-access
    losses, _ = trainer._train_loop(iter(dataset), tf.constant(6))  # pylint: disable=protected-access
    results.append((losses.numpy(), {n: v.numpy() for n, v in trainable}))
  fx.assert_same_training(*results)
  # The entry is reused: a second build reads it back.
  again = frozen_activations.build_or_load(model, data.frozen_source("train"),
                                           cache)
  np.testing.assert_array_equal(np.asarray(again.array),
                                np.asarray(frozen.array))
  decoded = []
  for bucket in (None, buckets):
    out = trainer.predict(data.eval_dataset("dev", 8, bucket=bucket))
    decoded.append(data.decode("dev", out["logits"], out["example_index"]))
  assert decoded[0] == decoded[1]


@pytest.mark.parametrize("method", [
    "adapter-bert", "pfeiffer", "houlsby", "parallel",
    "pfeiffer+inv", "compacter++", "lora", "ia3", "prefix_tuning",
    "prompt_tuning", "mam", "unipelt", "layer_attention"])
def test_every_method_tags(method):
  """Each method under a tagging head: one logit row per input token (soft
  prompt tokens and prefixes add none), the head applied to the adapted
  sequence output, and a training step that moves the method's weights."""
  from adapter_bert.compute import optimization  # pylint: disable=g-import-not-at-top
  from test_methods import batch, model_with  # pylint: disable=g-import-not-at-top
  from adapter_bert import adapters  # pylint: disable=g-import-not-at-top
  # Presets whose widths do not divide on the tiny config get workable ones.
  config = {"compacter++": adapters.get_preset("compacter++").replace(
      reduction_factor=2),
            "layer_attention": adapters.LayerAttentionConfig(
                reduced_size=4)}.get(method, method)
  model = model_with(config)
  model.add_tagging_head("tags", 4)
  model.active_head = "tags"
  ids, mask, segs = batch(model.config)
  feats = as_features(ids, mask, segs)
  logits = model(feats).numpy()
  assert logits.shape == ids.shape + (4,)
  sequence = model.encode(feats)[0].numpy()
  if method == "prompt_tuning":  # Its 10 soft tokens come first.
    assert sequence.shape[1] == ids.shape[1] + 10
    sequence = sequence[:, 10:]
  head = model.heads["tags"]
  np.testing.assert_allclose(
      logits, sequence @ head.output_weights.numpy().T
      + head.output_bias.numpy(), atol=1e-5)
  trained = model.train_adapter("a")
  model.active_head = "tags"
  before = {n: v.numpy().copy() for n, v in trained}
  labels = np.where(mask > 0, ids % 4, -1).astype(np.int32)
  model.compile(optimizer=optimization.create_optimizer(1e-2, 2, 0), seed=1)
  history = model.fit(tf.data.Dataset.from_tensors((feats, labels)),
                      verbose=0)
  assert np.isfinite(history.history["loss"][0])
  moved = [n for n, v in trained if not np.array_equal(v.numpy(), before[n])]
  assert any(n not in ("output_weights", "output_bias") for n in moved)
