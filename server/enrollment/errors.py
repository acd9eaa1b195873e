"""Why enrollment was refused: one exception class per reason, each with its wire code.

Every class is a :class:`~fedge.errors.UsageError` (exit 2: a new token or another name fixes
it). ``reason`` is the short code the enrollment service sends back in its JSON answer and the
registry writes to the audit log; the service maps the classes to HTTP statuses.
"""

from __future__ import annotations

from fedge.errors import UsageError

__all__ = [
    "DuplicateKeyError",
    "DuplicateNameError",
    "EnrollmentError",
    "ExpiredTokenError",
    "MalformedTokenError",
    "ReusedTokenError",
    "RevokedHolderError",
    "SupersededTokenError",
    "TokenError",
    "UnknownHolderError",
    "UnknownTokenError",
]


class EnrollmentError(UsageError):
    """Enrollment was refused; fixing the input (a new token, another name) fixes it.

    ``reason`` is a short code for the wire (the enrollment service's JSON answer) and the
    audit log.
    """

    reason = "refused"


class TokenError(EnrollmentError):
    """An enrollment token cannot be redeemed."""

    reason = "token"


class MalformedTokenError(TokenError):
    reason = "malformed-token"


class UnknownTokenError(TokenError):
    reason = "unknown-token"


class ExpiredTokenError(TokenError):
    reason = "expired-token"


class ReusedTokenError(TokenError):
    reason = "reused-token"


class SupersededTokenError(TokenError):
    reason = "superseded-token"


class RevokedHolderError(EnrollmentError):
    reason = "revoked"


class DuplicateNameError(EnrollmentError):
    reason = "duplicate-name"


class DuplicateKeyError(EnrollmentError):
    reason = "duplicate-key"


class UnknownHolderError(EnrollmentError):
    reason = "unknown-holder"
