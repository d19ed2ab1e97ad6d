"""GNSS input: NMEA 0183 sentences (GGA, RMC) from a receiver, as VSS position updates.

What comes out, all with VSS paths under ``Vehicle.CurrentLocation``:

* ``Latitude`` / ``Longitude`` in signed degrees (south and west negative), from GGA and RMC;
* ``Altitude`` in m above the WGS 84 *ellipsoid*, as VSS defines it: GGA's altitude above mean
  sea level plus GGA's geoid separation. A GGA without the separation gives no altitude (mean
  sea level differs from the ellipsoid by up to ~100 m, and guessing would be silently wrong);
* ``Heading`` in degrees (0 = north, 90 = east), RMC's course over ground; none when the
  receiver leaves the course empty (typically when stationary);
* ``HorizontalAccuracy`` in m, estimated as GGA's HDOP × ``uere_m``, the user equivalent range
  error. 5 m is typical of a single-frequency receiver without corrections; configure less
  with RTK or SBAS corrections. It is a one-sigma-like figure, not a guaranteed bound.

Timestamps are the sentence's UTC time. RMC carries the date; GGA carries only the time of day
and takes the date of the latest RMC (or, before the first RMC, of the host clock), choosing the
day that puts it nearest that reference so that midnight does not throw it a day off. A sentence
with an empty time gets the host clock.

No fix (GGA quality 0, RMC status V or mode indicator N) gives no position updates and is
counted. Bad checksums, missing checksums, malformed fields and garbage never raise: they are
counted in ``NmeaParser.stats``. Other sentence types (GSV, GSA, VTG, ...) are counted as
unsupported and ignored.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import os
import select
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Annotated

import msgspec
from msgspec import Meta

from common.config import ConfigError
from edge_agent.inputs import SignalUpdate

LATITUDE = "Vehicle.CurrentLocation.Latitude"
LONGITUDE = "Vehicle.CurrentLocation.Longitude"
ALTITUDE = "Vehicle.CurrentLocation.Altitude"
HEADING = "Vehicle.CurrentLocation.Heading"
HORIZONTAL_ACCURACY = "Vehicle.CurrentLocation.HorizontalAccuracy"

# NMEA allows 82 characters per sentence; receivers with proprietary sentences go beyond it.
# Bytes without a line end beyond this are dropped as garbage (a binary protocol on the port).
MAX_LINE = 1024
# HDOP beyond this is not a real value (receivers report 99.99 for "unknown").
MAX_HDOP = 1000.0
# `NmeaSource.read` returns after this many bytes even if more are waiting (a replayed file).
MAX_BYTES_PER_READ = 64 * 1024

_NS_PER_S = 1_000_000_000
_NS_PER_DAY = 86_400 * _NS_PER_S
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


class GnssConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # A serial device (/dev/ttyACM0, /dev/ttyAMA0, /dev/serial/by-id/...), a FIFO or a file.
    device: str = "/dev/ttyACM0"
    # User equivalent range error: HorizontalAccuracy = HDOP × uere_m.
    uere_m: Annotated[float, Meta(gt=0.0, le=1000.0)] = 5.0
    # Serial line speed for UART receivers; 0 leaves it as it is (USB CDC-ACM ignores it).
    baudrate: Annotated[int, Meta(ge=0, le=4_000_000)] = 0


@dataclass(slots=True)
class GnssStats:
    """Counters since the parser was created."""

    lines: int = 0  # non-empty lines seen
    sentences: int = 0  # GGA and RMC sentences with a valid checksum
    positions: int = 0  # of those, sentences that gave a position
    no_fix: int = 0  # of those, sentences that said there is no fix
    bad_checksum: int = 0  # checksum missing or wrong
    garbage: int = 0  # not a sentence, not ASCII, or a malformed field
    unsupported: int = 0  # valid sentences of other types
    io_errors: int = 0  # failed reads of the device
    last_error: str = ""


class _Malformed(ValueError):
    pass


def _decimals(text: str) -> int:
    dot = text.find(".")
    return 0 if dot < 0 else len(text) - dot - 1


def _coordinate(value: str, hemisphere: str, limit: int) -> float:
    """``ddmm.mmmm`` / ``dddmm.mmmm`` and N/S/E/W to signed degrees."""
    dot = value.find(".")
    if dot < 0:
        dot = len(value)
    if dot < 3 or not value[:dot].isdigit():
        raise _Malformed(f"coordinate {value!r}")
    degrees = int(value[: dot - 2])
    minutes = float(value[dot - 2 :])
    if not 0.0 <= minutes < 60.0 or degrees + minutes / 60.0 > limit:
        raise _Malformed(f"coordinate {value!r}")
    result = degrees + minutes / 60.0
    if hemisphere in ("S", "W"):
        return -result
    if hemisphere in ("N", "E"):
        return result
    raise _Malformed(f"hemisphere {hemisphere!r}")


def _time_of_day_ns(value: str) -> int | None:
    """``hhmmss[.sss]`` to ns since midnight; None when empty."""
    if not value:
        return None
    whole, _, fraction = value.partition(".")
    if len(whole) != 6 or not whole.isdigit() or not (fraction.isdigit() or not fraction):
        raise _Malformed(f"time {value!r}")
    hh, mm, ss = int(whole[:2]), int(whole[2:4]), int(whole[4:])
    if hh > 23 or mm > 59 or ss > 60:  # 60: a leap second
        raise _Malformed(f"time {value!r}")
    ns = int(fraction[:9].ljust(9, "0")) if fraction else 0
    return ((hh * 60 + mm) * 60 + ss) * _NS_PER_S + ns


def _date_ns(value: str) -> int:
    """``ddmmyy`` to ns since the epoch at that day's midnight UTC.

    Two-digit years pivot as POSIX ``%y`` does: 69-99 are 1969-1999, 00-68 are 2000-2068.
    """
    if len(value) != 6 or not value.isdigit():
        raise _Malformed(f"date {value!r}")
    yy = int(value[4:])
    try:
        day = dt.date(yy + (1900 if yy >= 69 else 2000), int(value[2:4]), int(value[:2]))
    except ValueError as exc:
        raise _Malformed(f"date {value!r}") from exc
    return (day.toordinal() - _EPOCH_ORDINAL) * _NS_PER_DAY


def checksum(body: str) -> int:
    """The NMEA checksum of ``body``, the characters between ``$`` and ``*``."""
    value = 0
    for byte in body.encode("ascii"):
        value ^= byte
    return value


class NmeaParser:
    """Turns NMEA lines into signal updates, one line at a time."""

    def __init__(self, uere_m: float = 5.0, clock: Callable[[], int] = time.time_ns) -> None:
        self.uere_m = uere_m
        self.stats = GnssStats()
        self._clock = clock
        # The latest GNSS timestamp: gives GGA (time of day only) its date.
        self._ref_ns: int | None = None

    def feed(self, line: bytes | str) -> list[SignalUpdate]:
        """Parse one line (with or without its line end); bad input is counted, never raised."""
        if isinstance(line, bytes):
            start = line.rfind(b"$")  # the last sentence start: skips binary junk before it
            raw = line[start:].strip() if start >= 0 else line.strip()
            if not raw:
                return []
            self.stats.lines += 1
            try:
                text = raw.decode("ascii")
            except UnicodeDecodeError:
                return self._garbage("not ASCII")
        else:
            start = line.rfind("$")
            text = line[start:].strip() if start >= 0 else line.strip()
            if not text:
                return []
            self.stats.lines += 1
            if not text.isascii():
                return self._garbage("not ASCII")
        if not text.startswith("$"):
            return self._garbage(f"not a sentence: {text[:40]!r}")
        body, star, given = text[1:].partition("*")
        if not star:
            self.stats.bad_checksum += 1
            self.stats.last_error = f"no checksum: {text[:40]!r}"
            return []
        try:
            if len(given) != 2 or int(given, 16) != checksum(body):
                raise ValueError(given)
        except ValueError:
            self.stats.bad_checksum += 1
            self.stats.last_error = f"bad checksum: {text[:90]!r}"
            return []
        fields = body.split(",")
        address = fields[0]
        kind = address[2:] if len(address) == 5 and address.isalnum() else ""
        if kind not in ("GGA", "RMC"):
            self.stats.unsupported += 1
            return []
        try:
            updates = self._gga(fields) if kind == "GGA" else self._rmc(fields)
        except ValueError as exc:  # _Malformed, or float() / int() of a bad field
            return self._garbage(f"{address}: {exc}")
        self.stats.sentences += 1
        return updates

    def _garbage(self, why: str) -> list[SignalUpdate]:
        self.stats.garbage += 1
        self.stats.last_error = why
        return []

    def _no_fix(self) -> list[SignalUpdate]:
        self.stats.no_fix += 1
        return []

    def _gga(self, fields: list[str]) -> list[SignalUpdate]:
        f = fields + [""] * (15 - len(fields))
        tod = _time_of_day_ns(f[1])
        quality = int(f[6]) if f[6] else 0
        if quality == 0 or not f[2] or not f[4]:
            return self._no_fix()
        lat = _coordinate(f[2], f[3], 90)
        lon = _coordinate(f[4], f[5], 180)
        ts = self._ts_from_time(tod)
        out: list[SignalUpdate] = [(LATITUDE, lat, ts), (LONGITUDE, lon, ts)]
        if f[9] and f[11] and f[10] in ("M", "") and f[12] in ("M", ""):
            altitude = round(float(f[9]) + float(f[11]), max(_decimals(f[9]), _decimals(f[11])))
            if not math.isfinite(altitude):
                raise _Malformed(f"altitude {f[9]!r} + {f[11]!r}")
            out.append((ALTITUDE, altitude, ts))
        if f[8]:
            hdop = float(f[8])
            if not 0.0 <= hdop <= MAX_HDOP:
                raise _Malformed(f"hdop {f[8]!r}")
            out.append((HORIZONTAL_ACCURACY, round(hdop * self.uere_m, 3), ts))
        self.stats.positions += 1
        return out

    def _rmc(self, fields: list[str]) -> list[SignalUpdate]:
        f = fields + [""] * (14 - len(fields))
        tod = _time_of_day_ns(f[1])
        if f[9] and tod is not None:
            ts = _date_ns(f[9]) + tod
            self._ref_ns = ts
        else:
            ts = self._ts_from_time(tod)
        if f[2] != "A" or f[12] == "N" or not f[3] or not f[5]:
            return self._no_fix()
        lat = _coordinate(f[3], f[4], 90)
        lon = _coordinate(f[5], f[6], 180)
        out: list[SignalUpdate] = [(LATITUDE, lat, ts), (LONGITUDE, lon, ts)]
        if f[8]:
            course = float(f[8])
            if not 0.0 <= course <= 360.0:
                raise _Malformed(f"course {f[8]!r}")
            out.append((HEADING, course % 360.0, ts))
        self.stats.positions += 1
        return out

    def _ts_from_time(self, tod: int | None) -> int:
        """A time of day to a timestamp: the day that puts it nearest the latest GNSS time."""
        if tod is None:
            return self._clock()
        ref = self._ref_ns if self._ref_ns is not None else self._clock()
        ts = ref - ref % _NS_PER_DAY + tod
        if ts - ref > _NS_PER_DAY // 2:
            ts -= _NS_PER_DAY
        elif ref - ts > _NS_PER_DAY // 2:
            ts += _NS_PER_DAY
        if self._ref_ns is not None:
            self._ref_ns = ts
        return ts


def _fileno(stream: IO[bytes] | IO[str]) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


class NmeaSource:
    """A ``SignalSource`` over a stream of NMEA lines, binary or text.

    A stream with a file descriptor (a serial device, a FIFO, a socket's ``makefile``, a file) is
    polled and read directly, never blocking past ``timeout``; data already in the stream
    object's own buffer is not seen, so hand over a stream nothing has read from. A stream
    without one (``io.BytesIO``, ``io.StringIO``) is read with ``readline`` until it is
    exhausted, so it must not block. At the end of the stream ``eof`` becomes true and ``read``
    waits out its timeout and returns nothing (no busy loop in the caller). The stream is the
    caller's unless ``close_stream`` is true.
    """

    def __init__(
        self,
        stream: IO[bytes] | IO[str],
        uere_m: float = 5.0,
        *,
        close_stream: bool = False,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.parser = NmeaParser(uere_m, clock)
        self.eof = False
        self._stream = stream
        self._close_stream = close_stream
        self._fd = _fileno(stream)
        self._poller = select.poll()  # not epoll: poll accepts regular files (always readable)
        if self._fd is not None:
            self._poller.register(self._fd, select.POLLIN | select.POLLPRI)
        self._buf = bytearray()

    @classmethod
    def open(cls, cfg: GnssConfig) -> NmeaSource:
        """Open ``cfg.device`` (a serial line is put in raw mode, at ``cfg.baudrate`` if set)."""
        try:
            fd = os.open(cfg.device, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            raise ConfigError(f"gnss.device: cannot open {cfg.device}: {exc.strerror}") from exc
        try:
            if os.isatty(fd):
                _configure_tty(fd, cfg)
            elif cfg.baudrate:
                raise ConfigError(f"gnss.baudrate: {cfg.device} is not a serial device")
        except BaseException:
            os.close(fd)
            raise
        return cls(os.fdopen(fd, "rb", buffering=0), cfg.uere_m, close_stream=True)

    @property
    def stats(self) -> GnssStats:
        return self.parser.stats

    def read(self, timeout: float) -> list[SignalUpdate]:
        out: list[SignalUpdate] = []
        deadline = time.monotonic() + max(timeout, 0.0)
        if not self.eof:
            if self._fd is None:
                self._read_lines(out)
            else:
                self._read_fd(self._fd, timeout, out)
        if self.eof and not out:
            time.sleep(max(0.0, deadline - time.monotonic()))
        return out

    def _read_lines(self, out: list[SignalUpdate]) -> None:
        feed = self.parser.feed
        for _ in range(MAX_BYTES_PER_READ // 16):
            line = self._stream.readline()
            if not line:
                self.eof = True
                return
            out.extend(feed(line))

    def _read_fd(self, fd: int, timeout: float, out: list[SignalUpdate]) -> None:
        wait_ms = max(0, round(timeout * 1000))
        total = 0
        while total < MAX_BYTES_PER_READ:
            if not self._poller.poll(wait_ms):
                return
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. EIO: the USB receiver went away
                self.parser.stats.io_errors += 1
                self.parser.stats.last_error = f"read: {exc}"
                self.eof = True
                return
            if not chunk:
                self.eof = True
                if self._buf:  # a last line without its line end
                    out.extend(self.parser.feed(bytes(self._buf)))
                    self._buf.clear()
                return
            total += len(chunk)
            self._split(chunk, out)
            wait_ms = 0

    def _split(self, chunk: bytes, out: list[SignalUpdate]) -> None:
        buf = self._buf
        buf += chunk
        end = buf.rfind(b"\n")
        if end >= 0:
            feed = self.parser.feed
            for line in bytes(buf[: end + 1]).split(b"\n"):
                if line:
                    out.extend(feed(line))
            del buf[: end + 1]
        if len(buf) > MAX_LINE:
            self.parser.stats.garbage += 1
            self.parser.stats.last_error = f"{len(buf)} bytes without a line end"
            buf.clear()

    def close(self) -> None:
        if self._close_stream:
            self._stream.close()


def _configure_tty(fd: int, cfg: GnssConfig) -> None:
    """Raw mode (no echo back to the receiver, no line editing), modem lines ignored, the speed."""
    try:
        tty.setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[2] |= termios.CLOCAL | termios.CREAD
        if cfg.baudrate:
            speed = getattr(termios, f"B{cfg.baudrate}", None)
            if speed is None:
                raise ConfigError(f"gnss.baudrate: {cfg.baudrate} is not a standard serial speed")
            attrs[4] = attrs[5] = speed
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except termios.error as exc:
        raise ConfigError(f"gnss.device: cannot configure the serial line {cfg.device}: {exc}") from exc
