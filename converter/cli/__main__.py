"""``python -m converter.cli``: the same as the ``convert`` command."""

import sys

from converter.cli.main import main

sys.exit(main())
