"""Pure pieces of exact deduplication; which hashes were seen lives in the pipeline."""

from __future__ import annotations

import hashlib

from filters.findings import Finding, Problem


def content_sha256(data: bytes) -> str:
    """Hex SHA-256 of the bytes as downloaded: equal files hash equal, whatever their URL."""
    return hashlib.sha256(data).hexdigest()


def duplicate_finding(sha: str, first_key: str) -> Finding:
    return Finding(Problem.DUPLICATE, f"same bytes as row {first_key} (sha256 {sha})")
