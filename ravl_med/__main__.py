"""``python -m ravl_med`` runs the ``ravl-med`` command."""

import sys

from ravl_med.cli import main

sys.exit(main())
