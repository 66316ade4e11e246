"""One exception type for every user-facing problem, with a message that says what to fix."""


class PlacementError(ValueError):
    """Bad input or an impossible request; the message names the problem and the fix."""
