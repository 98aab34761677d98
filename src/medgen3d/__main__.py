"""``python -m medgen3d`` (and ``torchrun -m medgen3d``) run the command line."""

import sys

from medgen3d.cli import main

sys.exit(main())
