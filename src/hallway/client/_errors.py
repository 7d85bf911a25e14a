"""The client's exceptions: what ends a subscription or a request for good."""

from __future__ import annotations

from hallway.errors import HallwayError


class ClientError(HallwayError):
    """Root of the client's errors."""


class ProtocolError(ClientError, ValueError):
    """The server sent something that is not hallway's protocol (or is not hallway at all)."""


class Refused(ClientError):
    """The daemon refused the request for good: ``code`` is ``unauthorized``, ``forbidden``,
    ``bad_request`` or ``too_large``; retrying the same request would not help."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class FingerprintMismatch(ClientError):
    """The server's certificate is not the pinned one: nothing was sent to it."""

    def __init__(self, where: str, expected: str, got: str | None) -> None:
        self.expected = expected
        self.got = got
        seen = f"sha256:{got}" if got else "no certificate"
        super().__init__(
            f"{where}: the server's certificate does not match the pinned fingerprint "
            f"(expected sha256:{expected}, got {seen}); refusing to send it anything")


class TokenRequired(ClientError):
    """The daemon wants a token and none was given."""


class TokenWithheld(ClientError):
    """A token would go to a daemon that was only discovered (mDNS) and has not proved a pinned
    fingerprint, so the client did not connect."""


class Unreachable(ClientError):
    """No answer from the daemon within the time allowed (for one-shot requests, or a
    subscription with ``give_up_after_s``)."""


class RateLimited(ClientError):
    """The daemon kept answering ``rate_limited`` until the request's time was up."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)
