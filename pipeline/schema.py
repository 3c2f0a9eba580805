"""The row schema: every column name, type, status and reason code in one place.

Stages, writers, jobs and tests import names from here; nothing else spells a column
name as a string literal.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from filters.findings import Finding, Problem

# --- identity and input -------------------------------------------------------------
KEY = "key"  # stable per input row: f"{file_index:05d}{row_index:09d}", img2dataset style
URL = "url"
CAPTION = "caption"

# --- outcome --------------------------------------------------------------------------
STATUS = "status"
REASON = "reason"
ERROR_MESSAGE = "error_message"

# --- download ---------------------------------------------------------------------------
HTTP_STATUS = "http_status"
FINAL_URL = "final_url"
BYTES = "bytes"
DOWNLOAD_SECONDS = "download_seconds"

# --- image ------------------------------------------------------------------------------
WIDTH = "width"  # of the stored image (after --resize, if any)
HEIGHT = "height"
ORIGINAL_WIDTH = "original_width"  # as displayed: EXIF orientation applied
ORIGINAL_HEIGHT = "original_height"
SHA256 = "sha256"  # of the downloaded bytes
IMAGE_FORMAT = "image_format"

# --- video (jobs.label with a video model) ------------------------------------------------
FRAME_TIMESTAMPS = "frame_timestamps"  # start time in seconds of each frame the model saw, in order
DURATION = "duration"  # seconds, from the frames' timestamps
FPS = "fps"  # the stream's average frame rate
VIDEO_CODEC = "video_codec"

# Internal columns that travel between stages but are never written to Parquet.
IMAGE_BYTES = "_image"
SHARD = "_shard"  # internal: the output shard (a fixed range of input rows) the row belongs to

# --- labels (jobs.label) ----------------------------------------------------------------
TASK = "task"
PROMPT = "prompt"
TEXT = "text"  # raw model output
# In label output `caption` is the model's clean caption; an input caption column is
# carried like any other input column (as `input_caption` if it was named `caption`).
LABEL_CAPTION = "caption"
BOXES = "boxes"
MODEL = "model"
GENERATION = "generation"  # JSON of the generation settings
PREPROCESS_SECONDS = "preprocess_seconds"
MODEL_SECONDS = "model_seconds"
THUMBNAIL = "thumbnail"  # JPEG bytes in the previews Parquet that jobs.report renders
PIXEL_VALUES = "_pixel_values"  # internal: model-ready image tensor, float32 CHW
PHRASES = "_phrases"  # internal: the ground task's phrases for this row
PROMPTS = "_prompts"  # internal: the row's templated prompts (several for `ground`)


class Status:
    SUCCESS = "success"
    INVALID_INPUT = "invalid_input"
    FAILED_TO_DOWNLOAD = "failed_to_download"
    FAILED_TO_DECODE = "failed_to_decode"
    FILTERED = "filtered"
    FAILED_TO_LABEL = "failed_to_label"
    INTERNAL_ERROR = "internal_error"  # a bug of ours or of a library, met on this row alone


class Reason:
    """Stable machine-readable reason codes. The README documents each one."""

    # input
    MISSING_URL = "missing_url"
    INVALID_URL = "invalid_url"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    LOCAL_FILE_REFUSED = "local_file_refused"
    MISSING_IMAGE = "missing_image"  # a corpus row without image bytes
    MISSING_PROMPT = "missing_prompt"  # vqa/ground: the row has no question or phrases
    MALFORMED_INPUT = "malformed_input"  # a line of an input file that does not parse, or damage
    # download
    HTTP_ERROR = "http_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    BLOCKED_ADDRESS = "blocked_address"
    ROBOTS_OPT_OUT = "robots_opt_out"
    TOO_LARGE = "too_large"
    EMPTY_BODY = "empty_body"
    FILE_NOT_FOUND = "file_not_found"
    # decode
    NOT_AN_IMAGE = "not_an_image"
    DECODE_ERROR = "decode_error"
    NOT_A_VIDEO = "not_a_video"  # no container FFmpeg can read
    NO_VIDEO_STREAM = "no_video_stream"  # e.g. audio only
    EMPTY_VIDEO = "empty_video"  # a video stream without a single frame
    VIDEO_TRUNCATED = "video_truncated"  # decodes only partly: frames the sampler needs are missing
    # filters
    TOO_SMALL = "too_small"
    ASPECT_RATIO = "aspect_ratio"
    TOO_MANY_PIXELS = "too_many_pixels"
    UNSUPPORTED_FORMAT = "unsupported_format"  # --other-formats reject
    TOO_SHORT = "too_short"  # video shorter than --min-duration
    TOO_LONG = "too_long"  # video longer than --max-duration
    CAPTION_EMPTY = "caption_empty"
    CAPTION_TOO_SHORT = "caption_too_short"
    CAPTION_TOO_LONG = "caption_too_long"
    DUPLICATE = "duplicate"
    # labeling
    MODEL_ERROR = "model_error"
    OUT_OF_MEMORY = "out_of_memory"
    # any stage
    INTERNAL_ERROR = "internal_error"  # an unexpected exception while handling this row


# The status each reason belongs to; a rejected row's status is derived, never guessed.
REASON_STATUS = {
    Reason.MISSING_URL: Status.INVALID_INPUT,
    Reason.INVALID_URL: Status.INVALID_INPUT,
    Reason.UNSUPPORTED_SCHEME: Status.INVALID_INPUT,
    Reason.LOCAL_FILE_REFUSED: Status.INVALID_INPUT,
    Reason.MISSING_IMAGE: Status.INVALID_INPUT,
    Reason.MISSING_PROMPT: Status.INVALID_INPUT,
    Reason.MALFORMED_INPUT: Status.INVALID_INPUT,
    Reason.HTTP_ERROR: Status.FAILED_TO_DOWNLOAD,
    Reason.TIMEOUT: Status.FAILED_TO_DOWNLOAD,
    Reason.CONNECTION_ERROR: Status.FAILED_TO_DOWNLOAD,
    Reason.TOO_MANY_REDIRECTS: Status.FAILED_TO_DOWNLOAD,
    Reason.BLOCKED_ADDRESS: Status.FAILED_TO_DOWNLOAD,
    Reason.ROBOTS_OPT_OUT: Status.FAILED_TO_DOWNLOAD,
    Reason.TOO_LARGE: Status.FAILED_TO_DOWNLOAD,
    Reason.EMPTY_BODY: Status.FAILED_TO_DOWNLOAD,
    Reason.FILE_NOT_FOUND: Status.FAILED_TO_DOWNLOAD,
    Reason.NOT_AN_IMAGE: Status.FAILED_TO_DECODE,
    Reason.DECODE_ERROR: Status.FAILED_TO_DECODE,
    Reason.NOT_A_VIDEO: Status.FAILED_TO_DECODE,
    Reason.NO_VIDEO_STREAM: Status.FAILED_TO_DECODE,
    Reason.EMPTY_VIDEO: Status.FAILED_TO_DECODE,
    Reason.VIDEO_TRUNCATED: Status.FAILED_TO_DECODE,
    Reason.TOO_SHORT: Status.FILTERED,
    Reason.TOO_LONG: Status.FILTERED,
    Reason.TOO_SMALL: Status.FILTERED,
    Reason.ASPECT_RATIO: Status.FILTERED,
    Reason.TOO_MANY_PIXELS: Status.FILTERED,
    Reason.UNSUPPORTED_FORMAT: Status.FILTERED,
    Reason.CAPTION_EMPTY: Status.FILTERED,
    Reason.CAPTION_TOO_SHORT: Status.FILTERED,
    Reason.CAPTION_TOO_LONG: Status.FILTERED,
    Reason.DUPLICATE: Status.FILTERED,
    Reason.MODEL_ERROR: Status.FAILED_TO_LABEL,
    Reason.OUT_OF_MEMORY: Status.FAILED_TO_LABEL,
    Reason.INTERNAL_ERROR: Status.INTERNAL_ERROR,
}

# The reason a row gets for each problem the (pipeline-agnostic) filters report.
PROBLEM_REASON = {
    Problem.NOT_AN_IMAGE: Reason.NOT_AN_IMAGE,
    Problem.BROKEN_IMAGE: Reason.DECODE_ERROR,
    Problem.IMPOSSIBLE_SIZE: Reason.DECODE_ERROR,
    Problem.TOO_MANY_PIXELS: Reason.TOO_MANY_PIXELS,
    Problem.TOO_SMALL: Reason.TOO_SMALL,
    Problem.ASPECT_RATIO: Reason.ASPECT_RATIO,
    Problem.CAPTION_EMPTY: Reason.CAPTION_EMPTY,
    Problem.CAPTION_TOO_SHORT: Reason.CAPTION_TOO_SHORT,
    Problem.CAPTION_TOO_LONG: Reason.CAPTION_TOO_LONG,
    Problem.DUPLICATE: Reason.DUPLICATE,
    Problem.TOO_SHORT: Reason.TOO_SHORT,
    Problem.TOO_LONG: Reason.TOO_LONG,
}


@dataclass(frozen=True)
class Rejection:
    """Why a row is not kept: a stable code and a message for people."""

    reason: str
    message: str

    @property
    def status(self) -> str:
        return REASON_STATUS[self.reason]

    @classmethod
    def of(cls, finding: Finding | None) -> "Rejection | None":
        """The rejection for a filter's finding (None passes through)."""
        return None if finding is None else cls(PROBLEM_REASON[finding.problem], finding.message)


# Columns the corpus builder adds to every row, with their Arrow types. The input's own
# columns follow these, unchanged (renamed with INPUT_PREFIX only if a name collides).
CORPUS_FIELDS = [
    pa.field(KEY, pa.string()),
    pa.field(URL, pa.string()),
    pa.field(CAPTION, pa.string()),
    pa.field(STATUS, pa.string()),
    pa.field(REASON, pa.string()),
    pa.field(ERROR_MESSAGE, pa.string()),
    pa.field(HTTP_STATUS, pa.int32()),
    pa.field(FINAL_URL, pa.string()),
    pa.field(BYTES, pa.int64()),
    pa.field(DOWNLOAD_SECONDS, pa.float64()),
    pa.field(WIDTH, pa.int32()),
    pa.field(HEIGHT, pa.int32()),
    pa.field(ORIGINAL_WIDTH, pa.int32()),
    pa.field(ORIGINAL_HEIGHT, pa.int32()),
    pa.field(SHA256, pa.string()),
    pa.field(IMAGE_FORMAT, pa.string()),
]
CORPUS_COLUMNS = [f.name for f in CORPUS_FIELDS]
INPUT_PREFIX = "input_"

BOX_TYPE = pa.struct(
    [
        pa.field("phrase", pa.string()),
        pa.field("x0", pa.float32()),
        pa.field("y0", pa.float32()),
        pa.field("x1", pa.float32()),
        pa.field("y1", pa.float32()),
        pa.field("x0_rel", pa.int32()),  # the model's 0..999 values
        pa.field("y0_rel", pa.int32()),
        pa.field("x1_rel", pa.int32()),
        pa.field("y1_rel", pa.int32()),
    ]
)

# Columns jobs.label adds after the corpus columns.
LABEL_FIELDS = [
    pa.field(TASK, pa.string()),
    pa.field(PROMPT, pa.string()),
    pa.field(TEXT, pa.string()),
    pa.field(LABEL_CAPTION, pa.string()),
    pa.field(BOXES, pa.list_(BOX_TYPE)),
    pa.field(MODEL, pa.string()),
    pa.field(GENERATION, pa.string()),
    pa.field(PREPROCESS_SECONDS, pa.float64()),
    pa.field(MODEL_SECONDS, pa.float64()),
]
LABEL_COLUMNS = [f.name for f in LABEL_FIELDS]

# A few thumbnails per label shard, so a report never has to fetch images again.
PREVIEW_FIELDS = [
    pa.field(KEY, pa.string()),
    pa.field(THUMBNAIL, pa.binary()),
    pa.field(WIDTH, pa.int32()),  # of the original image; boxes are in its pixels
    pa.field(HEIGHT, pa.int32()),
]

# Columns jobs.label adds for videos (width and height are the corpus columns, of the frames).
VIDEO_FIELDS = [
    pa.field(FRAME_TIMESTAMPS, pa.list_(pa.float64())),
    pa.field(DURATION, pa.float64()),
    pa.field(FPS, pa.float64()),
    pa.field(VIDEO_CODEC, pa.string()),
]
VIDEO_COLUMNS = [f.name for f in VIDEO_FIELDS]

INTERNAL_COLUMNS = [IMAGE_BYTES, PIXEL_VALUES, PHRASES, PROMPTS, SHARD]


def reserved_columns() -> set[str]:
    return set(CORPUS_COLUMNS) | set(LABEL_COLUMNS) | set(INTERNAL_COLUMNS) | set(VIDEO_COLUMNS)
