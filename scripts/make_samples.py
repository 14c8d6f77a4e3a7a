"""Write the sample documents (PDFs and scan-like images) with ground-truth sidecars.

Usage: ``python scripts/make_samples.py OUTDIR [--seed N]``. The logic lives in
:mod:`devtools.samples` so tests and ``make demo`` can import it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.samples import make_samples, truth_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", type=Path, help="folder to write into (created if missing)")
    ap.add_argument("--seed", type=int, default=0, help="content and degradation seed (default 0)")
    args = ap.parse_args(argv)
    for path in make_samples(args.outdir, seed=args.seed):
        print(f"{path}  (truth: {truth_path(path).name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
