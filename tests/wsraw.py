"""Raw WebSocket for the tests: frames written and read byte by byte, hostile ones too (RFC 6455).

The caller side is a plain socket that sends exactly the frames a test builds (``RawCaller``); the upstream
side is a ``scripted.ScriptedUpstream`` handler that answers the handshake with ``accept`` and then reads
and writes frames on asyncio streams.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import struct

from tests.scripted import connect, read_answer

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
KEY = base64.b64encode(b"0123456789abcdef")


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, length: int | None = None
) -> bytes:
    """One frame; ``length`` declares another payload length than the payload's (an oversize frame's head)."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_frame(code: int, reason: str = "", *, mask: bool = True) -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason.encode(), mask=mask)


def parse(buffer: bytearray) -> tuple[int, bool, bytes] | None:
    """The first whole frame in ``buffer`` (removed from it): opcode, fin, unmasked payload; else ``None``."""
    if len(buffer) < 2:
        return None
    fin, opcode, masked, size = buffer[0] & 0x80, buffer[0] & 0x0F, buffer[1] & 0x80, buffer[1] & 0x7F
    at = 2
    if size == 126:
        if len(buffer) < 4:
            return None
        size, at = struct.unpack("!H", buffer[2:4])[0], 4
    elif size == 127:
        if len(buffer) < 10:
            return None
        size, at = struct.unpack("!Q", buffer[2:10])[0], 10
    key = b""
    if masked:
        key, at = bytes(buffer[at : at + 4]), at + 4
    if len(buffer) < at + size:
        return None
    payload = bytes(buffer[at : at + size])
    if masked:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    del buffer[: at + size]
    return opcode, bool(fin), payload


def close_code(payload: bytes) -> tuple[int, str]:
    return (struct.unpack("!H", payload[:2])[0], payload[2:].decode()) if payload else (1005, "")


class RawCaller:
    """A caller on a plain socket: its handshake and frames as a test writes them."""

    def __init__(self, url: str, path: str = "/v1/realtime?model=m", headers: bytes = b"") -> None:
        self.sock = connect(url)
        self.buffer = bytearray()
        self.sock.sendall(
            b"GET %s HTTP/1.1\r\nhost: caller\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-key: %s\r\nsec-websocket-version: 13\r\n%s\r\n" % (path.encode(), KEY, headers)
        )
        answer = read_answer(self.sock)
        self.head, _, rest = answer.partition(b"\r\n\r\n")
        self.buffer += rest

    @property
    def status(self) -> int:
        return int(self.head.split(b" ")[1])

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_frame(self, timeout: float = 5.0) -> tuple[int, bool, bytes] | None:
        """The next frame from the sidecar, or ``None`` when the connection ended first."""
        self.sock.settimeout(timeout)
        while (found := parse(self.buffer)) is None:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        return found

    def ended(self, timeout: float = 5.0) -> bool:
        """Whether the sidecar closes the connection within ``timeout`` (frames before the end are read)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawCaller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, extra: bytes = b"") -> bytes:
    """Read a handshake and answer it 101 (with ``extra`` header lines); the request's head."""
    head = await reader.readuntil(b"\r\n\r\n")
    key = b""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"sec-websocket-key:"):
            key = line.split(b":", 1)[1].strip()
    digest = base64.b64encode(hashlib.sha1(key + GUID).digest())
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-accept: %s\r\n%s\r\n" % (digest, extra)
    )
    await writer.drain()
    return head


async def read_frame(reader: asyncio.StreamReader, buffer: bytearray) -> tuple[int, bool, bytes] | None:
    """The next frame from the sidecar on an upstream's stream, or ``None`` at its end."""
    while (found := parse(buffer)) is None:
        chunk = await reader.read(65536)
        if not chunk:
            return None
        buffer += chunk
    return found


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
