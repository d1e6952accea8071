"""``python -m pycompress``: the ``pycompress`` command."""

import sys

from pycompress.cli import main

sys.exit(main())
