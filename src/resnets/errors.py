class UserError(Exception):
    """A mistake of the user's (bad path, bad flag, bad file): the CLI prints it as one line and exits 2."""

    exit_status = 2


class EnvironmentFailure(UserError):
    """The machine refused, not the command (disk full, read-only or unwritable folder): one line, exit 1."""

    exit_status = 1
