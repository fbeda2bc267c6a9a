"""The command line: one module per subcommand; nothing in the product imports this package."""

from converter.cli.main import main

__all__ = ["main"]
