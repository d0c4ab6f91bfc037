"""``python -m scaffold_actors.cli``: the ``scaffold`` command."""

import sys

from ._main import main

sys.exit(main())
