"""The one base class for errors a user can fix (bad file, bad flag, bad data).

Raised where the problem is known, with a message that names the file or flag; the CLI prints it as one
line and exits 2, the gRPC layer translates its own subclasses to status codes.
"""


class VaeserveError(Exception):
    """A problem with the user's input, described completely by its message."""
