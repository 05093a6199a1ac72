"""The one error type subcommands raise for mistakes in what the user asked for."""


class CommandError(Exception):
    """Reported by ``adamkit.cli.main`` as one line on stderr, with exit status 2 like argparse."""
