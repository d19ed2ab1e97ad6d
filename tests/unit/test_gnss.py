"""GNSS input: NMEA 0183 GGA / RMC sentences -> VSS position updates.

Checksums are computed here, independently of the module, except for the two published examples.
"""

from __future__ import annotations

import calendar
import datetime as dt
import io
import os
import termios
from functools import reduce
from pathlib import Path

import pytest

from common.config import ConfigError, load_toml
from edge_agent.inputs import SignalSource, SignalUpdate
from edge_agent.sources.gnss import (
    ALTITUDE,
    HEADING,
    HORIZONTAL_ACCURACY,
    LATITUDE,
    LONGITUDE,
    MAX_LINE,
    GnssConfig,
    GnssStats,
    NmeaParser,
    NmeaSource,
    checksum,
)

# The classic published examples, checksums included.
GGA_EXAMPLE = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
RMC_EXAMPLE = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"


def nmea(body: str) -> str:
    """``$body*hh\\r\\n`` with its checksum (XOR of the body's bytes)."""
    return f"${body}*{reduce(lambda a, b: a ^ b, body.encode(), 0):02X}\r\n"


def ns(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0) -> int:
    """ns since the epoch of a UTC date and time."""
    return (
        calendar.timegm(dt.datetime(year, month, day, hour, minute, second).timetuple()) * 10**9 + us * 1000
    )


def values(updates: list[SignalUpdate]) -> dict[str, float | int | bool]:
    return {p: v for p, v, _ in updates}


def stamps(updates: list[SignalUpdate]) -> set[int]:
    return {ts for _, _, ts in updates}


def balanced(st: GnssStats) -> bool:
    return st.lines == st.sentences + st.bad_checksum + st.garbage + st.unsupported


def test_checksum_known_answers() -> None:
    assert checksum(GGA_EXAMPLE[1:-3]) == 0x47
    assert checksum(RMC_EXAMPLE[1:-3]) == 0x6A
    assert nmea(GGA_EXAMPLE[1:-3]).strip() == GGA_EXAMPLE


def test_published_example_north_east() -> None:
    p = NmeaParser(uere_m=5.0)
    rmc = p.feed(RMC_EXAMPLE)
    gga = p.feed(GGA_EXAMPLE + "\r\n")
    at = ns(1994, 3, 23, 12, 35, 19)
    assert rmc == [
        (LATITUDE, pytest.approx(48.1173), at),
        (LONGITUDE, pytest.approx(11 + 31 / 60), at),
        (HEADING, 84.4, at),
    ]
    assert values(gga) == {
        LATITUDE: pytest.approx(48 + 7.038 / 60, abs=1e-12),
        LONGITUDE: pytest.approx(11 + 31 / 60, abs=1e-12),
        ALTITUDE: 592.3,  # 545.4 above mean sea level + 46.9 geoid separation: above the ellipsoid
        HORIZONTAL_ACCURACY: 4.5,  # HDOP 0.9 x UERE 5 m
    }
    assert stamps(gga) == {at}  # the date comes from the RMC
    assert (p.stats.sentences, p.stats.positions, p.stats.lines) == (2, 2, 2)


def test_south_west_multi_constellation() -> None:
    p = NmeaParser(uere_m=3.0)
    rmc = p.feed(nmea("GNRMC,174512.40,A,3436.2220,S,05822.8000,W,0.02,271.50,150625,,,D,V"))
    gga = p.feed(nmea("GNGGA,174512.40,3436.2220,S,05822.8000,W,2,14,0.72,25.3,M,14.1,M,1.0,0131"))
    at = ns(2025, 6, 15, 17, 45, 12, us=400_000)
    lat, lon = -(34 + 36.222 / 60), -(58 + 22.8 / 60)
    assert values(rmc) == {
        LATITUDE: pytest.approx(lat, abs=1e-12),
        LONGITUDE: pytest.approx(lon, abs=1e-12),
        HEADING: 271.5,
    }
    assert values(gga) == {
        LATITUDE: pytest.approx(lat, abs=1e-12),
        LONGITUDE: pytest.approx(lon, abs=1e-12),
        ALTITUDE: 39.4,
        HORIZONTAL_ACCURACY: 2.16,
    }
    assert stamps(rmc) == stamps(gga) == {at}
    # Negative geoid separation (the ellipsoid above sea level there), heading 360 -> 0.
    out = p.feed(nmea("GPGGA,174513,0012.5,S,17959.999,W,1,5,1.5,3.25,M,-28.5,M,,"))
    assert values(out)[ALTITUDE] == -25.25
    assert values(out)[LATITUDE] == pytest.approx(-12.5 / 60)
    assert values(p.feed(nmea("GPRMC,174514,A,0012.5,S,17959.999,W,0.1,360.0,150625,,")))[HEADING] == 0.0


def test_date_of_gga_across_midnight() -> None:
    p = NmeaParser()
    p.feed(nmea("GPRMC,235959.00,A,5130.0,N,00007.5,W,10.0,90.0,311224,,,A"))
    out = p.feed(nmea("GPGGA,000000.50,5130.0,N,00007.5,W,1,8,1.0,10.0,M,47.0,M,,"))
    assert stamps(out) == {ns(2025, 1, 1, 0, 0, 0, us=500_000)}
    p = NmeaParser()
    p.feed(nmea("GPRMC,000000.00,A,5130.0,N,00007.5,W,10.0,90.0,010125,,,A"))
    out = p.feed(nmea("GPGGA,235959.90,5130.0,N,00007.5,W,1,8,1.0,10.0,M,47.0,M,,"))
    assert stamps(out) == {ns(2024, 12, 31, 23, 59, 59, us=900_000)}


def test_gga_before_any_rmc_takes_the_host_date() -> None:
    p = NmeaParser(clock=lambda: ns(2025, 6, 2, 0, 10, 0))
    out = p.feed(nmea("GPGGA,235900,5130.0,N,00007.5,W,1,8,1.0,10.0,M,47.0,M,,"))
    assert stamps(out) == {ns(2025, 6, 1, 23, 59, 0)}  # just before midnight: yesterday
    out = p.feed(nmea("GPGGA,001000,5130.0,N,00007.5,W,1,8,1.0,10.0,M,47.0,M,,"))
    assert stamps(out) == {ns(2025, 6, 2, 0, 10, 0)}
    # An empty time gets the host clock as it is.
    out = p.feed(nmea("GPGGA,,5130.0,N,00007.5,W,1,8,1.0,10.0,M,47.0,M,,"))
    assert stamps(out) == {ns(2025, 6, 2, 0, 10, 0)}


def test_partial_sentences_give_what_they_have() -> None:
    p = NmeaParser()
    p.feed(nmea("GPRMC,120000,A,5130.0,N,00007.5,W,0.0,,010125,,,A"))
    # No course (stationary): no heading.
    assert HEADING not in values(p.feed(nmea("GPRMC,120001,A,5130.0,N,00007.5,W,0.0,,010125,,,A")))
    # No geoid separation: no altitude (MSL is not the ellipsoid); no HDOP: no accuracy.
    out = values(p.feed(nmea("GPGGA,120002,5130.0,N,00007.5,W,1,8,,10.0,M,,M,,")))
    assert set(out) == {LATITUDE, LONGITUDE}
    # An old NMEA 2.0 RMC without the mode field.
    assert LATITUDE in values(p.feed(nmea("GPRMC,120003,A,5130.0,N,00007.5,W,0.0,12.0,010125,,")))
    assert p.stats.positions == 4


def test_no_fix_gives_no_position() -> None:
    p = NmeaParser()
    sentences = [
        "GPGGA,120000,,,,,0,00,99.99,,,,,,",  # quality 0, empty fields
        "GPGGA,120000,5130.0,N,00007.5,W,0,3,5.0,10.0,M,47.0,M,,",  # quality 0, stale position
        "GPRMC,120000,V,,,,,,,010125,,,N",  # status V
        "GPRMC,120000,V,5130.0,N,00007.5,W,0.0,,010125,,,A",  # status V, stale position
        "GPRMC,120000,A,5130.0,N,00007.5,W,0.0,,010125,,,N",  # mode N: not valid
    ]
    for s in sentences:
        assert p.feed(nmea(s)) == []
    assert (p.stats.no_fix, p.stats.sentences, p.stats.positions) == (5, 5, 0)
    assert balanced(p.stats)


def test_bad_checksums_are_counted() -> None:
    p = NmeaParser()
    good = nmea("GPGGA,120000,5130.0,N,00007.5,W,1,8,1.0,10.0,M,47.0,M,,").strip()
    flipped = good.replace("5130.0", "5131.0")  # one digit changed, checksum kept
    assert flipped != good
    assert p.feed(flipped) == []
    assert p.feed(good.split("*")[0]) == []  # no checksum at all
    assert p.feed(good[:-1]) == []  # one hex digit
    assert p.feed(good[:-2] + "ZZ") == []  # not hex
    assert p.stats.bad_checksum == 4
    assert p.feed(RMC_EXAMPLE.replace("*6A", "*6a"))  # lowercase hex is fine
    assert balanced(p.stats)


def test_garbage_is_counted_not_raised() -> None:
    p = NmeaParser()
    lines: list[bytes | str] = [
        b"\xff\xfe\x00\x01garbage",
        "hello world",
        b"\xb5\x62\x01\x07",  # UBX binary
        nmea("GPGGA,120000,51x0.0,N,00007.5,W,1,8,1.0,10.0,M,47.0,M,,"),  # bad latitude
        nmea("GPGGA,120000,5130.0,Q,00007.5,W,1,8,1.0,10.0,M,47.0,M,,"),  # bad hemisphere
        nmea("GPGGA,120000,5160.0,N,00007.5,W,1,8,1.0,10.0,M,47.0,M,,"),  # 60 minutes
        nmea("GPGGA,120000,9100.0,N,00007.5,W,1,8,1.0,10.0,M,47.0,M,,"),  # 91 degrees
        nmea("GPGGA,250000,5130.0,N,00007.5,W,1,8,1.0,10.0,M,47.0,M,,"),  # hour 25
        nmea("GPGGA,120000,5130.0,N,00007.5,W,x,8,1.0,10.0,M,47.0,M,,"),  # quality
        nmea("GPGGA,120000,5130.0,N,00007.5,W,1,8,nan,10.0,M,47.0,M,,"),  # HDOP
        nmea("GPGGA,120000,5130.0,N,00007.5,W,1,8,1.0,inf,M,47.0,M,,"),  # altitude
        nmea("GPRMC,120000,A,5130.0,N,00007.5,W,0.0,400.0,010125,,,A"),  # course
        nmea("GPRMC,120000,A,5130.0,N,00007.5,W,0.0,10.0,310225,,,A"),  # 31 February
        "$GPGGA,120000,5130.0,N,00007.5,W,1,8,1.0,10.0,M,47.0,M,,*7\u00e9",  # not ASCII
    ]
    for line in lines:
        assert p.feed(line) == []
    assert p.stats.garbage == len(lines)
    assert p.stats.sentences == 0
    assert p.feed("") == [] and p.feed(b"\r\n") == []  # empty lines are not even counted
    assert balanced(p.stats)
    assert p.stats.last_error


def test_junk_before_a_sentence_on_the_same_line_is_skipped() -> None:
    p = NmeaParser()
    out = p.feed(
        b"\xb5\x62\x01\x07$x" + nmea("GPGGA,120000,5130.0,N,00007.5,W,1,8,1.0,10.0,M,47.0,M,,").encode()
    )
    assert values(out)[LATITUDE] == 51.5


def test_other_sentences_are_unsupported() -> None:
    p = NmeaParser()
    for s in (
        "GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00",
        "GPVTG,054.7,T,034.4,M,005.5,N,010.2,K,A",
        "PUBX,00,081350.00",
    ):
        assert p.feed(nmea(s)) == []
    assert p.stats.unsupported == 3
    assert balanced(p.stats)


# -- the source -----------------------------------------------------------------------------------

EPOCH = [
    nmea("GNRMC,081500.00,A,4807.0380,N,01131.0000,E,12.5,45.0,010625,,,A"),
    nmea("GNGSV,1,1,01,03,03,111,00"),
    nmea("GNGGA,081500.00,4807.0380,N,01131.0000,E,1,10,0.8,520.0,M,47.5,M,,"),
]
EXPECTED = {
    LATITUDE: 48.1173,
    LONGITUDE: 11 + 31 / 60,
    HEADING: 45.0,
    ALTITUDE: 567.5,
    HORIZONTAL_ACCURACY: 4.0,
}


@pytest.mark.parametrize("kind", ["bytes", "text"])
def test_source_over_an_in_memory_stream(kind: str) -> None:
    data = "".join(EPOCH * 3)
    stream: io.BytesIO | io.StringIO = io.BytesIO(data.encode()) if kind == "bytes" else io.StringIO(data)
    source: SignalSource = NmeaSource(stream)
    out = source.read(1.0)
    assert values(out) == pytest.approx(EXPECTED)
    assert len(out) == 3 * 7
    assert isinstance(source, NmeaSource) and source.eof
    assert source.read(0.0) == []
    source.close()
    assert not stream.closed  # the caller's stream


def test_source_over_a_pipe_joins_partial_lines() -> None:
    r, w = os.pipe()
    source = NmeaSource(os.fdopen(r, "rb", buffering=0), close_stream=True)
    assert source.read(0.01) == []  # nothing yet
    first = EPOCH[0].encode()
    os.write(w, first[:20])
    assert source.read(0.01) == []  # half a sentence
    os.write(w, first[20:] + EPOCH[2].encode()[:-2])
    assert set(values(source.read(1.0))) == {LATITUDE, LONGITUDE, HEADING}
    os.write(w, b"\r\n")
    assert values(source.read(1.0)) == pytest.approx({k: v for k, v in EXPECTED.items() if k != HEADING})
    os.write(w, b"x" * (MAX_LINE + 10))  # no line end: dropped as garbage
    assert source.read(0.01) == []
    assert source.stats.garbage == 1
    os.write(w, EPOCH[2].encode()[:-2])  # the last line has no line end
    os.close(w)
    assert set(values(source.read(1.0))) == {LATITUDE, LONGITUDE, ALTITUDE, HORIZONTAL_ACCURACY}
    assert source.eof
    source.close()  # closes r


def test_source_opens_a_file(tmp_path: Path) -> None:
    log = tmp_path / "drive.nmea"
    log.write_text("".join(EPOCH * 1000))
    source = NmeaSource.open(GnssConfig(device=str(log), uere_m=2.5))
    got: list[SignalUpdate] = []
    while not source.eof:
        got += source.read(0.0)
    assert len(got) == 7000
    assert values(got)[HORIZONTAL_ACCURACY] == 2.0
    assert source.stats.unsupported == 1000
    source.close()


def test_source_opens_a_serial_line_in_raw_mode() -> None:
    master, slave = os.openpty()
    try:
        source = NmeaSource.open(GnssConfig(device=os.ttyname(slave), baudrate=9600))
        attrs = termios.tcgetattr(slave)
        assert not attrs[3] & (termios.ECHO | termios.ICANON)  # no echo back to the receiver
        assert attrs[4] == attrs[5] == termios.B9600
        os.write(master, "".join(EPOCH).encode())
        got: list[SignalUpdate] = []
        for _ in range(100):
            got += source.read(0.5)
            if len(got) >= 7:
                break
        assert values(got) == pytest.approx(EXPECTED)
        source.close()
    finally:
        os.close(master)
        os.close(slave)


def test_gnss_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gnss\.device: cannot open .*ttyNOPE"):
        NmeaSource.open(GnssConfig(device=str(tmp_path / "ttyNOPE")))
    log = tmp_path / "x.nmea"
    log.write_text("")
    with pytest.raises(ConfigError, match=r"gnss\.baudrate: .* is not a serial device"):
        NmeaSource.open(GnssConfig(device=str(log), baudrate=9600))
    master, slave = os.openpty()
    try:
        with pytest.raises(ConfigError, match=r"gnss\.baudrate: 12345 is not a standard"):
            NmeaSource.open(GnssConfig(device=os.ttyname(slave), baudrate=12345))
    finally:
        os.close(master)
        os.close(slave)
    p = tmp_path / "gnss.toml"
    p.write_text('device = "/dev/ttyACM0"\nuere_m = 3.0\n')
    assert load_toml(p, GnssConfig) == GnssConfig(uere_m=3.0)
    p.write_text("uere_m = 0\n")
    with pytest.raises(ConfigError, match="uere_m"):
        load_toml(p, GnssConfig)
    p.write_text('port = "/dev/ttyS0"\n')
    with pytest.raises(ConfigError, match="port"):
        load_toml(p, GnssConfig)
