"""End to end: jobs.label with the tiny video model over video URLs on the loopback server, a folder
of video files and video2dataset-style webdataset tars."""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import label, report
from model.tiny import write_tiny_checkpoint
from pipeline import schema
from pipeline.reader import make_key
from pipeline.video_strip import strip_card
from pipeline.writer import LABELS_DIR, PREVIEWS_DIR, SHARDS_DIR
from tests import videos
from tests.http_server import video_bodies
from tests.jobs.test_label import NET_FLAGS

R = schema.Reason
URLS = {  # path -> expected reason (None: labelled)
    "/video/clip.mp4": None,
    "/video/clip.webm": None,
    "/video/with-audio.mp4": None,
    "/video/long.mp4": None,
    "/video/truncated.mp4": None,  # decodes partly: sampled over what decodes
    "/video/audio-only.m4a": R.NO_VIDEO_STREAM,
    "/video/zero-frames.mp4": R.NO_VIDEO_STREAM,
    "/video/huge.mkv": R.TOO_MANY_PIXELS,
    "/status/404": R.HTTP_ERROR,
    "/html": R.NOT_A_VIDEO,
    "/big/chunked": R.TOO_LARGE,  # over --max-bytes
    None: R.MISSING_URL,
}
FLAGS = ["--max-new-tokens", "6", "--max-bytes", str(4 * 2**20), *NET_FLAGS]


pytestmark = pytest.mark.usefixtures("local_ray")  # one embedded Ray for the module (tests/conftest.py)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("models") / "video", variant="cogvlm2-video"))


@pytest.fixture(scope="module")
def url_list(tmp_path_factory, http_server) -> str:
    video_bodies()  # encoded now, not inside the 2 s download budget of the first request
    paths = list(URLS)
    table = pa.table(
        {
            "url": [http_server.url(p) if p else None for p in paths],
            "clip_id": [f"c{i}" for i in range(len(paths))],
            "caption": [f"alt text {i}" for i in range(len(paths))],
        }
    )
    path = tmp_path_factory.mktemp("input") / "videos.parquet"
    pq.write_table(table, path)
    return str(path)


def run_label(out, model, inputs, *flags) -> list[dict]:
    assert label.main(["--input", inputs, "--output", str(out), "--model", model, *flags]) == 0
    files = sorted(glob.glob(os.path.join(out, SHARDS_DIR, LABELS_DIR, "*.parquet")))
    rows = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive").to_pylist()
    return sorted(rows, key=lambda r: r[schema.KEY])


@pytest.fixture(scope="module")
def url_run(tmp_path_factory, model, url_list):
    out = tmp_path_factory.mktemp("url-run")
    return out, run_label(out, model, url_list, *FLAGS, "--batch-size", "4")


def test_video_urls_each_row_once_with_video_columns(url_run):
    out, rows = url_run
    paths = list(URLS)
    assert [r[schema.KEY] for r in rows] == [make_key(0, i) for i in range(len(paths))]
    for row, path in zip(rows, paths):
        assert row["clip_id"] == f"c{paths.index(path)}" and row[schema.INPUT_PREFIX + "caption"].startswith("alt text")
        assert row[schema.REASON] == URLS[path], (path, row[schema.ERROR_MESSAGE])
        if URLS[path] is None:
            assert row[schema.STATUS] == schema.Status.SUCCESS and isinstance(row[schema.LABEL_CAPTION], str)
            assert row[schema.PROMPT] == "Question: Please describe this video in detail. Answer:"  # spec: caption tool
            assert row[schema.FRAME_TIMESTAMPS] and row[schema.DURATION] > 0 and row[schema.FPS] > 0
            assert row[schema.WIDTH] == 64 and row[schema.HEIGHT] == 48 and row[schema.MODEL_SECONDS] >= 0
            assert row[schema.PREPROCESS_SECONDS] >= 0 and json.loads(row[schema.GENERATION])["max_new_tokens"] == 6
        else:
            assert row[schema.STATUS] == schema.REASON_STATUS[URLS[path]] and row[schema.TEXT] is None
    by_path = dict(zip(paths, rows))
    assert by_path["/video/clip.mp4"][schema.FRAME_TIMESTAMPS] == pytest.approx([0.0, 1.0, 2.0, 2.9])
    assert by_path["/video/long.mp4"][schema.FRAME_TIMESTAMPS] == pytest.approx([float(s) for s in range(24)])
    assert by_path["/video/clip.mp4"][schema.DURATION] == pytest.approx(3.0)


def test_previews_hold_strips_and_the_report_renders(url_run, tmp_path):
    out, rows = url_run
    previews = pa.concat_tables([pq.read_table(f) for f in glob.glob(str(out / SHARDS_DIR / PREVIEWS_DIR / "*.parquet"))])
    by_key = {r[schema.KEY]: r for r in rows}
    assert previews.num_rows >= 1
    for preview in previews.to_pylist():
        row = by_key[preview[schema.KEY]]
        card = strip_card(preview[schema.THUMBNAIL], row[schema.FRAME_TIMESTAMPS], row[schema.LABEL_CAPTION])
        assert card.width > card.height > 96
    assert report.main(["--labels", str(out), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "index.html").exists()


def test_batch_size_does_not_change_any_output(url_run, tmp_path, model, url_list):
    _, four = url_run
    one = run_label(tmp_path / "bs1", model, url_list, *FLAGS, "--batch-size", "1")
    fields = (schema.KEY, schema.STATUS, schema.REASON, schema.TEXT, schema.FRAME_TIMESTAMPS)
    assert [tuple(r[f] for f in fields) for r in one] == [tuple(r[f] for f in fields) for r in four]


def write_video2dataset_tar(path, samples: list[tuple[str, bytes, dict]]) -> None:
    """video2dataset's webdataset layout: KEY.mp4, KEY.txt (caption), KEY.json (the row)."""
    with tarfile.open(path, "w") as tar:
        for key, data, meta in samples:
            members = [("mp4", data), ("txt", meta.get("caption", "").encode()), ("json", json.dumps({"key": key, **meta}).encode())]
            for ext, body in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))


def test_video2dataset_tars_with_vqa(tmp_path, model):
    shards = tmp_path / "v2d"
    shards.mkdir()
    clip = videos.encode(seconds=2.0)
    write_video2dataset_tar(
        shards / "00000.tar",
        [
            ("000000000", clip, {"url": "http://example.invalid/a.mp4", "caption": "a", "question": "What moves?", "clip_id": 7}),
            ("000000001", videos.truncated(clip, 0.05), {"url": "http://example.invalid/b.mp4", "caption": "b", "question": "Why?", "clip_id": 8}),
            ("000000002", videos.audio_only(), {"caption": "c", "question": "Who?", "clip_id": 9}),
        ],
    )
    rows = run_label(tmp_path / "out", model, str(shards), "--task", "vqa", "--prompt-col", "question", "--max-new-tokens", "4")
    assert [r[schema.KEY] for r in rows] == ["000000000", "000000001", "000000002"]
    assert [r["clip_id"] for r in rows] == [7, 8, 9]
    assert rows[0][schema.STATUS] == schema.Status.SUCCESS and rows[0][schema.PROMPT] == "Question: What moves? Answer:"
    assert rows[1][schema.STATUS] == schema.Status.FAILED_TO_DECODE
    assert rows[2][schema.REASON] == R.NO_VIDEO_STREAM


def test_folder_of_videos_with_base_template_and_duration_limits(tmp_path, model):
    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.mp4").write_bytes(videos.encode(seconds=3.0))
    (folder / "b.webm").write_bytes(videos.encode(seconds=2.0, container="webm", codec="libvpx-vp9"))
    (folder / "sub" / "long.mp4").write_bytes(videos.encode(seconds=30.0, fps=2))
    (folder / "sound.mp4").write_bytes(videos.audio_only())
    (folder / "empty.mp4").write_bytes(b"")
    flags = ["--template", "base", "--prompt", "A video of", "--min-duration", "2.5", "--max-duration", "20", "--max-new-tokens", "4"]
    rows = {r[schema.KEY]: r for r in run_label(tmp_path / "out", model, str(folder), *flags)}
    assert sorted(rows) == ["a.mp4", "b.webm", "empty.mp4", "sound.mp4", "sub/long.mp4"]
    assert rows["a.mp4"][schema.STATUS] == schema.Status.SUCCESS and rows["a.mp4"][schema.PROMPT] == "A video of"
    assert len(rows["a.mp4"][schema.FRAME_TIMESTAMPS]) == 24  # spec: base sampling
    assert rows["b.webm"][schema.REASON] == R.TOO_SHORT
    assert rows["sub/long.mp4"][schema.REASON] == R.TOO_LONG
    assert rows["sound.mp4"][schema.REASON] == R.NO_VIDEO_STREAM
    assert rows["empty.mp4"][schema.REASON] == R.EMPTY_BODY


def test_video_job_mistakes_fail_fast(tmp_path, model, url_list, capsys):
    for flags, needle in [(["--task", "ground", "--phrases", "a"], "caption or vqa"), (["--task", "vqa"], "--prompt")]:
        assert label.main(["--input", url_list, "--output", str(tmp_path / "out"), "--model", model, *flags]) == 2
        assert needle in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out" / SHARDS_DIR)
