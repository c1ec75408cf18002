"""Run the ISS stand-in in the foreground: ``python -m candlestick_pipeline.standin``.

Prints the base URL (ISS paths are ``{base_url}/iss/...``) and serves until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from candlestick_pipeline.standin.server import ISSStandIn, parse_iss_moment


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m candlestick_pipeline.standin",
        description="A local MOEX ISS stand-in with synthetic data.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every ISS request")
    parser.add_argument(
        "--now", default=None, help='freeze the clock at this Moscow time, e.g. "2025-06-02 15:00:00"'
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic market and the faults")
    parser.add_argument(
        "--delay-minutes", type=float, default=0.0, help="ISS's anonymous data delay (15 on the real service)"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        now = parse_iss_moment(args.now)[0] if args.now else None
    except ValueError as exc:
        print(f"--now: {exc}", file=sys.stderr)
        return 2
    server = ISSStandIn(
        args.host,
        args.port,
        now=now,
        latency_ms=args.latency_ms,
        seed=args.seed,
        delay_minutes=args.delay_minutes,
        verbose=args.verbose,
    )
    stopping = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        server.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(server.base_url, flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
