"""The errors a request can fail with, each carrying the gRPC status it becomes at the service boundary.

They are raised where the problem is detected (admission, validation, the batcher) and translated in one place
(`rpc.py`), so no module below it needs to know about gRPC contexts.
"""

from __future__ import annotations

import grpc

from vaeserve.errors import VaeserveError


class RequestError(VaeserveError):
    """A request the server refuses; `code` is the gRPC status it is answered with."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(RequestError):
    """A request field that does not fit the model: the message names the field and the expected value."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field  # a tensor's name, or name.part ("images.data")
        self.detail = message

    def renamed(self, tensor: str) -> InvalidArgument:
        """The same error naming `tensor` (another protocol's name for it), the part of it kept."""
        _, dot, part = self.field.partition(".")
        return InvalidArgument(tensor + dot + part, self.detail)


class QueueFull(RequestError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Overloaded(RequestError):
    """Refused by admission: the calls in flight would keep this one waiting longer than --max-wait-ms."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ShuttingDown(RequestError):
    """Refused while draining: UNAVAILABLE, the status clients retry (on another replica)."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExpired(RequestError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class FailedPrecondition(RequestError):
    """The request is well formed, but the served model cannot answer it (e.g. a version too old to score)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(RequestError):
    """A model, or a version of it, that this server does not serve (the message names the field)."""

    code = grpc.StatusCode.NOT_FOUND


class NoVersion(RequestError):
    """Every model version was unloaded: UNAVAILABLE until one is loaded, so clients retry (another replica)."""

    code = grpc.StatusCode.UNAVAILABLE


class PermissionDenied(RequestError):
    """A call this server does not take from this caller (the repository calls without an admin token)."""

    code = grpc.StatusCode.PERMISSION_DENIED
