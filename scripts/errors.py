"""One exception type for bad input, whose message is a single line naming the file and the problem."""


class LandmarkDataError(ValueError):
    """Bad input data: the message reads ``<file>: <problem>`` and is meant to be shown as is."""

    def __init__(self, source, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


def exits_on_data_error(function):
    """For functions the configs call: bad input ends the program with its one-line message, no traceback.

    MONAI's config parser wraps ordinary exceptions in a long traceback; SystemExit passes through it.
    """
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except LandmarkDataError as error:
            raise SystemExit(f"error: {error}") from None

    return wrapper
