"""BERT with named adapters and heads, as Keras 3 layers: the public names.

The numbers are those of google-research/bert `modeling.py` with the adapter
insertions of google-research/adapter-bert: tanh-approximated GELU, additive
-10000 attention mask, LayerNorm epsilon 1e-12, the encoder working on
[batch * seq, hidden] matrices, and a classifier head with `output_weights`
[num_labels, hidden] so logits = pooled · Wᵀ + b.

`BertAdapterModel` holds one frozen base and any number of named adapters and
heads, in AdapterHub's manner (`add_adapter`, `set_active_adapters`,
`train_adapter`, `add_classification_head`, `save_adapter`, `load_adapter`)
and is a Keras model (`compile`, `fit`, `evaluate`, `predict`).

This module gathers the names the README and the rest of the toolkit use;
the code lives in the model's parts, one concern each:

  config               BertConfig and the reference's constants
  hooks                variable tags, LayerNorm copies, hook points
  embeddings, attention, transformer_block, bert_model
                       the encoder: one Keras layer a file
  heads                the head layer and HeadsMixin
  view                 ModelView (one branch under the reference's names),
                       features, the command line's loss
  adapter_setup        AdaptersMixin: adapters, activation, trainability
  fusion               FusionMixin: AdapterFusion
  persistence          PersistenceMixin: bases, adapter directories
  keras_training       KerasTrainingMixin: compile, fit, predict
  bert_adapter_model   BertAdapterModel (the parts and the forward pass),
                       BertClassifier

Each layer declares the checkpoint names of its variables (the interface
with Google's checkpoints, e.g.
`bert/encoder/layer_0/attention/output/adapters/weights1`) and a tag saying
what each variable belongs to; `ModelView.checkpoint_variables` composes
them for one adapter and head, as the reference toolkit's model had them.
"""

# pylint: disable=unused-import
from adapter_bert.adapters import composition  # noqa: F401
from adapter_bert.compute.activations import get_activation  # noqa: F401
from adapter_bert.model.config import LAYER_NORM_EPSILON  # noqa: F401
from adapter_bert.model.config import MASK_ADDER  # noqa: F401
from adapter_bert.model.config import CLASSIFIER_DROPOUT  # noqa: F401
from adapter_bert.model.config import BertConfig  # noqa: F401
from adapter_bert.model.hooks import Tag  # noqa: F401
from adapter_bert.model.hooks import BASE  # noqa: F401
from adapter_bert.model.hooks import BASE_LAYER_NORM  # noqa: F401
from adapter_bert.model.hooks import NO_ADAPTERS  # noqa: F401
from adapter_bert.model.hooks import LayerNorm  # noqa: F401
from adapter_bert.model.hooks import stacked_layer_norm  # noqa: F401
from adapter_bert.model.hooks import AdapterHook  # noqa: F401
from adapter_bert.model.hooks import first_positions  # noqa: F401
from adapter_bert.model.embeddings import BertEmbeddings  # noqa: F401
from adapter_bert.model.attention import BertSelfAttention  # noqa: F401
from adapter_bert.model.transformer_block import TransformerBlock  # noqa: F401
from adapter_bert.model.bert_model import BertPooler  # noqa: F401
from adapter_bert.model.bert_model import BertModel  # noqa: F401
from adapter_bert.model.heads import ClassifierHead  # noqa: F401
from adapter_bert.model.heads import HEAD_ACTIVATIONS  # noqa: F401
from adapter_bert.model.heads import HeadsMixin  # noqa: F401
from adapter_bert.model.view import TRAIN_MODES  # noqa: F401
from adapter_bert.model.view import INPUT_NAMES  # noqa: F401
from adapter_bert.model.view import ModelView  # noqa: F401
from adapter_bert.model.view import model_inputs  # noqa: F401
from adapter_bert.model.view import per_example_loss  # noqa: F401
from adapter_bert.model.view import cpu_only_host  # noqa: F401
from adapter_bert.model.fusion import FusionMixin  # noqa: F401
from adapter_bert.model.adapter_setup import AdaptersMixin  # noqa: F401
from adapter_bert.model.persistence import PersistenceMixin  # noqa: F401
from adapter_bert.model.keras_training import KerasTrainingMixin  # noqa: F401
from adapter_bert.model.bert_adapter_model import BertAdapterModel  # noqa: F401
from adapter_bert.model.bert_adapter_model import BertClassifier  # noqa: F401
from adapter_bert.model.bert_adapter_model import set_train_mode  # noqa: F401
from adapter_bert.model.bert_adapter_model import trainable_names  # noqa: F401
from adapter_bert.model.bert_adapter_model import checkpoint_name_map  # noqa: F401
