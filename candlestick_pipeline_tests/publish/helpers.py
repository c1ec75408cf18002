"""Known candles, a warehouse filled with them, and Datasette as a real process."""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import polars as pl
import pytest
import sqlalchemy as sa

from candlestick_pipeline.defs.publish.serve import datasette_command
from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.frames import CANDLE_SCHEMA
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.timeframes import get_timeframe
from candlestick_pipeline_tests.conftest import stop_process
from candlestick_pipeline_tests.factories import security_info

SBER = SecurityKey("SBER", "TQBR")
GAZP = SecurityKey("GAZP", "TQBR")
USD = SecurityKey("USD000UTSTOM", "CETS")

STEP = {
    "1m": dt.timedelta(minutes=1),
    "10m": dt.timedelta(minutes=10),
    "1h": dt.timedelta(hours=1),
    "1d": dt.timedelta(days=1),
}


def make_candles(
    first: dt.datetime, count: int, timeframe: str, base: float = 100.0, seed: int = 0
) -> pl.DataFrame:
    """``count`` deterministic candles every step of ``timeframe`` from ``first`` (a wavy random walk)."""
    step = STEP[timeframe]
    rows = []
    price = base
    for i in range(count):
        begin = first + step * i
        drift = math.sin((i + seed) / 7.0) * 0.006 + math.cos((i * 3 + seed) / 11.0) * 0.004
        open_ = round(price, 2)
        close = round(price * (1 + drift), 2)
        high = round(max(open_, close) * (1 + 0.002 + abs(math.sin(i + seed)) * 0.003), 2)
        low = round(min(open_, close) * (1 - 0.002 - abs(math.cos(i + seed)) * 0.003), 2)
        volume = 1000 + (i * 37 + seed) % 900
        rows.append(
            (
                begin,
                begin + step - dt.timedelta(seconds=1),
                open_,
                high,
                low,
                close,
                round(close * volume, 2),
                volume,
            )
        )
        price = close
    return pl.DataFrame(rows, schema=CANDLE_SCHEMA, orient="row")


def day_window(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(day.year, day.month, day.day)
    return start, start + dt.timedelta(days=1)


def year_window(year: int) -> tuple[dt.datetime, dt.datetime]:
    return dt.datetime(year, 1, 1), dt.datetime(year + 1, 1, 1)


def minute_day(day: dt.date, seed: int = 0, base: float = 270.0) -> pl.DataFrame:
    """A whole trading day of 1m candles, 06:50 .. 23:49 (1020 candles)."""
    return make_candles(dt.datetime(day.year, day.month, day.day, 6, 50), 1020, "1m", base=base, seed=seed)


@dataclass
class KnownWarehouse:
    """A SQLite warehouse with known candles (see :func:`fill_known`)."""

    dsn: str
    engine: sa.Engine


DAY = dt.date(2024, 1, 3)
NEXT_DAY = dt.date(2024, 1, 4)


def fill_known(engine: sa.Engine) -> None:
    """SBER: 1m on 2024-01-03 (1020) and 2024-01-04 (1020), 1d in 2023 (365); GAZP: 1d 2023 (200);
    USD000UTSTOM on CETS (currency/selt): 1h on 2024-01-03 (17)."""
    warehouse.upsert_security(engine, security_info(SBER, "Сбербанк"))
    warehouse.upsert_security(engine, security_info(GAZP, "ГАЗПРОМ ао"))
    warehouse.upsert_security(engine, security_info(USD, "USDRUB_TOM", engine="currency", market="selt"))
    warehouse.replace_candles(engine, SBER, "1m", *day_window(DAY), minute_day(DAY, seed=1))
    warehouse.replace_candles(engine, SBER, "1m", *day_window(NEXT_DAY), minute_day(NEXT_DAY, seed=2))
    warehouse.replace_candles(
        engine, SBER, "1d", *year_window(2023), make_candles(dt.datetime(2023, 1, 1), 365, "1d", 250.0, 3)
    )
    warehouse.replace_candles(
        engine, GAZP, "1d", *year_window(2023), make_candles(dt.datetime(2023, 3, 1), 200, "1d", 160.0, 4)
    )
    warehouse.replace_candles(
        engine, USD, "1h", *day_window(DAY), make_candles(dt.datetime(2024, 1, 3, 7), 17, "1h", 90.0, 5)
    )


def warehouse_rows(
    engine: sa.Engine, key: SecurityKey, timeframe: str, start: dt.datetime, end: dt.datetime
) -> list[dict]:
    """The warehouse's candles as the publication/Datasette would show them (text timestamps)."""
    get_timeframe(timeframe)
    frame = warehouse.read_candles(engine, key, timeframe, start, end)
    return [
        {
            "secid": key.secid,
            "board": key.board,
            "timeframe": timeframe,
            "begin": row["begin"].strftime("%Y-%m-%d %H:%M:%S"),
            "end": row["end"].strftime("%Y-%m-%d %H:%M:%S"),
            "open": row["open"],
            "high": row["high"],
            "low": row["low"],
            "close": row["close"],
            "value": row["value"],
            "volume": row["volume"],
        }
        for row in frame.iter_rows(named=True)
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DatasetteProcess:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def run_datasette(path: Path, **options: object) -> Iterator[DatasetteProcess]:
    """Start ``datasette serve`` (the production command) on a free port; stop it afterwards."""
    port = free_port()
    argv = datasette_command(path, "127.0.0.1", port, **options)  # type: ignore[arg-type]
    log_path = Path(tempfile.mkstemp(prefix="datasette-", suffix=".log")[1])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    server = DatasetteProcess(base, process, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"datasette exited with {process.returncode}:\n{server.log()}")
            try:
                if httpx.get(f"{base}/-/versions.json", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"datasette did not answer within 30 s:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        stop_process(process)
        log_path.unlink(missing_ok=True)


def chromium_executable() -> str:
    """The headless browser; its absence is a failure, not a skip (CI installs ``chromium``)."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium is not installed: `apt-get install -y chromium` (needed for the chart test)")


def png_pixels(path: Path) -> tuple[int, int, int, bytes]:
    """Decode an 8-bit non-interlaced RGB/RGBA PNG (as chromium writes): width, height, channels, pixels."""
    import struct
    import zlib

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and color in (2, 6), (depth, color, interlace)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    out = bytearray(height * stride)
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b = prev[i]
                c = prev[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        out[y * stride : (y + 1) * stride] = line
        prev = line
    return width, height, channels, bytes(out)
