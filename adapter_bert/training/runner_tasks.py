"""The task of a run: a GLUE task by name, or your own files (csv)."""

from adapter_bert.data import glue_processors
from adapter_bert.data import user_data

TABLE_TASKS = ("csv", "tsv", "jsonl")


def get_processor(cfg):
  """The processor of `cfg.task_name` (GLUE's, or a user_data table's with
  the column flags).

  Raises:
    UserError: for an unknown task or missing column flags.
  """
  if str(cfg.task_name).strip().lower() in TABLE_TASKS:
    return user_data.TableProcessor(cfg.text_a_column, cfg.text_b_column,
                                    cfg.label_column, cfg.data_dir)
  return glue_processors.get_processor(cfg.task_name)
