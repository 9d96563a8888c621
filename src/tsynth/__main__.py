"""``python -m tsynth`` (and ``accelerate launch -m tsynth fit ...``): the command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
