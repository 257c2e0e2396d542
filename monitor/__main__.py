"""`python -m monitor`: run the monitor service (REST, dashboard, gRPC ingest).

Tokens come from the environment only (FEDQ_MONITOR_INGEST_TOKEN, FEDQ_MONITOR_READ_TOKEN), so
they never show in a process list.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fedq.errors import ConfigError
from monitor.service import serve
from monitor.settings import load_settings

PROG = "python -m monitor"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options override the FEDQ_MONITOR_* environment variables; unset ones keep them."""
    parser = argparse.ArgumentParser(prog=PROG, description="Run the fedq monitor.")
    parser.add_argument("--host", help="HTTP host (REST API and dashboard)")
    parser.add_argument("--port", type=int, help="HTTP port")
    parser.add_argument("--grpc-host", help="telemetry ingest host")
    parser.add_argument("--grpc-port", type=int, help="telemetry ingest port")
    parser.add_argument("--db", type=Path, dest="database", help="SQLite database file")
    parser.add_argument(
        "--dev",
        action="store_true",
        default=None,
        help="development mode: accept telemetry without a token if none is set",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service; exit code 2 with one line for bad settings, 1 if a port is taken."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = {k: v for k, v in vars(args).items() if k != "log_level"}
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    try:
        serve(settings)
    except ConfigError as exc:  # a database this monitor cannot read
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
