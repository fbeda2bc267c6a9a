"""``python -m converter.cli``: the same as the ``convert`` command."""

import sys

from converter.cli.main import main

if __name__ == "__main__":  # not when a build process's fork server imports the main module
    sys.exit(main())
