"""TensorBoard scalar summaries without the tensorboard package.

TensorFlow 2.21 no longer depends on tensorboard, and `tf.summary.scalar`
needs it. `tf.summary.write` with the scalars plugin's metadata writes the
same event records, which TensorBoard reads as ordinary scalar charts.
"""

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


def write_scalars(writer, step, values):
  """Writes {tag: float} as scalar summaries at `step` and flushes.

  Args:
    writer: a tf.summary writer (tf.summary.create_file_writer).
    step: int global step.
    values: mapping of tag to a number.
  """
  with writer.as_default():
    for tag, value in values.items():
      tf.summary.write(tag, tf.constant(float(value), tf.float32),
                       step=int(step),
                       metadata=_SCALAR_METADATA.SerializeToString())
  writer.flush()
