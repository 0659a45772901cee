"""The ``edgediff`` command line: the one layer above everything; nothing imports it.

``main.py`` is the dispatcher (a table of subcommand -> module, imported only when chosen); each other module is one
subcommand exposing ``add_arguments(parser)`` and ``run_from_args(args) -> int``; ``args.py`` holds the arguments
several subcommands share. ``python -m cli COMMAND ...`` is the same as ``edgediff COMMAND ...`` (subprocesses and
containers use it so they need no console script on PATH).
"""
