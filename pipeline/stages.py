"""Ray Data stages of the corpus builder: fetch, inspect and filter each row.

`FetchAndFilter` is an async callable class for `map_batches`: Ray runs several of its batches
at once per actor, so one URL that hangs until the timeout never stalls a worker. Downloads run
in the fetcher's own event loop; header probes and decode checks run in a thread (Pillow
releases the GIL while decoding) so that the next batch's downloads overlap them.

No row can fail its batch: an unexpected exception while admitting, fetching, inspecting or
deduplicating one row becomes that row's `internal_error` (pipeline.isolation), and a value
that does not fit its column is caught when the columns are built.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import sys
from dataclasses import dataclass, field

import pyarrow as pa
import ray

from filters.caption import check_caption
from filters.dedup import content_sha256, duplicate_finding
from filters.findings import Finding
from filters.image import (
    STORED_FORMATS,
    ImageInfo,
    can_resize_from_bytes,
    check_area,
    check_aspect_ratio,
    check_size,
    decode_image,
    probe_image,
    reencode_png,
    verify_decodes,
)
from pipeline import schema
from pipeline.download import Fetcher, validate_url
from pipeline.isolation import row_failure, run_split_on_failure
from pipeline.options import CorpusOptions
from pipeline.schema import Reason, Rejection

@dataclass
class RowResult:
    """The columns one row gains; rejected rows keep everything learned before the rejection."""

    rejection: Rejection | None = None
    image: bytes | None = None
    values: dict = field(default_factory=dict)


@ray.remote(num_cpus=0)
class DedupIndex:
    """sha256 -> key of the first row kept with those bytes, shared by every worker."""

    def __init__(self, seen: dict[str, str] | None = None):
        self._first = dict(seen or {})

    def claim(self, pairs: list[tuple[str, str]]) -> list[str | None]:
        """For each (sha, key): None if this key now owns the sha, else the owner's key."""
        out = []
        for sha, key in pairs:
            owner = self._first.setdefault(sha, key)
            out.append(None if owner == key else owner)
        return out


def _img2dataset_resizer():
    """img2dataset's resizer module, loaded on its own: `import img2dataset.resizer` first runs the
    package's __init__, whose downloader and writers import webdataset and through it torch, ~350
    MiB more in every fetch actor for a module that needs only albumentations and cv2."""
    name = "_cogscale_img2dataset_resizer"
    if name not in sys.modules:
        package = importlib.util.find_spec("img2dataset")  # locates the package without running it
        spec = importlib.util.spec_from_file_location(name, os.path.join(package.submodule_search_locations[0], "resizer.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def _resizer(options: CorpusOptions):
    # Loaded lazily: albumentations and cv2 are only for --resize.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    resizer = _img2dataset_resizer()
    Resizer, ResizeMode = resizer.Resizer, resizer.ResizeMode

    return Resizer(
        image_size=options.image_size,
        resize_mode=ResizeMode[options.resize],
        resize_only_if_bigger=False,
        encode_format="jpg",
    )


def inspect_image(data: bytes, options: CorpusOptions, resizer=None) -> RowResult:
    """Header checks first (cheap, and bombs are never decoded), then a decode check.

    Kept bytes are always JPEG, PNG, WebP or GIF: other formats are re-encoded to PNG (or,
    with --other-formats reject, rejected), and --resize makes JPEG. With --decode-check none,
    bytes stored as downloaded are never decoded. With --resize, plain JPEG/PNG (see
    `can_resize_from_bytes`) go to the resizer as downloaded, after the cheap `verify_decodes`
    (what cv2 makes of a truncated file depends on its version); the rest is decoded by Pillow.
    """
    result = RowResult(values={schema.SHA256: content_sha256(data)})
    info = probe_image(data)
    if isinstance(info, Finding):
        result.rejection = Rejection.of(info)
        return result
    result.values.update(
        {
            schema.IMAGE_FORMAT: info.format,
            schema.ORIGINAL_WIDTH: info.width,
            schema.ORIGINAL_HEIGHT: info.height,
        }
    )
    result.rejection = Rejection.of(
        check_area(info, options.max_image_area)
        or check_aspect_ratio(info, options.max_aspect_ratio)
        or check_size(info, options.min_image_size)
    )
    stored_as_is = info.format in STORED_FORMATS
    if result.rejection is None and not stored_as_is and options.other_formats == "reject":
        result.rejection = Rejection(
            Reason.UNSUPPORTED_FORMAT,
            f"{info.format} is not stored (only JPEG, PNG, WebP, GIF); --other-formats png re-encodes it",
        )
    if result.rejection:
        return result
    result.values.update({schema.WIDTH: info.width, schema.HEIGHT: info.height})
    check_decodes = options.decode_check == "full"
    if resizer is None and stored_as_is:
        result.rejection = Rejection.of(verify_decodes(data, info)) if check_decodes else None
        result.image = None if result.rejection else data
        return result
    if resizer is None:
        png = reencode_png(data, info)
        if isinstance(png, Finding):
            result.rejection = Rejection.of(png)
            return result
        result.image = png
        result.values[schema.IMAGE_FORMAT] = "PNG"
        return result
    resized = resize(data, info, resizer, check_decodes)
    if isinstance(resized, Rejection):
        result.rejection = resized
        return result
    result.image, width, height = resized
    result.values.update({schema.WIDTH: width, schema.HEIGHT: height, schema.IMAGE_FORMAT: "JPEG"})
    return result


def resize(data: bytes, info: ImageInfo, resizer, check_decodes: bool = True, from_bytes: bool | None = None):
    """(jpeg, width, height) from img2dataset's resizer, or the Rejection that stopped it.

    `from_bytes` (by default `can_resize_from_bytes(info)`) hands the resizer the bytes as
    downloaded, after `verify_decodes` unless `check_decodes` is off; otherwise it gets a BMP of
    `decode_image`'s upright RGB (Pillow decodes, then cv2 decodes the BMP again).
    """
    if from_bytes is None:
        from_bytes = can_resize_from_bytes(info)
    if from_bytes:
        finding = verify_decodes(data, info) if check_decodes else None
        if finding is not None:
            return Rejection.of(finding)
        source = io.BytesIO(data)
    else:
        image = decode_image(data, info)
        if isinstance(image, Finding):
            return Rejection.of(image)
        source = io.BytesIO()
        image.save(source, format="BMP")  # lossless hand-over of our oriented RGB decode
    resized, width, height, _, _, error = resizer(source)
    if error:
        return Rejection(Reason.DECODE_ERROR, f"resize failed: {error}")
    return resized, width, height


def typed_column(name: str, values: list, type_: pa.DataType, results: list[RowResult]) -> pa.Array:
    """pa.array(values, type_); a value that does not fit (an int32 overflow, a wrong type) is
    nulled and rejects its row, instead of failing the batch."""
    try:
        return pa.array(values, type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        pass
    kept = []
    for i, value in enumerate(values):
        try:
            pa.array([value], type_)
            kept.append(value)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError) as e:
            kept.append(None)
            if results[i].rejection is None:
                results[i].rejection = row_failure("columns", ValueError(f"{name} = {value!r} does not fit {type_}: {e}"))
    return pa.array(kept, type_)


def result_columns(table: pa.Table, results: list[RowResult]) -> pa.Table:
    """Append our columns (typed by the schema) and the image bytes to the input rows."""
    n = table.num_rows
    given = (schema.KEY, schema.URL, schema.CAPTION)
    outcome = (schema.STATUS, schema.REASON, schema.ERROR_MESSAGE)
    columns = {  # the values first: one that does not fit its column rejects its row
        f.name: typed_column(f.name, [r.values.get(f.name) for r in results], f.type, results)
        for f in schema.CORPUS_FIELDS
        if f.name not in given + outcome
    }
    columns[schema.STATUS] = pa.array([r.rejection.status if r.rejection else schema.Status.SUCCESS for r in results], pa.string())
    columns[schema.REASON] = pa.array([r.rejection.reason if r.rejection else None for r in results], pa.string())
    columns[schema.ERROR_MESSAGE] = pa.array([r.rejection.message if r.rejection else None for r in results], pa.string())
    columns[schema.IMAGE_BYTES] = pa.array([None if r.rejection else r.image for r in results], pa.binary())
    for name in [f.name for f in schema.CORPUS_FIELDS if f.name not in given] + [schema.IMAGE_BYTES]:
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, columns[name])
        else:
            table = table.append_column(name, columns[name])
    assert table.num_rows == n
    return table


class FetchAndFilter:
    """Rows in, same rows out with status, reason, download record, image facts and bytes.

    Rows that already carry image bytes (existing corpora read by jobs.label) skip the download.
    """

    def __init__(self, options: CorpusOptions, dedup: "ray.actor.ActorHandle | None" = None):
        self.options = options
        self.fetcher = Fetcher(options.download_options())
        self.resizer = _resizer(options) if options.resize != "no" else None
        self.dedup = dedup

    def __del__(self):
        # Ray Data drops the UDF when the pool shuts down gracefully: close sockets and the loop.
        self.fetcher.close()

    def _caption_rejection(self, caption) -> Rejection | None:
        return Rejection.of(
            check_caption(
                caption,
                drop_empty=self.options.drop_empty_captions,
                min_words=self.options.min_caption_words,
                max_length=self.options.max_caption_length,
            )
        )

    def _admission(self, url, caption, image: bytes | None, holds_images: bool) -> Rejection | None:
        """Why the row goes no further before any download or decode, or None."""
        if holds_images:
            missing = Rejection(Reason.MISSING_IMAGE, "the input row has no image bytes") if image is None else None
            return self._caption_rejection(caption) or missing
        return validate_url(url, self.options.allow_local_files) or self._caption_rejection(caption)

    async def __call__(self, table: pa.Table) -> pa.Table:
        urls = table.column(schema.URL).to_pylist()
        captions = table.column(schema.CAPTION).to_pylist()
        holds_images = schema.IMAGE_BYTES in table.column_names
        have = table.column(schema.IMAGE_BYTES).to_pylist() if holds_images else [None] * table.num_rows
        results = [RowResult() for _ in urls]
        for i, (url, caption) in enumerate(zip(urls, captions)):
            try:
                results[i].rejection = self._admission(url, caption, have[i], holds_images)
            except Exception as e:
                results[i].rejection = row_failure("input", e)
        to_fetch = [] if holds_images else [i for i, r in enumerate(results) if r.rejection is None]
        fetched = await asyncio.to_thread(run_split_on_failure, [urls[i] for i in to_fetch], self.fetcher.fetch_many)
        for i, got in zip(to_fetch, fetched):
            if isinstance(got, Exception):
                results[i].rejection = row_failure("download", got)
                continue
            results[i].values.update(
                {
                    schema.HTTP_STATUS: got.http_status,
                    schema.FINAL_URL: got.final_url,
                    schema.BYTES: got.nbytes,
                    schema.DOWNLOAD_SECONDS: got.seconds,
                }
            )
            results[i].rejection = got.rejection
            have[i] = got.data if got.rejection is None else None
        await asyncio.to_thread(self._inspect_all, table, have, results)
        return result_columns(table, results)

    def inspect(self, data: bytes) -> RowResult:
        """The checks a fetched body goes through; pipeline.video.FetchVideos passes videos on."""
        return inspect_image(data, self.options, self.resizer)

    def _inspect_all(self, table: pa.Table, images: list, results: list[RowResult]) -> None:
        for i, data in enumerate(images):
            if data is None or results[i].rejection:
                continue
            try:
                inspected = self.inspect(data)
            except Exception as e:
                results[i].rejection = row_failure("inspect", e)
                continue
            results[i].values.setdefault(schema.BYTES, len(data))
            results[i].values.update(inspected.values)
            results[i].rejection, results[i].image = inspected.rejection, inspected.image
        if self.dedup is not None:
            self._deduplicate(table.column(schema.KEY).to_pylist(), results)

    def _deduplicate(self, keys: list[str], results: list[RowResult]) -> None:
        candidates = [i for i, r in enumerate(results) if r.rejection is None and r.image is not None]
        # Claims are idempotent per key, so a retried half (or a retried task) claims nothing twice.
        owners = run_split_on_failure([(results[i].values[schema.SHA256], keys[i]) for i in candidates], self._claim)
        for i, owner in zip(candidates, owners):
            if isinstance(owner, Exception):
                results[i].rejection = row_failure("dedup", owner)
            elif owner is not None:
                results[i].rejection = Rejection.of(duplicate_finding(results[i].values[schema.SHA256], owner))

    def _claim(self, pairs: list[tuple[str, str]]) -> list[str | None]:
        return ray.get(self.dedup.claim.remote(pairs))
