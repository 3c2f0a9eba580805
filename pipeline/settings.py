"""The settings that shape an output's rows, recorded in OUTPUT/settings.json.

A re-run into the same output resumes it, keeping the rows already written. That is only right
when those rows were made the way the new run would make them: a re-run whose settings differ
refuses before Ray starts (exit 2, naming each difference) unless `--overwrite` asks to delete
the output's results and start afresh (img2dataset's `--incremental_mode overwrite`).

Recorded: the job, and what decides each row's outcome and columns: input columns, which URLs
and bodies are admitted, every filter, the stored image form, and for jobs.label the task,
prompts, template, checkpoint, tokenizer and generation settings. Not recorded, so free to
change between runs: how fast or in what pieces the work is done (timeouts and retries,
workers, batch and shard sizes, CPUs, actors, previews).

File I/O goes through pyarrow.fs, so an output may be a local path or an object-store URI;
`output_filesystem` is the one place that turns an --output into a filesystem.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import posixpath
import uuid
from dataclasses import asdict, fields
from pathlib import Path

import pyarrow.fs as pafs

from pipeline import storage
from pipeline.corpus import PLAN_FILE
from pipeline.options import CorpusOptions
from pipeline.reader import InputError
from pipeline.writer import RUN_FILE, SHARDS_DIR, STATS_FILE

SETTINGS_FILE = "settings.json"
FORMAT = 1  # of settings.json itself

# CorpusOptions fields that change no row's outcome or columns, only speed and file layout.
# Every other field is recorded; test_settings checks that each field is in exactly one list.
NOT_ROW_SHAPING = ("timeout", "retries", "download_workers", "requests_per_worker", "shard_size")
# Entries that mark a directory as an output of ours (a run claimed it, or recorded settings).
OUR_ENTRIES = (SETTINGS_FILE, RUN_FILE, PLAN_FILE, storage.TMP_DIR, SHARDS_DIR, STATS_FILE)


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete what --output holds from earlier runs and start it afresh (needed to change settings that shape the rows; otherwise a re-run resumes)",
    )


def corpus_settings(options: CorpusOptions) -> dict:
    recorded = {f.name: getattr(options, f.name) for f in fields(options) if f.name not in NOT_ROW_SHAPING}
    recorded["allow_networks"] = sorted(recorded["allow_networks"])
    return recorded


def checkpoint_name(model_dir: str) -> str:
    """Directory name @ a hash of config.json, as the `model` column spells it (VisualExpertModel.describe)."""
    path = Path(model_dir)
    return f"{path.resolve().name}@{hashlib.sha256((path / 'config.json').read_bytes()).hexdigest()[:8]}"


def label_settings(options: CorpusOptions, spec, template: str, model_dir: str, tokenizer_dir: str | None, generation) -> dict:
    """spec: a labeling.TaskSpec; template: the one in use (spec's or the checkpoint's); generation: GenerationSettings."""
    return {
        "task": spec.task,
        "prompt": spec.prompt,
        "prompt_col": spec.prompt_col,
        "phrases": list(spec.phrases),
        "phrases_col": spec.phrases_col,
        "template": template,
        "model": checkpoint_name(model_dir),
        "tokenizer": Path(tokenizer_dir).resolve().name if tokenizer_dir else None,
        "generation": asdict(generation),
        **corpus_settings(options),
    }


def output_filesystem(output: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for an --output: a local path (relative ones too) or a URI."""
    return storage.resolve(output)


def prepare_output(output: str, job: str, settings: dict, overwrite: bool = False) -> None:
    """Check `settings` against those recorded in `output` and record them; before Ray starts.

    Raises InputError (exit 2) when the output holds rows made with other settings, or results
    that recorded none, unless `overwrite`, which deletes the output's contents first. An output
    holding only its settings (a run that stopped before it started) takes the new ones.
    """
    wanted = json.loads(json.dumps({"format": FORMAT, "job": job, **settings}))  # as read back
    try:
        fs, root = output_filesystem(output)
        names = _entries(fs, root)
        has_results = bool(names & (set(OUR_ENTRIES) - {SETTINGS_FILE, storage.TMP_DIR}))  # nor do settings or temporary files alone
        if overwrite and names:
            if not names & set(OUR_ENTRIES):
                raise InputError(f"--output {output} holds files that are not an output of ours; --overwrite deletes only our outputs")
            fs.delete_dir_contents(root)
        elif has_results and SETTINGS_FILE in names:
            recorded = _read_json(fs, posixpath.join(root, SETTINGS_FILE))
            changed = differences(recorded, wanted)
            if changed:
                raise InputError(
                    f"--output {output} holds rows made with other settings ({'; '.join(changed)}): "
                    "re-run with the same settings, choose another --output, or add --overwrite to start it afresh"
                )
            return
        elif has_results:
            raise InputError(
                f"--output {output} holds results but no {SETTINGS_FILE} (written before settings were recorded): "
                "choose another --output, or add --overwrite to start it afresh"
            )
        fs.create_dir(root, recursive=True)
        _write_json_atomically(fs, posixpath.join(root, SETTINGS_FILE), wanted)
    except OSError as e:  # unreachable store, no permission, a file where the directory should be
        raise InputError(f"--output {output}: {e}") from e


def differences(recorded: dict, wanted: dict) -> list[str]:
    """'name: recorded -> wanted' for each setting that differs (nested dicts by dotted name)."""
    out = []
    for name in sorted(set(recorded) | set(wanted)):
        old, new = recorded.get(name, "(not recorded)"), wanted.get(name, "(not recorded)")
        if isinstance(old, dict) and isinstance(new, dict):
            out += [f"{name}.{d}" for d in differences(old, new)]
        elif old != new:
            out.append(f"{name}: {json.dumps(old)} -> {json.dumps(new)}")
    return out


def _entries(fs: pafs.FileSystem, root: str) -> set[str]:
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return set()
    if info.type != pafs.FileType.Directory:
        raise InputError(f"--output {root} exists and is not a directory")
    return {posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(root))}


def _read_json(fs: pafs.FileSystem, path: str) -> dict:
    try:
        return json.loads(storage.read_bytes(fs, path))
    except ValueError as e:
        raise InputError(f"{path} is not valid JSON ({e}): fix or delete it, or add --overwrite to start afresh") from e


def _write_json_atomically(fs: pafs.FileSystem, path: str, value: dict) -> None:
    storage.write_atomic(fs, path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())
