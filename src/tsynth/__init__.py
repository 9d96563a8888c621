"""tsynth: realistic, private synthetic time series from a language model fine-tuned on your data."""

from .data import SeriesSet
from .evaluate import Evaluation, evaluate
from .errors import ArtifactError, ConfigError, DataError, TsynthError
from .synthesizer import Synthesizer

__version__ = "0.1.0"

__all__ = ["SeriesSet", "Synthesizer", "evaluate", "Evaluation", "TsynthError", "DataError", "ConfigError", "ArtifactError", "__version__"]
