"""One exception type for mistakes a user can fix.

The CLI prints these as a single ``error: ...`` line and exits with code 2;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names what is wrong and how to fix it."""
