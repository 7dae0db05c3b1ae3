class UserError(Exception):
    """A mistake of the user's (bad path, bad flag, bad file): the CLI prints it as one line and exits 2."""
