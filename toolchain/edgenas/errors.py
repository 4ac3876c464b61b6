"""One error type for every bad input: the CLI prints it as one line and exits with code 2."""


class EdgenasError(Exception):
    """A user-facing problem: `problem` says what is wrong, `fix` says what to do about it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        return f"error: {self.problem}" + (f" ({self.fix})" if self.fix else "")
