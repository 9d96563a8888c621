"""Errors tsynth raises on bad input. The CLI turns each into one line on stderr and exit status 2."""


class TsynthError(Exception):
    """Base class of every error caused by the user's input, settings or files."""


class DataError(TsynthError, ValueError):
    """A data file or data set is unusable: the message names the file, series or row and the problem."""


class ConfigError(TsynthError, ValueError):
    """An option or combination of options is invalid."""


class ArtifactError(TsynthError):
    """A model directory is missing, incomplete or of another format version."""
