"""One module per ``sdn`` subcommand (see :mod:`sdn.cli`)."""
