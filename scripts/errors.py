"""One exception type for bad input, whose message is a single line naming the file and the problem."""


class LandmarkDataError(ValueError):
    """Bad input data: the message reads ``<file>: <problem>`` and is meant to be shown as is."""

    def __init__(self, source, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")
