"""Errors tsynth raises on bad input. The CLI turns each into one line on stderr and exit status 2."""


class TsynthError(Exception):
    """Base class of every error caused by the user's input, settings or files."""


class DataError(TsynthError, ValueError):
    """A data file or data set is unusable: the message names the file, series or row and the problem."""


class ConfigError(TsynthError, ValueError):
    """An option or combination of options is invalid."""


class ArtifactError(TsynthError):
    """A model directory is missing, incomplete or of another format version."""


class DeviceMemoryError(TsynthError):
    """The GPU (or the machine) ran out of memory at a setting the message names, with the value to try instead."""


def check_sample_request(n: int, temperature: float | None = None, top_p: float = 1.0) -> None:
    """Refuse ``n <= 0``, a non-positive temperature and a top_p outside (0, 1]."""
    if n <= 0:
        raise ConfigError(f"the number of series to sample must be positive, got {n}")
    if (temperature is not None and temperature <= 0) or not 0 < top_p <= 1:
        raise ConfigError(f"temperature must be > 0 and top_p in (0, 1], got {temperature}, {top_p}")


def check_min_prob(min_prob: float) -> None:
    """Refuse a sampling floor outside [0, 1)."""
    if not 0 <= min_prob < 1:
        raise ConfigError(f"min_prob must lie in [0, 1), got {min_prob}")
