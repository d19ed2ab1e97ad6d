"""A lean MQTT 5 publisher on asyncio: thousands of sessions in one process (issue 16's fleet shape).

paho-mqtt runs a network thread per client, which caps a load generator at a few hundred sessions;
a real fleet is one session per vehicle. This client speaks just what a vehicle needs — CONNECT with
credentials and session expiry, QoS 1 PUBLISH with PUBACK (and its reason code), PINGREQ, DISCONNECT
(MQTT 5.0, OASIS standard, sections 3.1–3.4, 3.12–3.14) — over ``asyncio`` streams, optionally TLS.
It is a load generator's client, not the edge agent's: the agent keeps paho and its spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct

CONNECT, CONNACK, PUBLISH, PUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 12, 13, 14
SESSION_EXPIRY = 0x11
RECEIVE_MAXIMUM = 0x21


class MqttError(Exception):
    """The broker refused the connection, or the connection broke."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + _varint(len(body)) + body


def connect_packet(
    client_id: str, *, username: str | None, password: bytes | None, keepalive_s: int, session_expiry_s: int
) -> bytes:
    flags = 0x02  # clean start
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    props = bytes([SESSION_EXPIRY]) + struct.pack(">I", session_expiry_s)
    body = _string("MQTT") + bytes([5, flags]) + struct.pack(">H", keepalive_s) + _varint(len(props)) + props
    body += _string(client_id)
    if username is not None:
        body += _string(username)
    if password is not None:
        body += _string(password)
    return _packet(CONNECT, 0, body)


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    return _packet(PUBLISH, 0x02, _string(topic) + struct.pack(">H", packet_id) + b"\x00" + payload)  # QoS 1


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
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


class AsyncPublisher:
    """One MQTT 5 session. ``await publish(topic, payload)`` returns the PUBACK reason code (0:
    success, 0x10: no matching subscribers; 0x80 and above: refused)."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        username: str | None = None,
        password: bytes | None = None,
        tls: ssl.SSLContext | None = None,
        keepalive_s: int = 60,
        session_expiry_s: int = 0,
    ) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self._username, self._password, self._tls = username, password, tls
        self._keepalive_s, self._expiry_s = keepalive_s, session_expiry_s
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._acks: dict[int, asyncio.Future[int]] = {}
        self._next_id = 0
        self._max_inflight = 65535  # the broker's receive maximum: unacknowledged QoS 1 messages
        self._inflight = 0
        self._freed = asyncio.Event()
        self.closed: asyncio.Future[None] | None = None

    async def connect(self, timeout: float = 10.0) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self._tls), timeout
        )
        writer.write(
            connect_packet(
                self.client_id,
                username=self._username,
                password=self._password,
                keepalive_s=self._keepalive_s,
                session_expiry_s=self._expiry_s,
            )
        )
        kind, _, body = await asyncio.wait_for(_read_packet(reader), timeout)
        if kind != CONNACK or len(body) < 2:
            writer.close()
            raise MqttError(f"{self.client_id}: expected CONNACK, got packet type {kind}")
        if body[1] != 0:
            writer.close()
            raise MqttError(f"{self.client_id}: connection refused, reason code 0x{body[1]:02x}")
        self._max_inflight = _receive_maximum(body[2:])
        self._writer = writer
        self.closed = asyncio.get_running_loop().create_future()
        self._reader_task = asyncio.create_task(self._read(reader))
        if self._keepalive_s:
            self._pinger = asyncio.create_task(self._ping())

    async def publish(self, topic: str, payload: bytes) -> int:
        while self._writer is not None and self._inflight >= self._max_inflight:
            self._freed.clear()
            await self._freed.wait()
        return await self.publish_nowait(topic, payload)

    @property
    def room(self) -> bool:
        """Whether another message fits under the broker's receive maximum now."""
        return self._inflight < self._max_inflight

    def publish_nowait(self, topic: str, payload: bytes) -> asyncio.Future[int]:
        """Write one QoS 1 PUBLISH now and return the future of its PUBACK reason code: no task per
        message (a load generator's thousands of sessions). Needs ``room``; ``publish`` waits for it."""
        if self._writer is None:
            raise MqttError(f"{self.client_id}: not connected")
        if self.closed is not None and self.closed.done():  # the connection broke: no PUBACK will come
            raise MqttError(f"{self.client_id}: connection lost")
        if self._inflight >= self._max_inflight:
            raise MqttError(
                f"{self.client_id}: the broker's receive maximum ({self._max_inflight}) is reached"
            )
        self._inflight += 1
        self._next_id = self._next_id % 65535 + 1
        pid = self._next_id
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(self._acked)
        self._acks[pid] = fut
        self._writer.write(publish_packet(topic, payload, pid))
        return fut

    def _acked(self, _: asyncio.Future[int]) -> None:
        self._inflight -= 1
        self._freed.set()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        error: BaseException = MqttError(f"{self.client_id}: connection closed")
        try:
            while True:
                kind, _, body = await _read_packet(reader)
                if kind == PUBACK:
                    pid = struct.unpack(">H", body[:2])[0]
                    fut = self._acks.pop(pid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(body[2] if len(body) > 2 else 0)
                elif kind == DISCONNECT:
                    reason = body[0] if body else 0
                    error = MqttError(
                        f"{self.client_id}: the broker disconnected, reason code 0x{reason:02x}"
                    )
                    break
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            error = MqttError(f"{self.client_id}: connection lost: {exc}")
        finally:
            for fut in self._acks.values():
                if not fut.done():
                    fut.set_exception(error)
            self._acks.clear()
            if self.closed is not None and not self.closed.done():
                self.closed.set_result(None)

    async def _ping(self) -> None:
        while self._writer is not None:
            await asyncio.sleep(self._keepalive_s / 2)
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._writer.write(_packet(PINGREQ, 0, b""))

    async def close(self) -> None:
        """DISCONNECT (normal disconnection) and close the connection."""
        w, self._writer = self._writer, None
        self._freed.set()  # a publisher waiting for room learns the session is closed
        for task in (self._pinger, self._reader_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if w is not None:
            with contextlib.suppress(ConnectionError, OSError):
                w.write(_packet(DISCONNECT, 0, b"\x00\x00"))
                await w.drain()
            w.close()
            with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
                await w.wait_closed()


def _receive_maximum(connack_props: bytes) -> int:
    """The broker's Receive Maximum from CONNACK properties (default 65535)."""
    if not connack_props:
        return 65535
    length, i, shift = 0, 0, 0
    while True:  # property length, a variable byte integer
        b = connack_props[i]
        length |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            break
        shift += 7
    props, j = connack_props[i : i + length], 0
    while j < len(props):
        pid = props[j]
        j += 1
        if pid == RECEIVE_MAXIMUM:
            return int(struct.unpack(">H", props[j : j + 2])[0])
        # skip the value: only the types CONNACK uses
        if pid in (0x11, 0x27):  # four-byte integers
            j += 4
        elif pid in (0x13, 0x21, 0x22):  # two-byte integers
            j += 2
        elif pid in (0x24, 0x25, 0x28, 0x29, 0x2A):  # bytes
            j += 1
        elif pid in (0x12, 0x15, 0x1A, 0x1C, 0x1F) or pid == 0x16:  # strings
            j += 2 + struct.unpack(">H", props[j : j + 2])[0]
        elif pid == 0x26:  # user property: a string pair
            for _ in range(2):
                j += 2 + struct.unpack(">H", props[j : j + 2])[0]
        else:
            return 65535
    return 65535
