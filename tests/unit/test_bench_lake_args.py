"""`python -m bench.lake --codecs`: a wrong codec is one argparse line, before any work."""

from __future__ import annotations

import argparse

import pytest

from bench.lake import codec_list, main, size_list


def test_codecs_are_parsed_in_order() -> None:
    assert codec_list("zstd, uncompressed,snappy") == ["zstd", "uncompressed", "snappy"]


@pytest.mark.parametrize("text", ["snapy", "zstd,nope", ","])
def test_a_wrong_codec_is_refused_naming_the_known_ones(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"not a Parquet codec \(one of snappy, zstd"):
        codec_list(text)


def test_the_command_line_refuses_it_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--codecs", "snapy"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "python -m bench.lake: error: argument --codecs: snapy: not a Parquet codec"
        " (one of snappy, zstd, lz4_raw, lz4, gzip, brotli, uncompressed)"
    )


def test_table_sizes_are_parsed_and_a_wrong_one_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert size_list("0, 1_000_000,3000") == [0, 1_000_000, 3000]
    for text in ("1,x", "-1", ","):
        with pytest.raises(argparse.ArgumentTypeError, match="not a list of row counts"):
            size_list(text)
    with pytest.raises(SystemExit) as e:
        main(["--sessions", "0", "--wave", "0"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "python -m bench.lake: error: --wave must be at least 1"
    )
