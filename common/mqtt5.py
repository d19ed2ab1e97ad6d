"""MQTT 5.0 on asyncio, the few packets a load generator and the bridge need (OASIS standard 5.0).

paho-mqtt runs one network thread per client and builds Python objects per packet (a ``Properties``
per message): measured on this project's bridge, its receive path cost about 115 µs of CPU per
QoS 1 message where reading whole socket chunks and splitting them here costs about 6
(docs/PERFORMANCE.md). The edge agent keeps paho (its spool, its one session); the bridge
(:class:`Subscriber`) and the fleet generator (``simulators/mqtt_async.py``) speak MQTT through this
module.

What is implemented, by section of the standard: CONNECT / CONNACK with credentials, clean start,
session expiry and receive maximum (3.1, 3.2); PUBLISH received at QoS 0 and 1 (3.3) and its PUBACK
(3.4); SUBSCRIBE / SUBACK with subscription options (3.8, 3.9); PINGREQ / PINGRESP (3.12, 3.13);
DISCONNECT with its reason code (3.14); properties (2.2.2). Not implemented: QoS 2, topic aliases
(the client announces none, so the broker sends none: 3.1.2.11.8), authentication exchanges (AUTH),
wills.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.errors import Retryable

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
SESSION_EXPIRY = 0x11
RECEIVE_MAXIMUM = 0x21
SERVER_KEEP_ALIVE = 0x13
MAXIMUM_PACKET_SIZE = 0x27
USER_PROPERTY = 0x26
SESSION_TAKEN_OVER = 0x8E  # DISCONNECT reason: another client connected with this client id
# Subscription options (3.8.3.1): retain handling 2 = send no retained messages at subscribe time.
RETAIN_DO_NOT_SEND = 2 << 4

# Property identifier -> how its value is encoded (2.2.2.2).
_BYTE, _U16, _U32, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_PROPERTY_TYPES: dict[int, int] = {
    **dict.fromkeys((0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A), _BYTE),
    **dict.fromkeys((0x13, 0x21, 0x22, 0x23), _U16),
    **dict.fromkeys((0x02, 0x11, 0x18, 0x27), _U32),
    0x0B: _VARINT,
    **dict.fromkeys((0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F), _STRING),
    **dict.fromkeys((0x09, 0x16), _BINARY),
    USER_PROPERTY: _PAIR,
}

Property = tuple[int, int | str | bytes | tuple[str, str]]


class MqttError(Retryable):
    """The broker refused, or the connection broke: connect again later (with a backoff).
    ``reason``: the MQTT reason code, if the broker gave one."""

    def __init__(self, message: str, reason: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason


# -- encoding ------------------------------------------------------------------------------------
def varint(n: int) -> bytes:
    """A variable byte integer (1.5.5)."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(s: str | bytes) -> bytes:
    """A UTF-8 string or binary data: two-byte length, then the bytes (1.5.4, 1.5.6)."""
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def packet(kind: int, flags: int, body: bytes) -> bytes:
    """Fixed header (type and flags, remaining length) and ``body``."""
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    username: str | None,
    password: bytes | None,
    keepalive_s: int,
    session_expiry_s: int,
    clean_start: bool = True,
    receive_maximum: int | None = None,
    maximum_packet_size: int | None = None,
) -> bytes:
    flags = 0x02 if clean_start else 0
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    props = bytes([SESSION_EXPIRY]) + struct.pack(">I", session_expiry_s)
    if receive_maximum is not None:
        props += bytes([RECEIVE_MAXIMUM]) + struct.pack(">H", receive_maximum)
    if maximum_packet_size is not None:
        props += bytes([MAXIMUM_PACKET_SIZE]) + struct.pack(">I", maximum_packet_size)
    body = string("MQTT") + bytes([5, flags]) + struct.pack(">H", keepalive_s) + varint(len(props)) + props
    body += string(client_id)
    if username is not None:
        body += string(username)
    if password is not None:
        body += string(password)
    return packet(CONNECT, 0, body)


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    """A QoS 1 PUBLISH without properties."""
    return packet(PUBLISH, 0x02, string(topic) + struct.pack(">H", packet_id) + b"\x00" + payload)


def subscribe_packet(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    """SUBSCRIBE: each filter with its options byte (QoS | retain handling | …)."""
    body = struct.pack(">H", packet_id) + b"\x00" + b"".join(string(f) + bytes([o]) for f, o in filters)
    return packet(SUBSCRIBE, 0x02, body)


def puback_packet(packet_id: int) -> bytes:
    """PUBACK, reason "success" (omitted: remaining length 2, 3.4.2.1)."""
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


PINGREQ_PACKET = packet(PINGREQ, 0, b"")
DISCONNECT_PACKET = packet(DISCONNECT, 0, b"\x00\x00")  # normal disconnection, no properties


# -- decoding ------------------------------------------------------------------------------------
def read_varint(buf: bytes | bytearray, i: int) -> tuple[int, int]:
    """The variable byte integer at ``buf[i:]`` and the index after it. IndexError: incomplete."""
    n, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7
        if shift > 21:
            raise MqttError("malformed variable byte integer")


def properties(buf: bytes | bytearray) -> list[Property]:
    """Decode a property list (without its length prefix)."""
    out: list[Property] = []
    i = 0
    try:
        while i < len(buf):
            pid = buf[i]
            i += 1
            kind = _PROPERTY_TYPES.get(pid)
            value: int | str | bytes | tuple[str, str]
            if kind == _BYTE:
                value, i = buf[i], i + 1
            elif kind == _U16:
                value, i = int.from_bytes(buf[i : i + 2], "big"), i + 2
            elif kind == _U32:
                value, i = int.from_bytes(buf[i : i + 4], "big"), i + 4
            elif kind == _VARINT:
                value, i = read_varint(buf, i)
            elif kind in (_STRING, _BINARY):
                n = int.from_bytes(buf[i : i + 2], "big")
                raw, i = bytes(buf[i + 2 : i + 2 + n]), i + 2 + n
                value = raw.decode() if kind == _STRING else raw
            elif kind == _PAIR:
                pair = []
                for _ in range(2):
                    n = int.from_bytes(buf[i : i + 2], "big")
                    pair.append(bytes(buf[i + 2 : i + 2 + n]).decode())
                    i += 2 + n
                value = (pair[0], pair[1])
            else:
                raise MqttError(f"unknown property identifier 0x{pid:02x}")
            if i > len(buf):
                raise MqttError("truncated property")
            out.append((pid, value))
    except (IndexError, UnicodeDecodeError) as exc:
        raise MqttError(f"malformed properties: {exc}") from None
    return out


def prefixed_properties(
    buf: bytes | bytearray, i: int = 0, end: int | None = None
) -> tuple[list[Property], int]:
    """A property list with its length prefix at ``buf[i:]``, within ``buf[:end]`` (its packet),
    and the index after it."""
    end = len(buf) if end is None else end
    try:
        n, j = read_varint(buf, i)
    except IndexError:
        raise MqttError("truncated property length") from None
    if j + n > end:
        raise MqttError("malformed properties: longer than their packet")
    return properties(buf[j : j + n]), j + n


def connack_property(connack_body: bytes, pid: int, default: int) -> int:
    """An integer property of a CONNACK body (3.2.2.3), or ``default`` when the broker sent none."""
    if len(connack_body) <= 2:
        return default
    props, _ = prefixed_properties(connack_body, 2)
    return next((int(v) for p, v in props if p == pid and isinstance(v, int)), default)


def receive_maximum(connack_body: bytes) -> int:
    """The broker's Receive Maximum from a CONNACK body (default 65535, 3.2.2.3.3)."""
    return connack_property(connack_body, RECEIVE_MAXIMUM, 65535)


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """One whole packet: (type, flags, body). For handshakes and small clients; the subscriber
    splits whole socket reads instead (:func:`split_publishes`)."""
    head = await reader.readexactly(1)
    length, shift = 0, 0
    while True:
        b = (await reader.readexactly(1))[0]
        length |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 21:
            raise MqttError("malformed remaining length")
    return head[0] >> 4, head[0] & 0x0F, await reader.readexactly(length)


async def open_session(
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    client_id: str,
    connect: bytes,
    timeout: float,
    limit: int = 2**16,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Open the connection, send ``connect`` (a CONNECT packet) and read the CONNACK: the reader,
    the writer and the CONNACK body. Raises MqttError (with the reason code) if the broker refuses
    or hangs up, OSError if it cannot be reached; the connection is closed on any failure."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=tls, limit=limit), timeout
    )
    try:
        writer.write(connect)
        try:
            kind, _, body = await asyncio.wait_for(read_packet(reader), timeout)
        except asyncio.IncompleteReadError:
            raise MqttError(f"{client_id}: the broker closed the connection before its CONNACK") from None
        if kind != CONNACK or len(body) < 2:
            raise MqttError(f"{client_id}: expected CONNACK, got packet type {kind}")
        if body[1] >= 0x80:
            raise MqttError(f"{client_id}: connection refused, reason code 0x{body[1]:02x}", body[1])
    except BaseException:
        writer.close()
        raise
    return reader, writer, body


@dataclass(slots=True)
class Inbound:
    """A PUBLISH received: its exact payload, and what is needed to acknowledge it."""

    topic: str
    payload: bytes
    qos: int
    packet_id: int  # 0 at QoS 0 (nothing to acknowledge)
    user_properties: tuple[tuple[str, str], ...] = ()


def split_packets(buf: bytearray) -> tuple[list[tuple[int, int, int, int]], int]:
    """The whole packets at the start of ``buf``, each as (type, flags, body start, body end), and
    how many bytes they span (a partial packet at the end waits for the next read)."""
    out: list[tuple[int, int, int, int]] = []
    i, size = 0, len(buf)
    while size - i >= 2:
        try:
            length, j = read_varint(buf, i + 1)
        except IndexError:
            break
        if j + length > size:
            break
        head = buf[i]
        out.append((head >> 4, head & 0x0F, j, j + length))
        i = j + length
    return out, i


def decode_publish(buf: bytearray, flags: int, start: int, end: int) -> Inbound:
    """The PUBLISH whose body is ``buf[start:end]`` (3.3.2): topic, packet id, properties, payload."""
    try:
        n = (buf[start] << 8) | buf[start + 1]
        topic = buf[start + 2 : start + 2 + n].decode()
        i = start + 2 + n
        qos = (flags >> 1) & 3
        if qos > 1:  # never granted: the subscriptions ask for QoS 1 at most (3 is malformed)
            raise MqttError(f"PUBLISH at QoS {qos} on a subscription of QoS 1")
        pid = 0
        if qos:
            pid = (buf[i] << 8) | buf[i + 1]
            i += 2
        if buf[i] == 0:  # no properties: the common case, no parsing
            i += 1
            users: tuple[tuple[str, str], ...] = ()
        else:
            props, i = prefixed_properties(buf, i, end)
            users = tuple(v for p, v in props if p == USER_PROPERTY and isinstance(v, tuple))
    except (IndexError, UnicodeDecodeError) as exc:
        raise MqttError(f"malformed PUBLISH: {exc}") from None
    if i > end:
        raise MqttError("malformed PUBLISH: header longer than the packet")
    return Inbound(topic, bytes(buf[i:end]), qos, pid, users)


# -- the subscriber ------------------------------------------------------------------------------
class Subscriber:
    """One MQTT 5 session that receives: connect, subscribe, hand every PUBLISH to ``on_messages``
    (a list per socket read, in arrival order, on the event loop) and acknowledge each one when the
    caller says so (:meth:`ack`). :meth:`pause` stops reading the socket (the broker keeps what it
    cannot deliver); ``closed`` completes with the :class:`MqttError` that ended the connection.
    No reconnection of its own: the caller decides, with its own backoff."""

    READ_SIZE = 256 * 1024

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        on_messages: Callable[[list[Inbound]], None],
        *,
        username: str | None = None,
        password: bytes | None = None,
        tls: ssl.SSLContext | None = None,
        keepalive_s: int = 60,
        session_expiry_s: int = 0,
        clean_start: bool = True,
        receive_maximum: int = 65535,
        maximum_packet_size: int | None = None,
    ) -> None:
        """``maximum_packet_size``: announced to the broker, which then sends no larger packet
        (3.1.2.11.4): the bound on one read's buffer."""
        self.host, self.port, self.client_id = host, port, client_id
        self._on_messages = on_messages
        self._username, self._password, self._tls = username, password, tls
        self._keepalive_s, self._expiry_s = keepalive_s, session_expiry_s
        self._clean_start, self._receive_maximum = clean_start, receive_maximum
        self._maximum_packet_size = maximum_packet_size
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._readable = asyncio.Event()
        self._readable.set()
        self._closing = False
        self._last_read = 0.0
        self._suback: asyncio.Future[list[int]] | None = None
        self._acks = bytearray()  # PUBACKs not written yet: one write per turn of the event loop
        self.session_present = False
        self.closed: asyncio.Future[MqttError] = asyncio.get_running_loop().create_future()

    async def connect(self, filters: list[tuple[str, int]], timeout: float = 10.0) -> list[int]:
        """Connect, subscribe to ``filters`` ((filter, options byte)) and start receiving. Returns
        the SUBACK reason codes, one per filter (0–2: granted QoS; 0x80 and above: refused).
        Raises MqttError if the broker refuses or hangs up, OSError if it cannot be reached; on
        any failure (or cancellation) nothing of the session is left running."""
        connect = connect_packet(
            self.client_id,
            username=self._username,
            password=self._password,
            keepalive_s=self._keepalive_s,
            session_expiry_s=self._expiry_s,
            clean_start=self._clean_start,
            receive_maximum=self._receive_maximum,
            maximum_packet_size=self._maximum_packet_size,
        )
        reader, writer, body = await open_session(
            self.host, self.port, self._tls, self.client_id, connect, timeout, self.READ_SIZE
        )
        self.session_present = bool(body[0] & 1)
        # The broker may ask for a shorter keep-alive than ours: then it is the one (3.2.2.3.14).
        self._keepalive_s = connack_property(body, SERVER_KEEP_ALIVE, self._keepalive_s)
        self._reader, self._writer = reader, writer
        self._last_read = time.monotonic()
        suback: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._suback = suback
        self._tasks = [asyncio.create_task(self._read())]
        if self._keepalive_s:
            self._tasks.append(asyncio.create_task(self._ping()))
        try:
            writer.write(subscribe_packet(1, filters))
            waiters: set[asyncio.Future[Any]] = {suback, self.closed}
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if suback.done() and not suback.cancelled():
                codes = suback.result()
                if len(codes) != len(filters):
                    raise MqttError(
                        f"{self.client_id}: SUBACK with {len(codes)} codes for {len(filters)} filters"
                    )
                return codes
            raise (
                self.closed.result()
                if self.closed.done()
                else MqttError(f"{self.client_id}: no SUBACK in {timeout:g}s")
            )
        except BaseException:
            await self.close()
            raise

    def ack(self, packet_id: int) -> None:
        """Acknowledge a QoS 1 message. The PUBACKs of one turn of the event loop go out in one
        write, in the order acknowledged (a socket write each would cost a system call each, in
        this process and in the broker)."""
        if packet_id and not self._closing:  # (close writes the queued ones, then DISCONNECT)
            if not self._acks:
                asyncio.get_running_loop().call_soon(self._write_acks)
            self._acks += puback_packet(packet_id)

    def _write_acks(self) -> None:
        acks, self._acks = self._acks, bytearray()
        w = self._writer
        if acks and w is not None and not self.closed.done():
            w.write(acks)

    def pause(self) -> None:
        """Stop reading the socket. Not before the SUBACK (what the session queued arrives first,
        at most ``receive_maximum`` messages) nor while closing."""
        if not self._closing:
            self._readable.clear()

    def resume(self) -> None:
        if not self._readable.is_set():
            self._last_read = time.monotonic()  # the keep-alive clock restarts with reading
            self._readable.set()

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self.closed.done()

    def _end(self, error: MqttError) -> None:
        if not self.closed.done():
            self.closed.set_result(error)
        if self._suback is not None and not self._suback.done():
            self._suback.cancel()

    async def _read(self) -> None:
        assert self._reader is not None
        reader, buf = self._reader, bytearray()
        error = MqttError(f"{self.client_id}: the broker closed the connection")
        try:
            disconnected = False
            while not disconnected:
                if self._suback is not None and self._suback.done():
                    await self._readable.wait()
                chunk = await reader.read(self.READ_SIZE)
                if not chunk:
                    break
                self._last_read = time.monotonic()
                buf += chunk
                found, used = split_packets(buf)
                batch: list[Inbound] = []
                for kind, flags, start, end in found:
                    if kind == PUBLISH:
                        batch.append(decode_publish(buf, flags, start, end))
                    elif kind == SUBACK:
                        _, i = prefixed_properties(buf[start + 2 : end])
                        if self._suback is not None and not self._suback.done():
                            self._suback.set_result(list(buf[start + 2 + i : end]))
                    elif kind == DISCONNECT:
                        reason = buf[start] if end > start else 0
                        error = MqttError(
                            f"{self.client_id}: the broker disconnected, reason code 0x{reason:02x}", reason
                        )
                        disconnected = True
                        break
                    # PINGRESP and anything else a subscriber does not act on: nothing to do
                del buf[:used]
                if batch and not self._closing:  # while closing: redelivered to the next session
                    self._on_messages(batch)
        except MqttError as exc:
            error = exc
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            error = MqttError(f"{self.client_id}: connection lost: {exc}")
        except Exception as exc:  # a bug in a callback: end the session, say what it was
            log.exception("%s: receiving failed", self.client_id)
            error = MqttError(f"{self.client_id}: receiving failed: {type(exc).__name__}: {exc}")
        finally:
            self._end(error)
            if self._writer is not None:
                self._writer.close()

    async def _ping(self) -> None:
        """PINGREQ every half keep-alive; no byte from the broker for 1.5 keep-alives while reading
        is the connection lost (3.1.2.10)."""
        while not self.closed.done():
            await asyncio.sleep(self._keepalive_s / 2)
            if self._writer is None or self.closed.done() or self._closing:
                return
            if self._readable.is_set() and time.monotonic() - self._last_read > 1.5 * self._keepalive_s:
                self._end(
                    MqttError(f"{self.client_id}: no answer from the broker in {1.5 * self._keepalive_s:g}s")
                )
                self._writer.close()
                return
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._writer.write(PINGREQ_PACKET)

    async def close(self, timeout: float = 5.0) -> None:
        """DISCONNECT (normal disconnection) after the acknowledgements written so far, and close.
        Waits for the broker to close its side first: closing ours at once can reset the connection
        and make the broker drop acknowledgements it had received but not yet read (measured with
        mosquitto 2.0 saving its state on every change: acknowledged messages came back). What
        arrives meanwhile is not handed over (it is redelivered to the next session)."""
        self._write_acks()  # the acknowledgements so far go before the DISCONNECT
        self._closing = True
        self._readable.set()  # read to the end (``pause`` does nothing from now on)
        w = self._writer
        if w is not None and not self.closed.done():
            with contextlib.suppress(ConnectionError, OSError):
                w.write(DISCONNECT_PACKET)
                await asyncio.wait_for(w.drain(), timeout)
                await asyncio.wait_for(asyncio.shield(self.closed), timeout)  # the broker's end of it
        self._end(MqttError(f"{self.client_id}: closed"))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if w is not None:
            w.close()
            with contextlib.suppress(ConnectionError, OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(w.wait_closed(), timeout)
