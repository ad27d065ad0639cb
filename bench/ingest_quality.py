"""How clean are the chunks ingest makes from typeset PDFs and hard-wrapped text, and how fast?

Builds the gold corpus (tests/doubles/corpus.py: two-column English PDF with running headers,
footers, hyphenation, a TOC and an index; Chinese and Japanese PDFs in CID fonts; English and
Chinese text hard-wrapped at a fixed width), then reads and chunks it twice, each in its own
process so that peak memory is its own:
- `baseline`: the reader before layout-aware text (pypdf's extract_text, lines kept as they are);
- `current`: annotate.readers as shipped.
Prints, per document and in total: chunk boundaries inside a sentence, chunks carrying page
furniture, content lost; then seconds, MB/s and peak RSS.

    .venv/bin/python bench/ingest_quality.py [--scale 10] [--repeat 3] [--max-size 300]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from annotate.chunking import chunk_document  # noqa: E402
from annotate.readers import Page, _normalize, read_file_report  # noqa: E402
from doubles.corpus import build_corpus, measure  # noqa: E402


def _baseline_pages(path: Path) -> list[Page]:
    if path.suffix == ".pdf":
        import pypdf

        reader = pypdf.PdfReader(path)
        return [Page(n, _normalize(page.extract_text() or "")) for n, page in enumerate(reader.pages, start=1)]
    return [Page(None, _normalize(path.read_text(encoding="utf-8")))]


def _current_pages(path: Path) -> list[Page]:
    docs, _warnings = read_file_report(path)
    return docs[0].pages


def run_mode(mode: str, folder: Path, scale: int, repeat: int, max_size: int) -> dict:
    docs = build_corpus(folder, scale=scale)
    read = _baseline_pages if mode == "baseline" else _current_pages
    rows, seconds = [], 0.0
    for gold in docs:
        started = time.perf_counter()
        for _ in range(repeat):
            pages = read(gold.path)
        seconds += (time.perf_counter() - started) / repeat
        text = "\n\n".join(page.text for page in pages)
        spans = chunk_document(pages, max_size=max_size, overlap=0)
        quality = measure(gold, text, [span.text for span in spans])
        rows.append({"doc": gold.path.name, **quality.__dict__})
    megabytes = sum(gold.path.stat().st_size for gold in docs) / 1e6
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "rows": rows, "seconds": seconds, "megabytes": megabytes, "peak_rss_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=10, help="document length multiplier (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="reads per file for the timing (default 3)")
    parser.add_argument("--max-size", type=int, default=300, help="chunk size in characters (default 300)")
    parser.add_argument("--mode", choices=["baseline", "current"], help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.folder, args.scale, args.repeat, args.max_size)))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("baseline", "current"):
            child = [sys.executable, __file__, "--mode", mode, "--folder", str(Path(tmp, mode)),
                     "--scale", str(args.scale), "--repeat", str(args.repeat), "--max-size", str(args.max_size)]  # fmt: skip
            results.append(json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout))
    print(f"corpus: scale {args.scale}, chunks of at most {args.max_size} characters, no overlap\n")
    print(f"{'document':<18} {'mode':<9} {'chunks':>6} {'mid-sentence':>14} {'furniture':>11} {'lost chars':>10}")
    for index in range(len(results[0]["rows"])):
        for result in results:
            row = result["rows"][index]
            share = row["mid_sentence"] / row["boundaries"]
            print(f"{row['doc']:<18} {result['mode']:<9} {row['chunks']:>6} {row['mid_sentence']:>5} ({share:6.1%})"
                  f" {row['furniture_chunks']:>4} ({row['furniture_chunks'] / row['chunks']:4.0%}) {row['lost_chars']:>10}")  # fmt: skip
    print()
    for result in results:
        rows = result["rows"]
        boundaries = sum(r["boundaries"] for r in rows)
        chunks = sum(r["chunks"] for r in rows)
        print(f"{result['mode']:<9} total: mid-sentence {sum(r['mid_sentence'] for r in rows) / boundaries:6.2%} of "
              f"{boundaries} boundaries, furniture in {sum(r['furniture_chunks'] for r in rows) / chunks:6.2%} of {chunks} chunks, "
              f"{sum(r['lost_chars'] for r in rows)} content chars lost; read {result['megabytes']:.2f} MB in "
              f"{result['seconds']:.2f} s ({result['megabytes'] / result['seconds']:.2f} MB/s), peak RSS {result['peak_rss_mb']:.0f} MB")  # fmt: skip
    base, current = results
    print(f"\nread time current / baseline: {current['seconds'] / base['seconds']:.2f}x")


if __name__ == "__main__":
    main()
