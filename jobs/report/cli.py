"""python -m jobs.report: read, sample, write the page and the sheet, print the same summary."""

from __future__ import annotations

import argparse
import os
import sys

import jobs.report as package
from jobs.report.cards import FAILED_WORD, KEPT_WORD, ROWS_WORD, Card
from jobs.report.load import LabelOutput, ReportError, Scan, Totals, load_cards, read_totals, sample_keys, scan_labels, preview_keys
from jobs.report.page import INDEX_FILE, render_page, sample_sentence, write_images
from jobs.report.sheet import DEFAULT_COLUMNS, SHEET_FILE, render_sheet

DEFAULT_SAMPLE = 48


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.report", description=package.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--labels", required=True, help="the --output directory of `python -m jobs.label` (a path, or a URI such as s3://bucket/labels)")
    parser.add_argument("--out", required=True, help="local directory for index.html, contact_sheet.png and images/ (created)")
    parser.add_argument("--sample", type=positive_int, default=DEFAULT_SAMPLE, help=f"cards to show (default {DEFAULT_SAMPLE})")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed; the same seed picks the same rows (default 0)")
    parser.add_argument("--columns", type=positive_int, default=DEFAULT_COLUMNS, help=f"contact sheet columns (default {DEFAULT_COLUMNS})")
    return parser.parse_args(argv)


def write_report(labels: str, out_dir: str, sample: int, seed: int, columns: int) -> tuple[list[Card], Totals, Scan]:
    output = LabelOutput.open(labels)
    files = output.label_files()
    scan = scan_labels(output, files, preview_keys(output))
    cards = load_cards(output, sample_keys(scan, sample, seed), scan)
    totals = read_totals(output, scan)
    os.makedirs(out_dir, exist_ok=True)
    sources = write_images(cards, out_dir)
    page = render_page(cards, sources, totals, scan, labels, seed, SHEET_FILE)
    with open(os.path.join(out_dir, INDEX_FILE), "w", encoding="utf-8") as f:
        f.write(page)
    sheet_path = os.path.join(out_dir, SHEET_FILE)
    if cards:
        render_sheet(cards, columns).save(sheet_path)
    elif os.path.exists(sheet_path):  # an earlier report's sheet would contradict the page
        os.remove(sheet_path)
    return cards, totals, scan


def summary(totals: Totals, cards: list[Card], scan: Scan, seed: int) -> str:
    """The page's header in text: the same totals, reasons and sample sentence."""
    lines = [f"{ROWS_WORD:<14}{totals.rows:>10}", f"{KEPT_WORD:<14}{totals.kept:>10}", f"{FAILED_WORD:<14}{totals.failed:>10}"]
    lines += [f"  {reason:<22}{count:>8}" for reason, count in sorted(totals.failed_by_reason.items(), key=lambda i: (-i[1], i[0]))]
    lines.append(sample_sentence(cards, scan, seed))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cards, totals, scan = write_report(args.labels, args.out, args.sample, args.seed, args.columns)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(totals, cards, scan, args.seed))
    print(f"wrote {os.path.join(args.out, INDEX_FILE)}")
    if cards:
        print(f"wrote {os.path.join(args.out, SHEET_FILE)}")
    else:
        print("warning: no row has a thumbnail and none failed; the page shows totals only and no contact sheet was written", file=sys.stderr)
    return 0
