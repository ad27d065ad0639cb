"""How fast the free generators grow a dataset, and what the instruction filter costs.

    python bench/grow_throughput.py                 # 1,000 approved Chinese records, 4 augmentations each
    python bench/grow_throughput.py --seeds 5000

Prints records made per second for EDA and AEDA (stored in a real SQLite workspace, the one-off
load of jieba's dictionary and the Cilin / Moby indexes timed apart), and the CJK-aware
similarity pool: entries per second added and candidates per second screened against it.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the approved-workspace builder

from grow_fixtures import approved_workspace  # noqa: E402

from annotate.augment import augment, chinese_synonyms, english_synonyms, tokenize  # noqa: E402
from annotate.similarity import Pool  # noqa: E402
from distillery.growing import approved_seeds  # noqa: E402
from distillery.store import Store  # noqa: E402
from distillery.workspace import Workspace  # noqa: E402


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--seeds", default=1000, show_default=True, help="Approved records to grow from.")
@click.option("--per-record", default=4, show_default=True)
def main(seeds: int, per_record: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        ws = approved_workspace(Path(tmp), seeds, docs=max(4, seeds // 20))
        print(f"workspace: {seeds} approved records in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        tokenize("第五条 个人信息处理者应当告知处理目的。", "zh")
        chinese_synonyms("告知")
        english_synonyms("notify")
        print(f"one-off load (jieba dictionary, Cilin and Moby indexes): {time.perf_counter() - started:.2f} s")
        with Store.open(ws) as store:
            pool_seeds = approved_seeds(store, Workspace(ws).approved)
            for method in ("eda", "aeda"):
                started = time.perf_counter()
                stats = augment(store, pool_seeds, method=method, per_record=per_record)  # type: ignore[arg-type]
                took = time.perf_counter() - started
                dropped = sum(stats.dropped.values())
                print(f"{method:<5} {stats.made:>6} records in {took:6.2f} s = {stats.made / took:8.0f} records/s "
                      f"({dropped} dropped as identical)")
            started = time.perf_counter()
            pool = Pool.of_workspace(store, pool_seeds)
            built = time.perf_counter() - started
            size = len(pool)
            probes = [f"请判断第{i}条规定是否要求{w}履行告知义务" for i, w in enumerate(["平台", "医院", "银行", "学校"] * 50)]
            started = time.perf_counter()
            similar = sum(pool.too_similar(p).similar for p in probes)
            screened = time.perf_counter() - started
        print(f"pool  {size} entries built in {built:.2f} s; {len(probes)} candidates screened in {screened:.2f} s "
              f"= {len(probes) / screened:.0f}/s ({similar} too similar)")


if __name__ == "__main__":
    main()
