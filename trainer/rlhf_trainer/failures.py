"""How `rlhf run` and `rlhf train` report a training failure.

An error of the job's configuration (a bad data row, a missing checkpoint: `permanent_errors`) or
a reward source that returned something unusable (`field_errors`) already names its field; the user needs that line,
not a stack trace. It is printed as one line on stderr and recorded as the job's failure; the
traceback goes to `<output dir>/error.log` (and to the log with `--verbose`, RLHF_VERBOSE=1).
Any other error is unexpected: its traceback is logged in full.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from dataclasses import dataclass

log = logging.getLogger("rlhf_trainer")

VERBOSE_ENV = "RLHF_VERBOSE"


def permanent_errors() -> tuple[type[BaseException], ...]:
    """Errors of the job's configuration: raised the same way by every attempt."""
    from .api.validation import InvalidJobError
    from .batch_plan import BatchConfigError
    from .checkpoint import CheckpointError
    from .data import DataConfigError
    from .rewards import RewardConfigError

    return (InvalidJobError, BatchConfigError, CheckpointError, DataConfigError, RewardConfigError)


def field_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message starts with the field at fault: shown as one line. A reward source
    that returned something unusable (RewardError) is one, though not permanent (a server may
    recover)."""
    from .rewards import RewardError

    return (*permanent_errors(), RewardError)


def root_cause(exc: BaseException) -> BaseException:
    """The error itself when it was raised in a Ray actor or task (RayTaskError carries it as
    `cause`; its own text holds the remote traceback)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


@dataclass(frozen=True)
class Failure:
    permanent: bool
    reason: str  # ConfigurationError | TrainingFailed
    message: str  # one line for a configuration error; "Type: text" otherwise


def report_failure(exc: BaseException, output_dir: str | None) -> Failure:
    """Print or log the failure as described above; what to record in the job's status."""
    cause = root_cause(exc)
    if not isinstance(cause, field_errors()):
        log.exception("training failed")
        return Failure(False, "TrainingFailed", f"{type(cause).__name__}: {cause}")
    line = " ".join(str(cause).split())  # one line, whatever the message's layout
    if isinstance(cause, permanent_errors()):
        failure = Failure(True, "ConfigurationError", line)
    else:
        failure = Failure(False, "TrainingFailed", f"{type(cause).__name__}: {line}")
    if os.environ.get(VERBOSE_ENV) == "1":
        log.error("training failed", exc_info=exc)
        print(f"error: {line}", file=sys.stderr)
        return failure
    where = _write_traceback(exc, output_dir)
    hint = f"  [traceback: {where}; --verbose prints it]" if where else "  [--verbose prints the traceback]"
    print(f"error: {line}{hint}", file=sys.stderr)
    return failure


def _write_traceback(exc: BaseException, output_dir: str | None) -> str | None:
    if not output_dir:
        return None
    path = os.path.join(output_dir, "error.log")
    try:
        os.makedirs(output_dir, exist_ok=True)
        with open(path, "w") as out:
            out.write("".join(traceback.format_exception(exc)))
    except OSError:
        return None
    return path
