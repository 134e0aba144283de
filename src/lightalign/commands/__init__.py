"""The ``lightalign`` subcommands other than ``run``, one module each (``cli.py`` only parses and dispatches)."""
