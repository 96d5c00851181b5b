"""gossipd wire protocol, sans-io: pure functions and small state machines.

No trio, no libp2p, no sockets here; see PROTOCOL.md for the normative description.
"""

from .crypto import (
    ed25519_public_key_from_peer_id,
    new_ephemeral,
    open_sealed,
    peer_id_from_ed25519_public_key,
    seal,
    sign,
    verify,
)
from .errors import (
    AuthenticationError,
    DecodeError,
    FrameTooLarge,
    IntegrityError,
    LimitExceeded,
    ProtocolError,
    RemoteError,
    SpecMismatch,
    UnexpectedMessage,
    VersionMismatch,
)
from .framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from .messages import (
    AVG_PROTOCOL_ID,
    PEERS_PROTOCOL_ID,
    PROTOCOL_VERSION,
    ErrorMsg,
    Hello,
    Message,
    ParamsChunk,
    ParamsStart,
    PeerRecord,
    PeersRequest,
    PeersResponse,
    encode_message,
    from_wire,
    to_wire,
)
from .session import AveragingSession, error_frame
from .tensors import decode_params, encode_params

__all__ = [
    "AVG_PROTOCOL_ID",
    "DEFAULT_MAX_FRAME",
    "PEERS_PROTOCOL_ID",
    "PROTOCOL_VERSION",
    "AuthenticationError",
    "AveragingSession",
    "DecodeError",
    "ErrorMsg",
    "FrameDecoder",
    "FrameTooLarge",
    "Hello",
    "IntegrityError",
    "LimitExceeded",
    "Message",
    "ParamsChunk",
    "ParamsStart",
    "PeerRecord",
    "PeersRequest",
    "PeersResponse",
    "ProtocolError",
    "RemoteError",
    "SpecMismatch",
    "UnexpectedMessage",
    "VersionMismatch",
    "decode_params",
    "ed25519_public_key_from_peer_id",
    "encode_frame",
    "encode_message",
    "encode_params",
    "error_frame",
    "from_wire",
    "new_ephemeral",
    "open_sealed",
    "peer_id_from_ed25519_public_key",
    "seal",
    "sign",
    "to_wire",
    "verify",
]
