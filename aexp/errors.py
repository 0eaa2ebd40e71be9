"""User-facing errors: each becomes one clear line on stderr and an exit code (2 unless the
class says otherwise), with no traceback."""
import argparse


class AexpError(Exception):
    """Base class for errors caused by the user's input (config, data, files)."""
    exit_code = 2


class ConfigError(AexpError):
    """A config value or combination that cannot work (e.g. a model that cannot take the data)."""


class DataError(AexpError):
    """Missing, unreadable or unusable data."""


class CheckpointError(AexpError):
    """A checkpoint that is missing, truncated or not ours."""


class RenderError(AexpError):
    """Frames that cannot be turned into a video."""


class FolderBusy(AexpError):
    """The run folder cannot be used: another process holds it, or it cannot be made."""


class TrainingDiverged(AexpError):
    """The loss became NaN or infinite: not bad input, so a code of its own."""
    exit_code = 3


class Interrupted(AexpError):
    """SIGINT/SIGTERM stopped training at a safe point; exit code 128 + the signal number,
    the shell convention for a process ended by a signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def unwrap(exc: BaseException) -> BaseException:
    """Return the innermost AexpError in an exception's cause chain (Hydra wraps errors raised
    inside `instantiate`), or the exception itself when there is none."""
    seen = exc
    while seen is not None:
        if isinstance(seen, AexpError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def one_line(e: BaseException) -> str:
    """Hydra and OmegaConf errors span several lines (and a cause): fold them into one."""
    text = " ".join(str(e).split()).split(" Config search path:")[0]
    cause = e.__cause__
    if cause is not None and str(cause).strip():
        text += f" ({str(cause).strip().splitlines()[0]})"
    return text or type(e).__name__


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the commands, whose usage errors (an unknown option, a bad value) are one
    line and exit code 2 like every other refusal, not a usage block; `--help` is unchanged."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class UsageError(AexpError):
    """A command's arguments that argparse refuses."""
