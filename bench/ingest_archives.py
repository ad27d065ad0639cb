"""What compressed inputs cost at ingest: the same text files as a folder, gzipped one by one,
and as one .zip, each ingested into a fresh store in its own process (so peak memory is its own).

The files are ~26 KB of mixed Chinese and English sentences each (the size of the real corpus in
issue 15: 52.8 MB in 2000 files); every sentence carries its file and line number, so no two
chunks are alike. Prints files, MB of text, seconds, MB/s and peak RSS per form.

    .venv/bin/python bench/ingest_archives.py [--files 2000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SENTENCES = [
    "第{n}条 个人信息处理者在处理个人信息前，应当以显著方式告知处理目的和处理方式。",
    "数据处理者应当履行安全保护义务，采取加密、去标识化等措施，编号 {n}。",
    "The committee reviewed clause {n} and asked for a plain-language summary by Friday.",
    "Breakfast in building {n} is served from seven until nine, with a vegetarian counter.",
]


def build(folder: Path, files: int) -> dict[str, Path]:
    """The corpus in three forms: a folder, a folder of .gz, one .zip. Returns form -> path."""
    rng = random.Random(15)
    plain, gz = folder / "plain", folder / "gz"
    plain.mkdir()
    gz.mkdir()
    with zipfile.ZipFile(folder / "docs.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(files):
            lines, size = [], 0
            while size < 26_000:
                line = rng.choice(SENTENCES).format(n=f"{i}-{len(lines)}")
                lines.append(line)
                size += len(line.encode("utf-8")) + 1
            data = "\n".join(lines).encode("utf-8")
            name = f"part{i // 100:02d}/doc{i:05d}.txt"
            (plain / name).parent.mkdir(exist_ok=True)
            (plain / name).write_bytes(data)
            (gz / f"{name}.gz").parent.mkdir(exist_ok=True)
            (gz / f"{name}.gz").write_bytes(gzip.compress(data))
            zf.writestr(name, data)
    return {"folder": plain, "gz": gz, "zip": folder / "docs.zip"}


def ingest_once(path: Path, workspace: Path) -> dict:
    from annotate.ingest import ingest
    from distillery.store import Store

    started = time.perf_counter()
    with Store.open(workspace) as store:
        report = ingest(store, [path])
    seconds = time.perf_counter() - started
    assert not report.failures, report.failures[:3]
    return {"files": report.files, "documents": report.documents_new, "chunks": report.chunks_new, "s": seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--one", nargs=2, metavar=("PATH", "WORKSPACE"), help=argparse.SUPPRESS)  # the child
    args = parser.parse_args()
    if args.one:
        print(json.dumps(ingest_once(Path(args.one[0]), Path(args.one[1]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        forms = build(Path(tmp), args.files)
        mb = sum(p.stat().st_size for p in forms["folder"].rglob("*.txt")) / 1e6
        print(f"{args.files} files, {mb:.1f} MB of text; on disk: gz {sum(p.stat().st_size for p in forms['gz'].rglob('*.gz')) / 1e6:.1f} MB, "
              f"zip {forms['zip'].stat().st_size / 1e6:.1f} MB")
        print(f"{'form':8} {'files':>6} {'chunks':>7} {'seconds':>8} {'MB/s':>6} {'peak RSS':>9}")
        for form, path in forms.items():
            out = subprocess.run([sys.executable, __file__, "--one", str(path), str(Path(tmp) / f"ws-{form}")],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out)
            print(f"{form:8} {r['files']:>6} {r['chunks']:>7} {r['s']:>8.1f} {mb / r['s']:>6.1f} {r['peak_mb']:>6.0f} MB")


if __name__ == "__main__":
    main()
