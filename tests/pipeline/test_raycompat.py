import importlib

import pytest
import ray

import pipeline.raycompat as raycompat


def test_an_unsupported_ray_fails_at_import_with_what_to_install(monkeypatch):
    monkeypatch.setattr(ray, "__version__", "2.50.0")
    with pytest.raises(ImportError, match=r"needs ray\[data\]>=2\.60, found ray 2\.50\.0"):
        importlib.reload(raycompat)
    monkeypatch.undo()
    importlib.reload(raycompat)


def test_read_tasks_build_on_this_ray():
    task = raycompat.read_task(lambda: iter([]), ("a.parquet",))
    assert list(task()) == []
