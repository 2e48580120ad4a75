"""The one exception type every subcommand raises for bad input."""


class UserError(Exception):
    """Bad input: printed as one clear line, exit code 2, nothing recorded is lost."""
