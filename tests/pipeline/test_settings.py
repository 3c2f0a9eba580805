"""OUTPUT/settings.json: a re-run never silently returns rows made with other settings."""

from __future__ import annotations

import dataclasses
import json
import os

import pyarrow.fs as pafs
import pytest

from model.api import GenerationSettings, VisualExpertModel
from model.tiny import write_tiny_checkpoint
from pipeline import settings as settings_module
from pipeline.labeling import TaskSpec
from pipeline.options import CorpusOptions
from pipeline.reader import InputError
from pipeline.settings import (
    NOT_ROW_SHAPING,
    SETTINGS_FILE,
    checkpoint_name,
    corpus_settings,
    label_settings,
    prepare_output,
)


def test_every_corpus_option_is_recorded_or_declared_free():
    names = {f.name for f in dataclasses.fields(CorpusOptions)}
    assert set(NOT_ROW_SHAPING) <= names
    assert set(corpus_settings(CorpusOptions())) == names - set(NOT_ROW_SHAPING)


def test_first_run_records_settings_and_an_identical_rerun_goes_on(tmp_path):
    out = tmp_path / "out"
    wanted = corpus_settings(CorpusOptions(min_image_size=64))
    prepare_output(str(out), "build_corpus", wanted)
    recorded = json.loads((out / SETTINGS_FILE).read_text())
    assert recorded["job"] == "build_corpus" and recorded["min_image_size"] == 64
    assert sorted(os.listdir(out)) == [SETTINGS_FILE]  # no temporary file left behind
    (out / "shards").mkdir()
    prepare_output(str(out), "build_corpus", wanted)  # same settings: resumes
    # What only changes speed or layout may differ between runs.
    prepare_output(str(out), "build_corpus", corpus_settings(CorpusOptions(min_image_size=64, timeout=99, shard_size=7)))
    assert (out / "shards").is_dir()


# a change of settings, and the words the refusal must name
CHANGES = [
    ({"min_image_size": 32}, "min_image_size: 64 -> 32"),
    ({"other_formats": "reject"}, 'other_formats: "png" -> "reject"'),
    ({"dedup": True}, "dedup: false -> true"),
    ({"decode_check": "none"}, 'decode_check: "full" -> "none"'),
    ({"allow_networks": ("10.0.0.0/8",)}, 'allow_networks: [] -> ["10.0.0.0/8"]'),
    ({"max_aspect_ratio": 3.0}, "max_aspect_ratio: 6.0 -> 3.0"),
]


@pytest.mark.parametrize("change, words", CHANGES)
def test_other_settings_are_refused_naming_the_differences(tmp_path, change, words):
    out = str(tmp_path / "out")
    prepare_output(out, "build_corpus", corpus_settings(CorpusOptions(min_image_size=64)))
    (tmp_path / "out" / "shards").mkdir()
    changed = dataclasses.replace(CorpusOptions(min_image_size=64), **change)
    with pytest.raises(InputError) as refused:
        prepare_output(out, "build_corpus", corpus_settings(changed))
    message = str(refused.value)
    assert words in message and "--overwrite" in message and "\n" not in message


def test_an_output_without_rows_takes_new_settings(tmp_path):
    out = tmp_path / "out"
    prepare_output(str(out), "build_corpus", {"min_image_size": 64})  # then the run stopped before Ray
    prepare_output(str(out), "build_corpus", {"min_image_size": 8})
    assert json.loads((out / SETTINGS_FILE).read_text())["min_image_size"] == 8


def test_another_job_into_the_same_output_is_refused(tmp_path):
    out = str(tmp_path / "out")
    prepare_output(out, "build_corpus", corpus_settings(CorpusOptions()))
    (tmp_path / "out" / "_run").write_text("a run")
    with pytest.raises(InputError, match='job: "build_corpus" -> "label"'):
        prepare_output(out, "label", corpus_settings(CorpusOptions()))


def test_overwrite_starts_the_output_afresh(tmp_path):
    out = tmp_path / "out"
    prepare_output(str(out), "build_corpus", corpus_settings(CorpusOptions(min_image_size=64)))
    (out / "shards" / "corpus").mkdir(parents=True)
    (out / "shards" / "corpus" / "part-1.parquet").write_bytes(b"old rows")
    (out / "stats.json").write_text("{}")
    prepare_output(str(out), "build_corpus", corpus_settings(CorpusOptions(min_image_size=8)), overwrite=True)
    assert sorted(os.listdir(out)) == [SETTINGS_FILE]
    assert json.loads((out / SETTINGS_FILE).read_text())["min_image_size"] == 8


def test_results_without_settings_are_refused(tmp_path):
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    (out / "_run").write_text("an older run")
    with pytest.raises(InputError, match="no settings.json"):
        prepare_output(str(out), "build_corpus", corpus_settings(CorpusOptions()))
    prepare_output(str(out), "build_corpus", corpus_settings(CorpusOptions()), overwrite=True)
    assert sorted(os.listdir(out)) == [SETTINGS_FILE]


def test_an_empty_or_foreign_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_output(str(empty), "build_corpus", corpus_settings(CorpusOptions()))
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    prepare_output(str(foreign), "build_corpus", corpus_settings(CorpusOptions()))  # recorded beside it
    (tmp_path / "home2").mkdir()
    (tmp_path / "home2" / "thesis.tex").write_text("years of work")
    with pytest.raises(InputError, match="not an output of ours"):
        prepare_output(str(tmp_path / "home2"), "build_corpus", corpus_settings(CorpusOptions()), overwrite=True)
    assert (tmp_path / "home2" / "thesis.tex").exists()


def test_output_that_is_a_file_or_a_broken_settings_file(tmp_path):
    a_file = tmp_path / "out.txt"
    a_file.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        prepare_output(str(a_file), "build_corpus", {})
    out = tmp_path / "out"
    out.mkdir()
    (out / SETTINGS_FILE).write_text("")  # a 0-byte file left by a full disk
    (out / "shards").mkdir()
    with pytest.raises(InputError, match="not valid JSON"):
        prepare_output(str(out), "build_corpus", {})
    prepare_output(str(out), "build_corpus", {}, overwrite=True)


def test_relative_paths_and_file_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prepare_output("rel/out", "build_corpus", {"a": 1})
    (tmp_path / "rel" / "out" / "_run").write_text("a run")
    prepare_output(f"file://{tmp_path}/rel/out", "build_corpus", {"a": 1})  # the same output
    with pytest.raises(InputError, match="a: 1 -> 2"):
        prepare_output(f"file://{tmp_path}/rel/out", "build_corpus", {"a": 2})


def test_any_pyarrow_filesystem(monkeypatch):
    # pyarrow's in-memory filesystem stands in for an object store: only pyarrow.fs calls are used.
    fs = pafs._MockFileSystem()
    monkeypatch.setattr(settings_module, "output_filesystem", lambda output: (fs, "bucket/out"))
    prepare_output("mem://bucket/out", "label", {"task": "caption"})
    fs.create_dir("bucket/out/shards")
    assert json.loads(fs.open_input_stream("bucket/out/settings.json").read())["task"] == "caption"
    with pytest.raises(InputError, match='task: "caption" -> "vqa"'):
        prepare_output("mem://bucket/out", "label", {"task": "vqa"})
    prepare_output("mem://bucket/out", "label", {"task": "vqa"}, overwrite=True)
    assert [i.path for i in fs.get_file_info(pafs.FileSelector("bucket/out"))] == ["bucket/out/settings.json"]  # shards/ gone


def test_s3_output_on_a_loopback_s3_server(tmp_path, monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="corpus")
        uri = f"s3://corpus/run1?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
        prepare_output(uri, "build_corpus", {"min_image_size": 64})
        boto3.client("s3", endpoint_url=endpoint).put_object(Bucket="corpus", Key="run1/_run", Body=b"a run")
        prepare_output(uri, "build_corpus", {"min_image_size": 64})
        with pytest.raises(InputError, match="min_image_size: 64 -> 8"):
            prepare_output(uri, "build_corpus", {"min_image_size": 8})
        body = boto3.client("s3", endpoint_url=endpoint).get_object(Bucket="corpus", Key="run1/settings.json")["Body"].read()
        assert json.loads(body)["min_image_size"] == 64
    finally:
        server.stop()


def test_label_settings_name_the_checkpoint_as_the_model_column_does(tmp_path):
    model_dir = write_tiny_checkpoint(tmp_path / "tiny", "cogvlm")
    spec = TaskSpec("ground", phrases=("cat", "dog"))
    recorded = label_settings(CorpusOptions(), spec, "chat", str(model_dir), None, GenerationSettings(max_new_tokens=6))
    assert recorded["model"] == checkpoint_name(str(model_dir)) == VisualExpertModel.load(model_dir, device="cpu").describe()
    assert (recorded["task"], recorded["phrases"], recorded["template"]) == ("ground", ["cat", "dog"], "chat")
    assert recorded["generation"]["max_new_tokens"] == 6
    out = str(tmp_path / "out")
    prepare_output(out, "label", recorded)
    (tmp_path / "out" / "_run").write_text("a run")
    beams = label_settings(CorpusOptions(), spec, "chat", str(model_dir), None, GenerationSettings(max_new_tokens=6, num_beams=3))
    with pytest.raises(InputError, match="generation.num_beams: 1 -> 3"):
        prepare_output(out, "label", beams)
