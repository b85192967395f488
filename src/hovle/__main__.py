"""``python -m hovle`` (and ``torchrun -m hovle``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
