"""User-facing errors.

Every failure caused by what the user gave us (a flag, a file, a row, a
checkpoint) is raised as `UserError` with one line that says what is wrong and
where. `run_classifier.py` and the scripts print that line on stderr and exit
non-zero without a traceback; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A problem with the user's input, reported as one clear line."""

  def __init__(self, message):
    message = " ".join(str(message).split())  # One line, always.
    super().__init__(message)
