"""The QC report as one self-contained HTML file: inline CSS and SVG, no script, nothing fetched.

It can be mailed or attached to a ticket and opens anywhere, offline.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from distillery.formatting import pct

from .checks import FLAG_KINDS
from .report import GroupRow, QCReport, interval_text
from .review import REASONS
from .svg import Bar, interval_bars, line_chart, stacked_counts

_CSS = """
body { font-family: -apple-system, 'Segoe UI', 'PingFang SC', 'Microsoft YaHei', 'Noto Sans CJK SC', sans-serif;
       max-width: 980px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.decision { padding: 1em 1.2em; border-radius: 6px; font-size: 1.1em; }
.accept { background: #e8f5e9; border-left: 6px solid #2e7d32; }
.reject { background: #ffebee; border-left: 6px solid #c62828; }
.pending, .inconclusive { background: #fff8e1; border-left: 6px solid #f9a825; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border-bottom: 1px solid #e0e0e0; padding: .25em .8em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.muted { color: #666; font-size: .9em; }
"""


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _groups(title: str, rows: list[GroupRow], key: str, note: str = "") -> str:
    if not rows:
        return ""
    bars = [Bar(label=r.key, value=r.rate.estimate or 0.0, low=r.rate.low, high=r.rate.high,
                note=f"{r.accepted}/{r.reviewed} · {interval_text(r.rate)}") for r in rows]
    table = _table([key, "reviewed", "accepted", "rate [95% CI]"],
                   [[r.key, str(r.reviewed), str(r.accepted), interval_text(r.rate)] for r in rows])
    return f"<h2>{escape(title)}</h2>{note}{interval_bars(bars)}{table}"


def render_html(report: QCReport) -> str:
    d = report.decision
    parts = [
        f"<h1>QC report · sample {escape(report.sample)} · task {escape(', '.join(report.tasks))}</h1>",
        f'<div class="decision {d.status}">{escape(d.headline)}</div>',
        (f'<p class="muted">workspace {escape(report.workspace)} · sample drawn {escape(report.sampled_at)} · '
         f"report generated {escape(report.generated_at)} · lot {report.plan.lot_size} records · "
         f"{d.reviewed} of {d.sample_size} sampled records reviewed</p>"),
        "<h2>The plan</h2>" + "".join(f"<p>{escape(line)}</p>" for line in report.plan_text),
        "<h2>Verdicts</h2>",
        _table(["", "records"], [["acceptance rate [95% Wilson CI]", interval_text(d.acceptance)],
                                 *([v, str(report.verdicts.get(v, 0))] for v in ("accept", "fix", "reject"))]),
    ]
    if report.oc and report.plan.iso:
        iso = report.plan.iso
        markers = [(iso.aql / 100, f"AQL {iso.aql:g}%")]
        if d.reviewed:
            markers.append((d.defective / d.reviewed, f"observed {d.defective / d.reviewed:.1%} bad"))
        parts += ["<h2>How the plan behaves (operating characteristic)</h2>",
                  (f'<p class="muted">The chance that this plan (n={report.plan.n}, accept with at most {iso.accept} bad) '
                   "passes a lot, by the lot's true share of bad records.</p>"),
                  line_chart(report.oc, markers, x_label="share of bad records in the lot", y_label="chance the lot passes")]
    parts.append(_groups("By the teacher's label", report.by_label, "label"))
    if len(report.by_task) > 1:
        parts.append(_groups("By task", report.by_task, "task"))
    more = (f'<p class="muted">The {len(report.by_document)} documents with the most reviewed records, of '
            f"{report.documents_total}.</p>") if report.documents_total > len(report.by_document) else ""
    parts.append(_groups("By source document", report.by_document, "document", more))
    parts.append(_groups("By reviewer (each reviewer's own verdicts)", report.by_reviewer, "reviewer"))
    if report.reasons:
        rows = [(REASONS.get(r.reason, r.reason), [r.rejected, r.fixed]) for r in report.reasons]
        parts += ["<h2>Why records were rejected or fixed</h2>", stacked_counts(rows, ["rejected", "fixed"]),
                  _table(["reason", "rejected", "fixed"], [[label, str(c[0]), str(c[1])] for label, c in rows])]
    parts.append("<h2>Automatic checks against the reviewers</h2>")
    if report.flags:
        parts += [('<p class="muted">Precision: of the reviewed records a check flagged, the share reviewers found bad. '
                   "Recall: of the records reviewers found bad, the share the check had flagged.</p>"),
                  _table(["flag", "meaning", "flagged", "found bad", "precision", "recall"],
                         [[f.kind, FLAG_KINDS.get(f.kind, "any of the checks"), str(f.flagged), str(f.bad),
                           pct(f.precision), pct(f.recall)] for f in report.flags])]
    else:
        parts.append('<p class="muted">No reviewed record carries a flag'
                     + (": the sample left flagged records out (draw one with --flagged include to measure the checks)."
                        if report.spec.flagged == "exclude" else ".") + "</p>")
    if report.lot_flags:
        parts.append(_table(["flag (all records of the task)", "records"],
                            [[f"{k}: {FLAG_KINDS.get(k, k)}", str(n)] for k, n in sorted(report.lot_flags.items())]))
    if report.agreement:
        parts += ["<h2>Reviewer agreement</h2>",
                  ('<p class="muted">On records both reviewers judged. Cohen\'s kappa corrects the agreement for '
                   "chance: 0 is chance level, 1 perfect.</p>"),
                  _table(["reviewers", "records", "agree (good/bad)", "kappa (good/bad)", "kappa (3 verdicts)"],
                         [[f"{p.a} · {p.b}", str(p.good_bad.n), pct(p.good_bad.percent),
                           "-" if p.good_bad.kappa is None else f"{p.good_bad.kappa:.2f} ({p.good_bad.words})",
                           "-" if p.verdicts.kappa is None else f"{p.verdicts.kappa:.2f}"] for p in report.agreement])]
    if report.judge:
        parts += ["<h2>LLM judge scores by verdict</h2>",
                  _table(["verdict", "records", "mean score"], [[j.verdict, str(j.n), f"{j.mean_score:.1f}"] for j in report.judge])]
    body = "\n".join(p for p in parts if p)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>QC report {escape(report.sample)}</title>'
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def write_html(report: QCReport, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report), encoding="utf-8")
    return path
