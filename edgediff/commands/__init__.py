"""Subcommands of the core package (``generate``, ``variants``) and the argument helpers every command shares."""
