"""One exception type for mistakes a user can fix.

The CLI prints these as a single ``error: ...`` line and exits with code 2;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names what is wrong and how to fix it."""


def check_at_least(option: str, value: int | None, minimum: int) -> None:
    """Refuse a count below its minimum (None means "not given" and passes)."""
    if value is not None and value < minimum:
        raise UserError(f"{option} must be at least {minimum}, not {value}")


def did_you_mean(word: str, choices) -> str:
    """' (did you mean X?)' naming the closest choice, or '' when none is close."""
    import difflib

    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]}?)" if match else ""
