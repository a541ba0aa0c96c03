"""Run every benchmark in bench/ in one go; each prints its own table of ratios.

`make bench` calls this. A benchmark is a module here with a `main()`; they run one after the
other (never in parallel: they share two cores) and a failure in one does not hide the others.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

BENCHMARKS = (
    "proxy_vs_squid",
    "sealed_path",
    "startup",
    "workspace",
    "gateway",
    "scale",
    "service",
)


def main() -> int:
    """Run every benchmark in turn; return 1 if any of them failed."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    failed: list[str] = []
    for name in BENCHMARKS:
        print(f"\n=== bench/{name}.py ===", flush=True)
        started = time.monotonic()
        try:
            importlib.import_module(name).main()
        except Exception:  # noqa: BLE001 - report and go on to the next benchmark
            traceback.print_exc()
            failed.append(name)
        print(f"({name}: {time.monotonic() - started:.1f} s)", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
