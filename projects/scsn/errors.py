"""The one error family: bad input or settings that the user can fix, each reported as one message that says what was
wrong and what to do. ``scsn.engine.cli.run`` (used by tools/train_net.py and every other tool) prints it as one line
and exits with status 1 instead of a traceback. Each class also derives from the built-in error it refines, so code
that catches ``ValueError`` or ``FileNotFoundError`` keeps working.
"""


class InputError(Exception):
    """Bad input or settings, reported with one message that says what to do."""


class ConfigError(InputError, ValueError):
    """A config file, override or key value that fast-reid or SCSN cannot use."""


class ArgumentError(InputError, ValueError):
    """A tool's command-line argument, or data that does not fit what the tool was given (e.g. an index's size)."""


class InputNotFoundError(InputError, FileNotFoundError):
    """A file or folder a tool was asked to read does not exist or holds nothing usable."""


class OutputExistsError(InputError, FileExistsError):
    """An output would overwrite what an earlier run or the user wrote."""


class DatasetNotFoundError(InputError, FileNotFoundError):
    pass


class EmptySplitError(InputError):
    pass


class UnreadableImageError(InputError, OSError):
    pass


class PretrainedWeightsError(InputError, RuntimeError):
    pass


class NonFiniteLossError(InputError, FloatingPointError):
    pass


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that is missing, unsafe to unpickle, corrupt, or does not fit the model its config builds."""


class UnsafeCheckpointError(CheckpointError):
    pass


class CorruptCheckpointError(CheckpointError):
    pass


class CheckpointMismatchError(CheckpointError):
    pass


class ExportError(InputError, RuntimeError):
    """A model that the chosen ONNX route cannot export, or an export that does not match PyTorch."""
