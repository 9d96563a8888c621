"""tsynth: realistic, private synthetic time series from a language model fine-tuned on your data."""

from ._version import __version__
from .data import SeriesSet
from .errors import ArtifactError, ConfigError, DataError, TsynthError
from .evaluate import Evaluation, evaluate
from .synthesizer import Synthesizer

__all__ = ["SeriesSet", "Synthesizer", "evaluate", "Evaluation", "TsynthError", "DataError", "ConfigError",
           "ArtifactError", "__version__"]
