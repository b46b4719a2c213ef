"""`python -m training.kto ...` (see cli.py)."""

import sys

from .cli import main

sys.exit(main())
