"""``python -m tsynth`` (and ``accelerate launch -m tsynth fit ...``): the command line."""

import sys

from .cli import main

sys.exit(main())
