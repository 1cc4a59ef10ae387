"""One exception type for every mistake a user can fix.

The CLI turns a UserError into a single line on stderr and its exit code (2 unless said otherwise,
e.g. 130/143 after an interruption); anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input the user can fix: the message names the problem and what to do."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
