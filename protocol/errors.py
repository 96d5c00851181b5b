"""Typed error tree of the gossipd wire protocol.

Rules:
  * Everything the protocol layer raises because of *remote input* (bytes off the
    wire, a peer's Hello, a peer's Params) is a ``ProtocolError`` subclass. A daemon
    can therefore wrap one ``except ProtocolError`` around a whole exchange and
    turn the error into an ``ErrorMsg`` with ``exc.code``.
  * Local programming mistakes (wrong array shape, calling with a bad seed) raise
    the ordinary ``ValueError``/``TypeError`` instead, so they are never confused
    with a misbehaving peer.
  * ``code`` is a short, stable string that goes on the wire in ``ErrorMsg.code``.
    Codes are part of the protocol: never rename one, only add new ones.
"""

from __future__ import annotations

__all__ = [
    "ALL_ERRORS",
    "AuthenticationError",
    "DecodeError",
    "FrameTooLarge",
    "HistoryRewritten",
    "IntegrityError",
    "LimitExceeded",
    "ParamsMismatch",
    "ParamsRejected",
    "ProtocolError",
    "RemoteError",
    "ReplayDetected",
    "SpecMismatch",
    "UnexpectedMessage",
    "VersionMismatch",
    "error_for_code",
]


class ProtocolError(Exception):
    """Base class: the peer (or its bytes) violated the protocol."""

    code: str = "protocol"


class DecodeError(ProtocolError):
    """The bytes are not a valid message (framing, msgpack, field types/sizes)."""

    code = "decode"


class FrameTooLarge(DecodeError):
    """A frame's length header exceeds the receiver's limit.

    Raised as soon as the 4-byte header is seen, before the body is buffered, so a
    peer cannot make us allocate the announced size.
    """

    code = "frame-too-large"


class UnexpectedMessage(ProtocolError):
    """A well-formed message arrived in a state where it is not allowed."""

    code = "unexpected"


class VersionMismatch(ProtocolError):
    """The peer speaks a different PROTOCOL_VERSION."""

    code = "version"


class AuthenticationError(ProtocolError):
    """Bad signature, or the signing key does not match the peer ID."""

    code = "auth"


class ReplayDetected(AuthenticationError):
    """An initiator Hello outside the time window or with an exchange id already used."""

    code = "replay"


class HistoryRewritten(AuthenticationError):
    """The peer's ledger does not extend the head we saw before: its history was rewritten
    (or rolled back), or its receipt signature is missing or wrong."""

    code = "history"


class ParamsMismatch(AuthenticationError):
    """The parameters that arrived are not the ones whose hash the peer's Hello committed to
    and its receipt signed (PROTOCOL.md 4.7)."""

    code = "params-hash"


class IntegrityError(ProtocolError):
    """AEAD failure: tampering, truncation, reordering or trailing data."""

    code = "integrity"


class LimitExceeded(ProtocolError):
    """A count or size is over the protocol caps."""

    code = "limit"


class SpecMismatch(ProtocolError):
    """The peer trains a different model (spec string or parameter count differs)."""

    code = "spec"


class ParamsRejected(ProtocolError):
    """Well-formed parameters the receiver's robustness checks refuse to merge (a norm far
    from its own model's: gossipd/robust.py). Raised by the receiver, not by protocol/."""

    code = "rejected"


class RemoteError(ProtocolError):
    """The peer sent an ErrorMsg; ``remote_code`` is the code it reported."""

    code = "remote"

    def __init__(self, remote_code: str, message: str) -> None:
        super().__init__(f"peer reported {remote_code}: {message}")
        self.remote_code = remote_code
        self.remote_message = message


ALL_ERRORS: tuple[type[ProtocolError], ...] = (
    ProtocolError,
    DecodeError,
    FrameTooLarge,
    UnexpectedMessage,
    VersionMismatch,
    AuthenticationError,
    ReplayDetected,
    HistoryRewritten,
    ParamsMismatch,
    IntegrityError,
    LimitExceeded,
    SpecMismatch,
    ParamsRejected,
    RemoteError,
)


def error_for_code(code: str) -> type[ProtocolError]:
    """Map a wire code back to its class; unknown codes map to ProtocolError.

    Unknown codes are tolerated (not an error) because newer peers may add codes.
    """
    for cls in ALL_ERRORS:
        if cls.code == code:
            return cls
    return ProtocolError
