"""Reading the first TLS ClientHello of a tunnel and extracting its server name (SNI).

Only as much of TLS is understood as is needed to find the SNI: records of type handshake,
reassembled across records and socket reads, holding one ClientHello. Anything else is a
refusal, not a guess.
"""

from __future__ import annotations

import struct
from typing import Final

_RECORD_HANDSHAKE: Final = 22
_HANDSHAKE_CLIENT_HELLO: Final = 1
_MAX_RECORD: Final = 2**14 + 2048  # TLSCiphertext bound; a plaintext hello is smaller
_EXT_SERVER_NAME: Final = 0
_EXT_ECH: Final = 0xFE0D
_NAME_TYPE_HOST: Final = 0
# An extension's type and length (one C call per extension: the loop runs on every tunnel).
_EXTENSION_HEADER: Final = struct.Struct(">HH")


class TlsError(Exception):
    """The tunnel did not start with a well-formed ClientHello; ``reason`` is a short code."""

    def __init__(self, reason: str) -> None:
        """Record the short reason code."""
        super().__init__(reason)
        self.reason = reason


def client_hello_body(data: bytes) -> bytes | None:
    """Return the ClientHello body once ``data`` holds all of it, or None if more is needed.

    Raises:
        TlsError: the bytes are not TLS handshake records carrying a ClientHello.

    """
    handshake = bytearray()
    offset = 0
    while len(data) - offset >= 5:  # noqa: PLR2004 - record header size
        content_type, major, length = data[offset], data[offset + 1], _u16(data, offset + 3)
        if content_type != _RECORD_HANDSHAKE or major != 3:  # noqa: PLR2004 - TLS major version
            raise TlsError("not-tls")
        if length == 0 or length > _MAX_RECORD:
            raise TlsError("malformed-client-hello")
        if len(data) - offset - 5 < length:
            break
        handshake += data[offset + 5 : offset + 5 + length]
        offset += 5 + length
        body = _complete_message(handshake)
        if body is not None:
            return body
    if offset == 0 and data and data[0] != _RECORD_HANDSHAKE:
        raise TlsError("not-tls")
    return None


def _complete_message(handshake: bytearray) -> bytes | None:
    if len(handshake) < 4:  # noqa: PLR2004 - handshake header size
        return None
    if handshake[0] != _HANDSHAKE_CLIENT_HELLO:
        raise TlsError("not-client-hello")
    length = int.from_bytes(handshake[1:4], "big")
    if len(handshake) < 4 + length:
        return None
    return bytes(handshake[4 : 4 + length])


def server_name(body: bytes) -> str | None:
    """Return the host_name of the SNI extension in a ClientHello body, or None if absent.

    Raises:
        TlsError: the body is malformed, carries Encrypted ClientHello, or a non-ASCII name.

    """
    kinds, payload = _extensions(body)
    if _EXT_ECH in kinds:
        # The outer SNI of an ECH hello names the front, not the server the client reaches.
        raise TlsError("encrypted-client-hello")
    if payload is None:
        return None
    names = _vector(payload, 0, 2)
    if len(names) + 2 != len(payload) or len(names) < 3 or names[0] != _NAME_TYPE_HOST:  # noqa: PLR2004
        raise TlsError("malformed-client-hello")
    name = _vector(names, 1, 2)
    if len(name) + 3 != len(names):
        raise TlsError("malformed-client-hello")  # several names: ambiguous by design
    try:
        return name.decode("ascii")
    except UnicodeDecodeError as exc:
        raise TlsError("malformed-sni") from exc


def _extensions(body: bytes) -> tuple[set[int], bytes | None]:
    """Return the extension types of a ClientHello body and its SNI payload (None if absent).

    Raises:
        TlsError: the body is malformed or repeats an extension.

    """
    size = len(body)
    offset = _skip(body, 2 + 32, 1)  # legacy_session_id, after legacy_version and random
    offset = _skip(body, offset, 2)  # cipher_suites
    offset = _skip(body, offset, 1)  # legacy_compression_methods
    if offset == size:
        return set(), None
    if _skip(body, offset, 2) != size:
        raise TlsError("malformed-client-hello")
    kinds: set[int] = set()
    sni: bytes | None = None
    position = offset + 2
    while position < size:
        if size - position < 4:  # noqa: PLR2004 - extension header size
            raise TlsError("malformed-client-hello")
        kind, length = _EXTENSION_HEADER.unpack_from(body, position)
        end = position + 4 + length
        if end > size or kind in kinds:  # duplicates are forbidden by RFC 8446
            raise TlsError("malformed-client-hello")
        kinds.add(kind)
        if kind == _EXT_SERVER_NAME:
            sni = body[position + 4 : end]
        position = end
    return kinds, sni


def _skip(data: bytes, offset: int, width: int) -> int:
    """Return where the length-prefixed vector at ``offset`` ends, bounds-checked."""
    if offset + width > len(data):
        raise TlsError("malformed-client-hello")
    end = offset + width + int.from_bytes(data[offset : offset + width], "big")
    if end > len(data):
        raise TlsError("malformed-client-hello")
    return end


def _vector(data: bytes, offset: int, width: int) -> bytes:
    """Return the length-prefixed vector at ``offset`` (prefix ``width`` bytes), bounds-checked."""
    if offset + width > len(data):
        raise TlsError("malformed-client-hello")
    length = int.from_bytes(data[offset : offset + width], "big")
    end = offset + width + length
    if end > len(data):
        raise TlsError("malformed-client-hello")
    return data[offset + width : end]


def _u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "big")
