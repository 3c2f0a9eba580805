"""Render a sample of labelled images, with their boxes and captions, for people to look at.

    python -m jobs.report --labels out/labels --out out/report
    python -m jobs.report --labels s3://bucket/labels --out out/report

--labels is the --output directory of `python -m jobs.label`, as a local path or a URI that
pyarrow.fs understands (file://, s3://, gs://, hdfs://). The report is read from its label and
preview shards (and stats.json when the job finished):

    OUT/index.html          a self-contained page: totals, failures by reason with an example
                            message each, and one card per sampled row (thumbnail with its boxes,
                            caption or, for `ground`, each phrase with its answer; raw model text,
                            task, prompt, model); opens offline
    OUT/images/card-NNNN.*  the thumbnails the page shows
    OUT/contact_sheet.png   the same cards as a grid: boxes drawn, the same words under each image

The sample is drawn deterministically for a --seed: mostly successes that have a thumbnail, and
up to one card in eight a failure (failed rows need no thumbnail: their card shows the reason),
so the rows a user is debugging show up too. Model output is untrusted: the page escapes every
text it shows and its Content-Security-Policy allows no script at all.

Modules: load (reading the output through pyarrow.fs, sampling), cards (what a card says, shared
by page, sheet and the command line), page (HTML), sheet (PNG), cli.
"""

from jobs.report.cli import main, write_report  # noqa: F401
