"""User-facing errors.

Every failure caused by what the user gave us (a flag, a file, a row, a
checkpoint) is raised as `UserError` with one line that says what is wrong and
where. `run_classifier.py` and the scripts print that line on stderr and exit
non-zero without a traceback; anything else is a bug and keeps its traceback.
"""

# A value echoed in a message is cut to this many characters; a whole
# message to _MESSAGE_LIMIT (its start and end kept: they name the culprit).
VALUE_LIMIT = 100
_MESSAGE_LIMIT = 2000


def clip_value(value, limit=VALUE_LIMIT):
  """`value` as text for a message, cut to about `limit` characters.

  Args:
    value: anything; a str is shown as is, anything else by its repr().
    limit: the most characters kept before " ... (N characters)".

  Returns:
    One line of at most about `limit` + 30 characters.
  """
  text = value if isinstance(value, str) else repr(value)
  if len(text) <= limit:
    return " ".join(text.split())
  return "%s ... (%d characters)" % (" ".join(text[:limit].split()),
                                     len(text))


class UserError(Exception):
  """A problem with the user's input, reported as one clear line."""

  def __init__(self, message):
    message = " ".join(str(message).split())  # One line, always.
    if len(message) > _MESSAGE_LIMIT:
      message = (message[:_MESSAGE_LIMIT // 2] + " ... " +
                 message[-_MESSAGE_LIMIT // 2:])
    super().__init__(message)


# Prefixes the message of an assertion that runs inside a TensorFlow graph
# and fails on the user's input (a batch that does not fit a BatchSplit);
# the Keras entry points turn such a failure back into a UserError.
IN_GRAPH_MARK = "[adapter_bert user error] "


def from_graph_message(message):
  """The UserError of a graph error's message carrying IN_GRAPH_MARK, else
  None."""
  text = str(message)
  if IN_GRAPH_MARK not in text:
    return None
  return UserError(text.split(IN_GRAPH_MARK, 1)[1].splitlines()[0])
