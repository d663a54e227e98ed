"""``python -m fastcae`` (and ``torchrun -m fastcae train ...``) runs the console script."""

import sys

from .cli import main

sys.exit(main())
