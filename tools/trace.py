"""make trace ORDER=<id>: an order's changes as waterfalls, one trace per change, from the span
files `make dev` writes (<LOCAL_DIR>/traces): each span with its service, start offset and
duration, from the POST to the projection write. `--trace <id>` draws one trace by its id."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eventflow_testing.traces import in_trace, order_trace_ids, read_spans, waterfall

# The Azure SDKs' HTTP and per-message spans under the project's own: left out unless --all.
DETAIL = ("GET", "PUT", "POST", "DELETE", "PATCH", "EventHubs.message", "ServiceBus.message")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("order", nargs="?", help="an order id")
    parser.add_argument("--trace", help="a trace id instead of an order")
    parser.add_argument("--dir", type=Path, default=Path(".local/traces"), help="the span files")
    parser.add_argument("--all", action="store_true", help="also the SDKs' HTTP and message spans")
    args = parser.parse_args(argv)
    if not args.order and not args.trace:
        parser.error("name an order (ORDER=<id>) or a trace (--trace <id>)")
    spans = read_spans(args.dir)
    if not args.all:
        spans = [
            s
            for s in spans
            if s.name not in DETAIL and not s.name.endswith((" http send", " http receive"))
        ]
    trace_ids = [args.trace] if args.trace else order_trace_ids(spans, args.order)
    if not trace_ids:
        sys.stderr.write(f"no trace of {args.order or args.trace} in {args.dir}\n")
        return 1
    for trace_id in trace_ids:
        sys.stdout.write(waterfall(in_trace(spans, trace_id)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
