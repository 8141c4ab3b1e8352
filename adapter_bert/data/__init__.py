"""The GLUE data side: task readers, features and tf.data pipelines, metrics, output files."""
