"""A lean MQTT 5 publisher on asyncio: thousands of sessions in one process (issue 16's fleet shape).

paho-mqtt runs a network thread per client, which caps a load generator at a few hundred sessions;
a real fleet is one session per vehicle. This client speaks just what a vehicle needs — CONNECT with
credentials and session expiry, QoS 1 PUBLISH with PUBACK (and its reason code), PINGREQ, DISCONNECT
(MQTT 5.0, OASIS standard, sections 3.1–3.4, 3.12–3.14) — over ``asyncio`` streams, optionally TLS;
the packets are encoded and decoded by ``common/mqtt5.py``, which the bridge's subscriber shares.
It is a load generator's client, not the edge agent's: the agent keeps paho and its spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct

from common.mqtt5 import (
    DISCONNECT,
    DISCONNECT_PACKET,
    PINGREQ_PACKET,
    PUBACK,
    MqttError,
    connect_packet,
    open_session,
    publish_packet,
    read_packet,
    receive_maximum,
)

__all__ = ["AsyncPublisher", "MqttError"]


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
        connect = connect_packet(
            self.client_id,
            username=self._username,
            password=self._password,
            keepalive_s=self._keepalive_s,
            session_expiry_s=self._expiry_s,
        )
        reader, writer, body = await open_session(
            self.host, self.port, self._tls, self.client_id, connect, timeout
        )
        self._max_inflight = receive_maximum(body)
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
    def tls_version(self) -> str | None:
        """The TLS version the session negotiated ("TLSv1.3"); None for plain MQTT or before connect."""
        ssl_object = self._writer.get_extra_info("ssl_object") if self._writer is not None else None
        return ssl_object.version() if ssl_object is not None else None

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
                kind, _, body = await read_packet(reader)
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
                self._writer.write(PINGREQ_PACKET)

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
                w.write(DISCONNECT_PACKET)
                await w.drain()
            w.close()
            with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
                await w.wait_closed()
