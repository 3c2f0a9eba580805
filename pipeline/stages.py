"""Ray Data stages of the corpus builder: fetch, inspect and filter each row.

`FetchAndFilter` is an async callable class for `map_batches`: Ray runs several of its batches
at once per actor, so one URL that hangs until the timeout never stalls a worker. Downloads run
in the fetcher's own event loop; header probes and decode checks run in a thread (Pillow
releases the GIL while decoding) so that the next batch's downloads overlap them.
"""

from __future__ import annotations

import asyncio
import io
import os
from dataclasses import dataclass, field

import pyarrow as pa
import ray

from filters.caption import check_caption
from filters.dedup import content_sha256, duplicate_rejection
from filters.image import check_area, check_aspect_ratio, check_size, decode_image, probe_image, verify_decodes
from pipeline import schema
from pipeline.download import Fetcher, validate_url
from pipeline.options import CorpusOptions
from pipeline.schema import Rejection

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


def _resizer(options: CorpusOptions):
    # Imported lazily: img2dataset pulls in albumentations and cv2, which only --resize needs.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset.resizer import ResizeMode, Resizer

    return Resizer(
        image_size=options.image_size,
        resize_mode=ResizeMode[options.resize],
        resize_only_if_bigger=False,
        encode_format="jpg",
    )


def inspect_image(data: bytes, options: CorpusOptions, resizer=None) -> RowResult:
    """Header checks first (cheap, and bombs are never decoded), then a decode check."""
    result = RowResult(values={schema.SHA256: content_sha256(data)})
    info = probe_image(data)
    if isinstance(info, Rejection):
        result.rejection = info
        return result
    result.values.update(
        {
            schema.IMAGE_FORMAT: info.format,
            schema.ORIGINAL_WIDTH: info.width,
            schema.ORIGINAL_HEIGHT: info.height,
        }
    )
    result.rejection = (
        check_area(info, options.max_image_area)
        or check_aspect_ratio(info, options.max_aspect_ratio)
        or check_size(info, options.min_image_size)
    )
    if result.rejection:
        return result
    if resizer is None:
        result.rejection = verify_decodes(data, info)
        result.image = data
        result.values.update({schema.WIDTH: info.width, schema.HEIGHT: info.height})
        return result
    image = decode_image(data, info)
    if isinstance(image, Rejection):
        result.rejection = image
        return result
    bmp = io.BytesIO()
    image.save(bmp, format="BMP")  # lossless hand-over of our oriented RGB decode
    resized, width, height, _, _, error = resizer(bmp)
    if error:
        result.rejection = Rejection(schema.Reason.DECODE_ERROR, f"resize failed: {error}")
        return result
    result.image = resized
    result.values.update({schema.WIDTH: width, schema.HEIGHT: height, schema.IMAGE_FORMAT: "JPEG"})
    return result


def result_columns(table: pa.Table, results: list[RowResult]) -> pa.Table:
    """Append our columns (typed by the schema) and the image bytes to the input rows."""
    n = table.num_rows
    columns = {}
    for f in schema.CORPUS_FIELDS:
        if f.name in (schema.KEY, schema.URL, schema.CAPTION):
            continue
        if f.name == schema.STATUS:
            values = [r.rejection.status if r.rejection else schema.Status.SUCCESS for r in results]
        elif f.name == schema.REASON:
            values = [r.rejection.reason if r.rejection else None for r in results]
        elif f.name == schema.ERROR_MESSAGE:
            values = [r.rejection.message if r.rejection else None for r in results]
        else:
            values = [r.values.get(f.name) for r in results]
        columns[f.name] = pa.array(values, f.type)
    images = [None if r.rejection else r.image for r in results]
    columns[schema.IMAGE_BYTES] = pa.array(images, pa.binary())
    for name, col in columns.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, col)
        else:
            table = table.append_column(name, col)
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
        return check_caption(
            caption,
            drop_empty=self.options.drop_empty_captions,
            min_words=self.options.min_caption_words,
            max_length=self.options.max_caption_length,
        )

    async def __call__(self, table: pa.Table) -> pa.Table:
        urls = table.column(schema.URL).to_pylist()
        captions = table.column(schema.CAPTION).to_pylist()
        holds_images = schema.IMAGE_BYTES in table.column_names
        have = table.column(schema.IMAGE_BYTES).to_pylist() if holds_images else [None] * table.num_rows
        results = [RowResult() for _ in urls]
        to_fetch = []
        for i, (url, caption) in enumerate(zip(urls, captions)):
            if holds_images:
                results[i].rejection = self._caption_rejection(caption) or (
                    Rejection(schema.Reason.MISSING_IMAGE, "the input row has no image bytes")
                    if have[i] is None
                    else None
                )
            else:
                results[i].rejection = validate_url(url, self.options.allow_local_files) or self._caption_rejection(caption)
                if results[i].rejection is None:
                    to_fetch.append(i)
        fetched = await asyncio.to_thread(self.fetcher.fetch_many, [urls[i] for i in to_fetch])
        for i, got in zip(to_fetch, fetched):
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
        keys = table.column(schema.KEY).to_pylist()
        for i, data in enumerate(images):
            if data is None or results[i].rejection:
                continue
            inspected = self.inspect(data)
            results[i].values.setdefault(schema.BYTES, len(data))
            results[i].values.update(inspected.values)
            results[i].rejection, results[i].image = inspected.rejection, inspected.image
        if self.dedup is None:
            return
        candidates = [i for i, r in enumerate(results) if r.rejection is None and r.image is not None]
        owners = ray.get(self.dedup.claim.remote([(results[i].values[schema.SHA256], keys[i]) for i in candidates]))
        for i, owner in zip(candidates, owners):
            if owner is not None:
                results[i].rejection = duplicate_rejection(results[i].values[schema.SHA256], owner)
