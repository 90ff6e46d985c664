"""User-facing errors.

A ``BertflowError`` is a user mistake or a bad input: the CLI prints its message on
one line and exits non-zero, with no traceback. Anything else is a bug and keeps
its traceback.
"""


class BertflowError(Exception):
    """A problem the user can fix (bad input, bad config, missing file)."""


class ConfigError(BertflowError):
    """An unknown config key or a value of the wrong type or range."""


class InputError(BertflowError):
    """An input path, file, column or data set that cannot be used."""


class ParityError(InputError):
    """A cheaper scoring backend (ONNX, int8) whose predictions differ too much from the fp32 model's."""

    figures: dict[str, float] = {}  # what the gate measured (``parity_*`` metrics), set where it is raised
