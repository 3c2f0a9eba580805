"""Job-level mistakes fail before Ray starts: exit code 2 and one line that says what to fix."""

from __future__ import annotations

import pytest
import ray

from jobs import build_corpus, label

CORPUS = ["--input", "in.csv", "--output", "out"]
LABEL = ["--input", "in.csv", "--output", "out", "--model", "m"]

# job, flags, words the one line must contain
CASES = [
    (label, ["--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (label, ["--max-new-tokens", "0"], "--max-new-tokens: must be at least 1, got 0"),
    (label, ["--num-beams", "0"], "--num-beams: must be at least 1, got 0"),
    (label, ["--temperature", "-1"], "--temperature: must be at least 0, got -1"),
    (label, ["--top-p", "2"], "--top-p: must be at most 1, got 2"),
    (label, ["--top-p", "0"], "--top-p: must be above 0, got 0"),
    (label, ["--num-cpus", "0"], "--num-cpus: must be at least 1, got 0"),
    (label, ["--actors", "0"], "--actors: must be at least 1, got 0"),
    (label, ["--previews-per-shard", "-1"], "--previews-per-shard: must be at least 0, got -1"),
    (label, ["--batch-size", "eight"], "--batch-size: invalid int value: 'eight'"),
    (label, ["--retries", "-1"], "--retries: must be at least 0, got -1"),
    (label, ["--other-formats", "bmp"], "--other-formats: invalid choice: 'bmp'"),
    (label, ["--temperature", "nan"], "--temperature: must be a finite number, got nan"),
    (build_corpus, ["--max-aspect-ratio", "nan"], "--max-aspect-ratio: must be a finite number, got nan"),
    (build_corpus, ["--timeout", "0"], "--timeout: must be above 0, got 0"),
    (build_corpus, ["--num-cpus", "0"], "--num-cpus: must be at least 1, got 0"),
    (build_corpus, ["--max-redirects", "-2"], "--max-redirects: must be at least 0, got -2"),
    (build_corpus, ["--min-image-size", "-5"], "--min-image-size: must be at least 0, got -5"),
    (build_corpus, ["--min-caption-words", "-1"], "--min-caption-words: must be at least 0, got -1"),
]


@pytest.mark.parametrize("job, flags, words", CASES, ids=[f"{c[0].__name__.split('.')[-1]}{' '.join(c[1])}" for c in CASES])
def test_bad_flags_exit_2_with_one_line(job, flags, words, capsys):
    base = LABEL if job is label else CORPUS
    with pytest.raises(SystemExit) as exit_info:
        job.main(base + flags)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err
    assert not ray.is_initialized()


def test_a_missing_required_flag_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        label.main(["--input", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--output" in err and "--model" in err


def test_beam_search_with_sampling_is_refused_before_ray(capsys):
    assert label.main(LABEL + ["--num-beams", "2", "--temperature", "0.7"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "beam search does not sample" in err
    assert not ray.is_initialized()
