"""The one base class of the errors hovle raises about what its user gave it.

Files, settings, images and prompts that hovle cannot use raise a subclass of ``HoVLEError``
whose message says what is wrong and what to do; the command line prints such an error as one
line and exits with status 2. Anything else that escapes is a bug and keeps its traceback.
Each subclass also derives from the built-in exception its callers would expect
(``ValueError`` for bad values), so existing ``except ValueError`` code keeps working.
"""

from __future__ import annotations


class HoVLEError(Exception):
    """A problem with an input (a file, a setting, an image, a prompt), not with hovle itself."""


class CheckpointError(HoVLEError, ValueError):
    """A checkpoint folder or weight file that cannot be read, or whose tensors do not match its config."""


class ConfigError(HoVLEError, ValueError):
    """A config that is not a HoVLE config, lacks a field, or asks for something hovle does not compute."""



class DataError(HoVLEError, ValueError):
    """A data file (training records, a dataset's files) that cannot be read; says where."""


class ContextLengthError(HoVLEError, ValueError):
    """A prompt longer than the model's context."""


class SettingsError(HoVLEError, ValueError):
    """A setting outside what it allows: a generation option, a recipe value, a limit."""
