"""schema.py lists every reason with its status; filters report problems that map onto them."""

import ast
from pathlib import Path

import pytest

from filters.findings import Finding, Problem
from pipeline import schema
from pipeline.schema import PROBLEM_REASON, REASON_STATUS, Reason, Rejection

ROOT = Path(__file__).resolve().parents[2]


def test_every_reason_has_a_status_and_every_problem_a_reason():
    reasons = {v for k, v in vars(Reason).items() if not k.startswith("_")}
    assert set(REASON_STATUS) == reasons
    assert set(PROBLEM_REASON) == set(Problem)
    assert set(PROBLEM_REASON.values()) <= reasons


@pytest.mark.parametrize("problem", list(Problem), ids=[p.name for p in Problem])
def test_a_finding_becomes_the_rejection_of_its_reason(problem):
    rejection = Rejection.of(Finding(problem, "measured facts"))
    assert (rejection.reason, rejection.message) == (PROBLEM_REASON[problem], "measured facts")
    assert rejection.status == REASON_STATUS[rejection.reason]
    assert Rejection.of(None) is None


def test_new_reasons():
    assert (Reason.INTERNAL_ERROR, REASON_STATUS[Reason.INTERNAL_ERROR]) == ("internal_error", schema.Status.INTERNAL_ERROR)
    assert (Reason.UNSUPPORTED_FORMAT, REASON_STATUS[Reason.UNSUPPORTED_FORMAT]) == ("unsupported_format", schema.Status.FILTERED)


@pytest.mark.parametrize("path", sorted((ROOT / "filters").glob("*.py")), ids=lambda p: p.name)
def test_filters_import_nothing_of_the_pipeline(path):
    """filters/ is the lowest layer: pure functions the pipeline calls, never the other way round."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"pipeline", "jobs", "model"}, imported
