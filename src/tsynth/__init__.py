"""tsynth: realistic, private synthetic time series from a language model fine-tuned on your data."""

from .data import SeriesSet
from .errors import ArtifactError, ConfigError, DataError, TsynthError

__version__ = "0.1.0"

__all__ = ["SeriesSet", "TsynthError", "DataError", "ConfigError", "ArtifactError", "__version__"]
