"""CPU time, wall time and peak memory of ingest, this checkout against another one (say the commit
before a change): the corpus of bench/ingest_archives.py (2000 files, 52 MB of mixed Chinese and
English text) as a folder, ingested into a fresh store by a fresh process, the two checkouts taking
turns so that a busy machine slows both alike. CPU seconds are the steadier figure on a shared
machine; wall seconds add the waits for the disk.

    git archive 7a45f78 | (mkdir -p /tmp/before && tar -x -C /tmp/before)
    .venv/bin/python bench/ingest_cost.py --compare /tmp/before [--files 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(root: str, folder: str, workspace: str) -> None:
    sys.path.insert(0, root)
    from annotate.ingest import ingest
    from distillery.store import Store

    cpu, wall = time.process_time(), time.perf_counter()
    with Store.open(workspace) as store:
        report = ingest(store, [Path(folder)])
    linked = report.model_dump()
    print(json.dumps({"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "chunks": report.chunks_new,
                      "near": linked.get("chunks_near_duplicate", 0), "exact": linked.get("chunks_exact_duplicate", 0)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=Path, help="another checkout to measure in turn with this one")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sys.path.insert(0, str(ROOT / "bench"))
    from ingest_archives import build

    roots = {"this checkout": ROOT, **({f"{args.compare}": args.compare.resolve()} if args.compare else {})}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in roots}
    with tempfile.TemporaryDirectory() as tmp:
        folder = build(Path(tmp), args.files)["folder"]
        mb = sum(p.stat().st_size for p in folder.rglob("*.txt")) / 1e6
        print(f"{args.files} files, {mb:.1f} MB of text")
        for rep in range(args.repeat):
            for n, (name, root) in enumerate(roots.items()):
                out = subprocess.run([sys.executable, __file__, "--child", str(root), str(folder), f"{tmp}/ws-{n}-{rep}"],
                                     check=True, capture_output=True, text=True).stdout
                runs[name].append(json.loads(out))
    print(f"{'checkout':<24} {'chunks':>7} {'linked (exact, near)':>21} {'CPU s':>7} {'wall s':>7} {'peak RSS':>9}")
    for name, rs in runs.items():
        r = rs[0]
        print(f"{name:<24} {r['chunks']:>7} {r['exact']:>13}, {r['near']:>5} {statistics.median(x['cpu'] for x in rs):>7.2f} "
              f"{statistics.median(x['wall'] for x in rs):>7.2f} {max(x['rss_mb'] for x in rs):>6.0f} MB")


if __name__ == "__main__":
    main()
