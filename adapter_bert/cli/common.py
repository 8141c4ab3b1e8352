"""The command-line entry shared by run_classifier.py and the scripts.

Runs an absl `main` so that a `UserError` (a flag, file, row or checkpoint
the user got wrong) ends the program with one `error: ...` line on stderr and
exit status 1, without a traceback; `--verbose`, where the program defines
it, shows the traceback. Flag parsing errors are UserErrors too. Ctrl-C exits
with status 130 and one line; SIGTERM with status 143 and one line, after a
checkpoint at the next step boundary when it comes during training
(`training.preemption`).
"""

import sys

from absl import app
from absl import flags

from adapter_bert.training import preemption
from adapter_bert.errors import UserError

_VERBOSE_ARGS = ("--verbose", "--verbose=true", "--verbose=True",
                 "--verbose=1")


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    raise UserError(str(e).splitlines()[0]) from None


def verbose():
  """--verbose, also when the flags could not be parsed (False if undefined)."""
  if "verbose" not in flags.FLAGS:
    return False
  if flags.FLAGS.is_parsed():
    return bool(flags.FLAGS.verbose)
  return any(arg in _VERBOSE_ARGS for arg in sys.argv[1:])


def run(main):
  """Runs `main(argv)` under absl with one-line user errors."""
  try:
    preemption.install()
    app.run(main, flags_parser=_parse_flags)
  except UserError as e:
    if verbose():
      raise
    sys.stderr.write("error: %s\n" % e)
    sys.exit(1)
  except KeyboardInterrupt:
    sys.stderr.write("interrupted\n")
    sys.exit(130)
  except preemption.Preempted as e:
    sys.stderr.write("%s\n" % e)
    sys.exit(preemption.EXIT_STATUS)
