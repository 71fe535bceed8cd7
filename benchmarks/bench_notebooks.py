"""Wall time of every notebook per profile, with a warm feature cache (issue targets: smoke < 60 s for notebooks
01-04 and < 90 s for 05-06; demo < 3 min for 01-04 and < 5 min for 05-06, on a 2-core CPU).

    python benchmarks/bench_notebooks.py                      # smoke and demo, all notebooks
    python benchmarks/bench_notebooks.py --profiles demo --notebooks 05 06

Each notebook is executed once to warm the feature cache (skipped with --assume-warm), then timed. Executed copies
go to outputs/<profile>/notebooks/ as with `make run`. CPU time of the kernel is not visible from here; the load
average printed beside each figure says how busy the machine was.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

# The main job is a script (scripts/run_all.py), not part of the installed package: load it from its file.
_spec = importlib.util.spec_from_file_location("run_all", Path(__file__).resolve().parent.parent / "scripts" / "run_all.py")
run_all = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_all)

LIMITS = {"smoke": {"01": 60, "02": 60, "03": 60, "04": 60, "05": 90, "06": 90},
          "demo": {"01": 180, "02": 180, "03": 180, "04": 180, "05": 300, "06": 300}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", default=["smoke", "demo"], choices=["smoke", "demo"])
    ap.add_argument("--notebooks", nargs="*", default=["01", "02", "03", "04", "05", "06"])
    ap.add_argument("--assume-warm", action="store_true", help="do not run each notebook once before timing it")
    args = ap.parse_args()
    rows = []
    for profile in args.profiles:
        artefacts = run_all.prepare_synthetic(profile)
        for nb in args.notebooks:
            if not args.assume_warm:
                run_all.execute_notebooks(profile, artefacts, [nb], timeout=3600)
            t0 = time.perf_counter()
            run_all.execute_notebooks(profile, artefacts, [nb], timeout=3600)
            seconds = time.perf_counter() - t0
            rows.append((profile, nb, seconds, LIMITS[profile][nb], os.getloadavg()[0]))
    print(f"\n{'profile':<8}{'notebook':<10}{'wall s':>8}{'limit s':>9}  {'ok':<4}{'load avg':>9}")
    for profile, nb, seconds, limit, load in rows:
        print(f"{profile:<8}{nb:<10}{seconds:>8.1f}{limit:>9}  {'yes' if seconds <= limit else 'NO':<4}{load:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
