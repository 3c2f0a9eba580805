"""Download and filter image-text pairs into clean webdataset shards.

    python -m jobs.build_corpus --input urls.parquet --output out/
    python -m jobs.build_corpus --input s3://bucket/lists/ --output s3://bucket/corpus/

--input and --output are local paths or URIs (s3://, gs://, or any fsspec filesystem); S3
credentials and endpoint come from the usual AWS variables and files (AWS_ENDPOINT_URL for
S3-compatible stores). Runs on an embedded local Ray unless --address or RAY_ADDRESS names a
cluster; the same command works under `ray job submit --working-dir . -- python -m jobs.build_corpus ...`.
Re-running into the same --output finishes what a killed run left undone; it refuses if the
settings that shape the rows differ from those recorded in OUTPUT/settings.json (--overwrite
starts the output afresh instead).
"""

from __future__ import annotations

import argparse
import sys

import pyarrow as pa

from pipeline.corpus import build_corpus, check_output, connect, job_error, record_plan, summary, url_list_files
from pipeline.options import CorpusOptions, OneLineParser, add_corpus_arguments, number
from pipeline.reader import InputError
from pipeline.settings import add_overwrite_argument, corpus_settings, prepare_output


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="python -m jobs.build_corpus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, help="file, directory or glob of .parquet/.csv/.tsv/.jsonl/.txt (optionally .gz); a path or s3://... URI")
    parser.add_argument("--output", required=True, help="output directory, a path or s3://... URI (created; re-running resumes)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--num-cpus", dest="num_cpus", type=number(int, at_least=1), default=None, help="CPUs for the embedded local Ray (default: all)")
    add_overwrite_argument(parser)
    add_corpus_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    options = CorpusOptions.from_args(args)
    # The driver reads every list twice (plan, then shards): on jemalloc, Arrow's default pool,
    # what it freed stays resident (+60 MiB at 100k rows, benchmarks/RESULTS.md, memory)
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        inputs = url_list_files(args.input, options)  # before Ray starts: job-level mistakes exit 2
        out = check_output(args.output)
        prepare_output(args.output, "build_corpus", corpus_settings(options), args.overwrite)
        record_plan(out, "build_corpus", [(f.uri, f.rows) for f in inputs], options.shard_size)
        connect(args.address, args.num_cpus)
        totals = build_corpus(inputs, args.output, options)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        line = job_error(e)  # storage errors: one line naming the path; the output stays resumable
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    print(summary(totals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
