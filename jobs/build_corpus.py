"""Download and filter image-text pairs into clean webdataset shards.

    python -m jobs.build_corpus --input urls.parquet --output out/

Runs on an embedded local Ray unless --address or RAY_ADDRESS names a cluster; the same command
works under `ray job submit --working-dir . -- python -m jobs.build_corpus ...`.
Re-running into the same --output finishes what a killed run left undone; it refuses if the
settings that shape the rows differ from those recorded in OUTPUT/settings.json (--overwrite
starts the output afresh instead).
"""

from __future__ import annotations

import argparse
import sys

from pipeline.corpus import build_corpus, connect, summary, url_list_files
from pipeline.options import CorpusOptions, OneLineParser, add_corpus_arguments, number
from pipeline.reader import InputError
from pipeline.settings import add_overwrite_argument, corpus_settings, prepare_output


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="python -m jobs.build_corpus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, help="file, directory or glob of .parquet/.csv/.tsv/.jsonl/.txt (optionally .gz)")
    parser.add_argument("--output", required=True, help="output directory (created; re-running resumes)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--num-cpus", dest="num_cpus", type=number(int, at_least=1), default=None, help="CPUs for the embedded local Ray (default: all)")
    add_overwrite_argument(parser)
    add_corpus_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    options = CorpusOptions.from_args(args)
    try:
        files = url_list_files(args.input, options)
        prepare_output(args.output, "build_corpus", corpus_settings(options), args.overwrite)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    connect(args.address, args.num_cpus)
    print(summary(build_corpus(files, args.output, options)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
