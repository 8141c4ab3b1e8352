"""The command line of run_classifier.py: its flags (the original toolkit's,
with their names, meanings and defaults, plus this toolkit's) and `main`.
See run_classifier.py for the original README command.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from adapter_bert.cli import common as cli  # noqa: E402
from adapter_bert.errors import UserError  # noqa: E402
from adapter_bert.training import run_config  # noqa: E402

flags.adopt_module_key_flags(logging)
FLAGS = flags.FLAGS

# -- The original flags ----------------------------------------------------
flags.DEFINE_string(
    "data_dir", None,
    "The input data dir. Should contain the .tsv files (or other data files) "
    "for the task. If unset, GLUE is read through tensorflow-datasets.")
flags.DEFINE_string(
    "bert_config_file", None,
    "The config json file corresponding to the pre-trained BERT model. "
    "This specifies the model architecture.")
flags.DEFINE_string("task_name", None, "The name of the task to train.")
flags.DEFINE_string("vocab_file", None,
                    "The vocabulary file that the BERT model was trained on.")
flags.DEFINE_string(
    "output_dir", None,
    "The output directory where the model checkpoints will be written.")
flags.DEFINE_string(
    "init_checkpoint", None,
    "Initial checkpoint (usually from a pre-trained BERT model).")
flags.DEFINE_bool(
    "do_lower_case", True,
    "Whether to lower case the input text. Should be True for uncased "
    "models and False for cased models.")
flags.DEFINE_integer(
    "max_seq_length", 128,
    "The maximum total input sequence length after WordPiece tokenization. "
    "Sequences longer than this will be truncated, and sequences shorter "
    "than this will be padded.")
flags.DEFINE_bool("do_train", False, "Whether to run training.")
flags.DEFINE_bool("do_eval", False, "Whether to run eval on the dev set.")
flags.DEFINE_bool(
    "do_predict", False,
    "Whether to run the model in inference mode on the test set.")
flags.DEFINE_integer("train_batch_size", 32, "Total batch size for training.")
flags.DEFINE_integer("eval_batch_size", 8, "Total batch size for eval.")
flags.DEFINE_integer("predict_batch_size", 8, "Total batch size for predict.")
flags.DEFINE_float("learning_rate", 5e-5, "The initial learning rate for Adam.")
flags.DEFINE_float("num_train_epochs", 3.0,
                   "Total number of training epochs to perform.")
flags.DEFINE_float(
    "warmup_proportion", 0.1,
    "Proportion of training to perform linear learning rate warmup for. "
    "E.g., 0.1 = 10% of training.")
flags.DEFINE_integer("save_checkpoints_steps", 1000,
                     "How often to save the model checkpoint.")
flags.DEFINE_integer("iterations_per_loop", 1000,
                     "How many steps to make in each estimator call.")
flags.DEFINE_bool("use_tpu", False, "Whether to use TPU or GPU/CPU.")
flags.DEFINE_string(
    "tpu_name", None,
    "The Cloud TPU to use for training. This should be either the name "
    "used when creating the Cloud TPU, or a grpc://ip.address.of.tpu:8470 "
    "url.")
flags.DEFINE_string(
    "tpu_zone", None,
    "[Optional] GCE zone where the Cloud TPU is located in. If not "
    "specified, we will attempt to automatically detect the GCE project from "
    "metadata.")
flags.DEFINE_string(
    "gcp_project", None,
    "[Optional] Project name for the Cloud TPU-enabled project. If not "
    "specified, we will attempt to automatically detect the GCE project from "
    "metadata.")
flags.DEFINE_string("master", None, "[Optional] TensorFlow master URL.")
flags.DEFINE_integer(
    "num_tpu_cores", 8,
    "Only used if `use_tpu` is True. Total number of TPU cores to use.")

# -- This toolkit's flags --------------------------------------------------
flags.DEFINE_string("adapter_config", None,
                    "The adapter method: a preset name (adapter-bert, "
                    "pfeiffer/seq_bn, houlsby/double_seq_bn, parallel/par_bn, "
                    "scaled_parallel/scaled_par_bn, lora, ia3, ...) or a JSON "
                    "file of its fields (configs/adapters/). Default: "
                    "adapter-bert, the reference.")
flags.DEFINE_integer("adapter_size", 64,
                     "Bottleneck width of the adapters; 0 = no adapters. "
                     "With --adapter_checkpoint and no --adapter_size, the "
                     "adapter directory's size. For AdapterHub's bottleneck "
                     "family (--adapter_config), sets its reduction_factor "
                     "to hidden_size / adapter_size when given.")
flags.DEFINE_float("adapter_init_scale", 1e-3,
                   "Stddev of the adapters' truncated-normal weight init.")
flags.DEFINE_enum("train_mode", "adapters", list(run_config.TRAIN_MODES),
                  "What is trained: adapters (+LayerNorms and head, base "
                  "frozen), full (all weights, as original BERT), or head.")
flags.DEFINE_float("weight_decay_rate", 0.01,
                   "Decoupled weight decay of non-adapter weights.")
flags.DEFINE_float("adapter_weight_decay_rate", 0.01,
                   "Decoupled weight decay of the adapter method's weights "
                   "(every method's, fusion layers too; biases and "
                   "LayerNorms are not decayed).")
flags.DEFINE_enum("optimizer", "adam_weight_decay",
                  list(run_config.OPTIMIZERS),
                  "The update: adam_weight_decay (the reference: Adam without "
                  "bias correction, epsilon 1e-6, linear decay from step 0) "
                  "or adamw (AdapterHub's and the Hugging Face Trainer's: "
                  "torch's AdamW, bias-corrected, epsilon 1e-8, linear decay "
                  "from the end of the warmup). Both clip to norm 1.0 and "
                  "decay neither LayerNorms nor biases.")
flags.DEFINE_string("adapter_checkpoint", None,
                    "An adapter directory (output_dir/adapter) to load on top "
                    "of --init_checkpoint.")
flags.DEFINE_integer("seed", 12345,
                     "Seed of initialisation, data order and dropout.")
flags.DEFINE_enum("mixed_precision", "none", list(run_config.MIXED_PRECISION),
                  "Compute dtype of the matrix products; LayerNorm, softmax "
                  "and loss stay float32. auto: bfloat16 where the hardware "
                  "has it natively (CPU with AVX512_BF16 or AMX, TPU, GPU "
                  "of compute capability >= 8.0), else none (float32).")
flags.DEFINE_bool("jit_compile", True, "Compile the train/eval steps with XLA.")
flags.DEFINE_enum("distribution", "auto", list(run_config.DISTRIBUTIONS),
                  "tf.distribute strategy: auto picks tpu with --use_tpu, "
                  "mirrored with several GPUs, else one device.")
flags.DEFINE_bool("bucket_by_length", True,
                  "On CPU/GPU, trim each batch's padding to the smallest of "
                  "a few bucket widths that holds its longest example. "
                  "Changes no number (dropout masks are keyed by position). "
                  "Ignored on TPU.")
flags.DEFINE_bool("group_by_length", True,
                  "Train on batches of similar length: each window of %d "
                  "shuffled batches is sorted by length, cut into batches "
                  "and shuffled again. The same batches on every device."
                  % run_config.GROUP_WINDOW_BATCHES)
flags.DEFINE_integer("micro_batch_size", 0,
                     "Run each training batch in slices of this many "
                     "examples, one after the other (less memory, the same "
                     "numbers). 0: automatic, slices only on a CPU host "
                     "where a step's activations would exceed %d MiB."
                     % run_config.ACTIVATION_BUDGET_MIB)
flags.DEFINE_integer("log_steps", 50,
                     "On CPU/GPU, at most this many steps between progress "
                     "lines (on TPU, iterations_per_loop).")
flags.DEFINE_bool("deterministic", False,
                  "Enable TensorFlow op determinism (bitwise reproducible "
                  "runs and resumes, somewhat slower).")
flags.DEFINE_string("tfds_data_dir", None,
                    "tensorflow-datasets data dir used when --data_dir is "
                    "unset.")
flags.DEFINE_bool("allow_hyperparameter_change", False,
                  "Resume the checkpoints in output_dir with another "
                  "--learning_rate or weight decay than they were trained "
                  "with (the change is logged and recorded in "
                  "run_config.json). Other changes are always refused.")
flags.DEFINE_bool("adapter_drop", False,
                  "AdapterDrop's training recipe: at each step the adapters "
                  "of a random number k of the lowest layers are skipped "
                  "(k uniform in 0..L-2, as AdapterHub's callback); none at "
                  "eval and predict unless --skip_layers says so.")
flags.DEFINE_list("skip_layers", [],
                  "Encoder layers (0 = the lowest) whose adapters are "
                  "skipped at eval and predict (AdapterDrop at inference).")
flags.DEFINE_bool("frozen_activations", False,
                  "Compute the frozen encoder's states once (in inference "
                  "mode, stored beside the feature cache) and read them at "
                  "every epoch: for an adapter that reads the frozen encoder "
                  "(--adapter_config=layer_attention).")
flags.DEFINE_enum("frozen_activations_dtype", "float32", ["float32", "float16"],
                  "How the frozen states are stored (float16: half the "
                  "disk, rounded).")
flags.DEFINE_string("text_a_column", None,
                    "--task_name=csv: the column of the (first) text.")
flags.DEFINE_string("text_b_column", None,
                    "--task_name=csv: the column of the second text of pairs.")
flags.DEFINE_string("label_column", "label",
                    "--task_name=csv: the column of the label.")
flags.DEFINE_bool("verbose", False, "Show Python tracebacks for errors.")


def config_from_flags():
  """Builds the RunConfig from the parsed flags."""
  fields = {f for f in run_config.RunConfig.__dataclass_fields__}
  values = {name: FLAGS[name].value for name in fields}
  if ((values["adapter_checkpoint"] or values["adapter_config"])
      and not FLAGS["adapter_size"].present):
    # The adapter directory's size, or the --adapter_config's own.
    values["adapter_size"] = None
  layers = []
  for item in values["skip_layers"] or []:
    try:
      layers.append(int(item))
    except ValueError:
      raise UserError("--skip_layers takes layer indices separated by commas "
                      "(e.g. 0,1,2), got %r" % item) from None
  values["skip_layers"] = tuple(layers)
  return run_config.RunConfig(**values)


def main(argv):
  if len(argv) > 1:
    raise UserError("unexpected positional arguments: %s" % " ".join(argv[1:]))
  for name in ("task_name", "output_dir", "bert_config_file", "vocab_file"):
    if not FLAGS[name].value:
      raise UserError("--%s is required" % name)
  cfg = config_from_flags().validate()
  from adapter_bert.training import runner_tasks  # pylint: disable=g-import-not-at-top
  runner_tasks.get_processor(cfg)  # An unknown task fails fast.
  from adapter_bert.compute import tf_startup  # pylint: disable=g-import-not-at-top
  tf_startup.import_quietly(verbose=FLAGS.verbose)
  from adapter_bert.training import runner  # Imports TensorFlow; flags are checked by now.
  runner.run(cfg)


def run_main():
  """Runs main; a UserError becomes one line on stderr and exit status 1."""
  cli.run(main)


if __name__ == "__main__":
  run_main()
