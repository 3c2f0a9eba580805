"""Every corpus-builder option, defined once: a dataclass and the argparse flags that fill it.

jobs.build_corpus and jobs.label both call `add_corpus_arguments` and `CorpusOptions.from_args`,
so the two jobs download and filter with the same flags and the same defaults.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
from dataclasses import dataclass, fields

from pipeline.download import DownloadOptions

RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop")
# What to do with decodable images that are not JPEG, PNG, WebP or GIF (BMP, TIFF, PPM, ...).
OTHER_FORMATS = ("png", "reject")
# How kept images are checked for pixel data that does not decode (truncated or corrupt files).
DECODE_CHECKS = ("full", "none")


@dataclass(frozen=True)
class CorpusOptions:
    url_col: str = "url"
    caption_col: str = "caption"
    allow_local_files: bool = False
    # download
    timeout: float = 10.0
    retries: int = 2
    max_bytes: int = 32 * 2**20
    max_redirects: int = 5
    user_agent_token: str | None = None
    allow_networks: tuple[str, ...] = ()
    respect_robots_headers: bool = True
    download_workers: int | None = None  # None: one per CPU (jobs.label: one per two CPUs)
    requests_per_worker: int = 64
    # filters
    min_image_size: int = 0
    max_image_area: int = 80_000_000
    max_aspect_ratio: float = 6.0
    drop_empty_captions: bool = False
    min_caption_words: int = 0
    max_caption_length: int | None = None
    dedup: bool = False
    decode_check: str = "full"
    # outputs
    resize: str = "no"
    other_formats: str = "png"
    image_size: int = 256
    shard_size: int = 2000

    def download_options(self) -> DownloadOptions:
        return DownloadOptions(
            timeout=self.timeout,
            retries=self.retries,
            max_bytes=self.max_bytes,
            max_redirects=self.max_redirects,
            user_agent_token=self.user_agent_token,
            allow_networks=self.allow_networks,
            allow_local_files=self.allow_local_files,
            concurrency=self.requests_per_worker,
            respect_robots_headers=self.respect_robots_headers,
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CorpusOptions":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def _networks(text: str) -> tuple[str, ...]:
    nets = tuple(part.strip() for part in text.split(",") if part.strip())
    for net in nets:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"--allow-networks: {net!r} is not a CIDR: {e}")
    return nets


def _positive(kind):
    return number(kind, above=0)


def number(kind, *, at_least=None, above=None, at_most=None):
    """An argparse type: `kind(text)` within the given bounds, else a message saying which."""

    def parse(text: str):
        value = kind(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if at_least is not None and value < at_least:
            raise argparse.ArgumentTypeError(f"must be at least {at_least}, got {text}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be above {above}, got {text}")
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"must be at most {at_most}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value: 'x'"
    return parse


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes print one line that says what to fix (not the whole usage), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    d = CorpusOptions()
    g = parser.add_argument_group("input columns")
    g.add_argument("--url-col", dest="url_col", default=d.url_col, help="column with image URLs (default: %(default)s)")
    g.add_argument("--caption-col", dest="caption_col", default=d.caption_col, help="column with captions, if any (default: %(default)s)")
    g.add_argument("--allow-local-files", dest="allow_local_files", action="store_true", help="accept file:// URLs and local paths (refused by default)")

    g = parser.add_argument_group("download")
    g.add_argument("--timeout", type=_positive(float), default=d.timeout, help="total seconds per URL: connect, headers, body, retries (default: %(default)s)")
    g.add_argument("--retries", type=number(int, at_least=0), default=d.retries, help="extra attempts on 429, 5xx, resets and timeouts, with backoff (default: %(default)s)")
    g.add_argument("--max-bytes", dest="max_bytes", type=_positive(int), default=d.max_bytes, help="largest body accepted, after decompression (default: 32 MiB)")
    g.add_argument("--max-redirects", dest="max_redirects", type=number(int, at_least=0), default=d.max_redirects, help="(default: %(default)s)")
    g.add_argument("--user-agent-token", dest="user_agent_token", default=d.user_agent_token, help="token added to our user agent; X-Robots-Tag directives scoped to it are honoured")
    g.add_argument("--allow-networks", dest="allow_networks", type=_networks, default=d.allow_networks, help="CIDR,... opened on top of public addresses (private, loopback, link-local, multicast and reserved ranges are refused by default)")
    g.add_argument("--ignore-robots-headers", dest="respect_robots_headers", action="store_false", help="do not honour X-Robots-Tag noai/noimageai/noindex/noimageindex")
    g.add_argument("--download-workers", dest="download_workers", type=_positive(int), default=d.download_workers, help="download actors, each with --requests-per-worker requests in flight and a decode thread (default: one per CPU; jobs.label: one per two CPUs)")
    g.add_argument("--requests-per-worker", dest="requests_per_worker", type=_positive(int), default=d.requests_per_worker, help="requests in flight per download actor (default: %(default)s)")

    g = parser.add_argument_group("filters")
    g.add_argument("--min-image-size", dest="min_image_size", type=number(int, at_least=0), default=d.min_image_size, help="drop images whose shorter side is below this many pixels (default: %(default)s)")
    g.add_argument("--max-image-area", dest="max_image_area", type=_positive(int), default=d.max_image_area, help="drop images with more pixels, decided from the header without decoding (default: %(default)s)")
    g.add_argument("--max-aspect-ratio", dest="max_aspect_ratio", type=_positive(float), default=d.max_aspect_ratio, help="drop images wider than R:1 or taller than 1:R; exactly R is kept (default: %(default)s)")
    g.add_argument("--drop-empty-captions", dest="drop_empty_captions", action="store_true", help="drop rows whose caption is missing or blank")
    g.add_argument("--min-caption-words", dest="min_caption_words", type=number(int, at_least=0), default=d.min_caption_words, help="(default: %(default)s)")
    g.add_argument("--max-caption-length", dest="max_caption_length", type=_positive(int), default=d.max_caption_length, help="in characters (default: no limit)")
    g.add_argument("--dedup", action="store_true", help="keep one copy of images with identical bytes (sha256)")
    g.add_argument(
        "--decode-check",
        dest="decode_check",
        choices=DECODE_CHECKS,
        default=d.decode_check,
        help="'full' decodes every image kept as downloaded to its last byte (JPEGs at 1/8 scale in greyscale) and"
        " rejects truncated image data as decode_error; 'none' keeps the bytes after the header checks (format,"
        " size, aspect ratio, area) without decoding any pixels, like img2dataset's --disable_all_reencoding:"
        " truncated or corrupt image data is NOT caught and is stored as downloaded. With --resize, 'none' also"
        " skips the check before plain JPEG/PNG (8-bit RGB or greyscale, upright) go to the resizer, whose own"
        " decode (cv2) then decides; images Pillow decodes anyway (re-encoded to PNG, or resized from a Pillow"
        " decode) are always checked (default: %(default)s)",
    )

    g = parser.add_argument_group("output")
    g.add_argument("--resize", choices=RESIZE_MODES, default=d.resize, help="img2dataset resize mode; 'no' keeps the original bytes (default: %(default)s)")
    g.add_argument("--other-formats", dest="other_formats", choices=OTHER_FORMATS, default=d.other_formats, help="decodable images that are not JPEG, PNG, WebP or GIF (BMP, TIFF, PPM, PSD, ICO, AVIF, ...): 'png' stores their first frame re-encoded losslessly as PNG, 'reject' rejects them as unsupported_format (default: %(default)s)")
    g.add_argument("--image-size", dest="image_size", type=_positive(int), default=d.image_size, help="target size for --resize (default: %(default)s)")
    g.add_argument("--shard-size", dest="shard_size", type=_positive(int), default=d.shard_size, help="input rows per output shard (default: %(default)s)")
