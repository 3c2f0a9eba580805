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


def test_the_embedded_ray_runs_ray_data_without_a_cluster_autoscaler(monkeypatch):
    """connect() on no cluster: Ray Data takes the node's resources as they are, so no autoscaling
    coordinator actor (a ~120 MiB Ray worker) is started, and actor pools still run."""
    from ray.data._internal.execution import streaming_executor

    from pipeline import corpus

    monkeypatch.setattr(streaming_executor, "create_cluster_autoscaler", streaming_executor.create_cluster_autoscaler)  # undone after
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    corpus.connect(None, num_cpus=2)
    try:
        class AddOne:
            def __call__(self, batch):
                return {"id": batch["id"] + 1}

        ds = ray.data.range(40, override_num_blocks=4).map_batches(AddOne, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5)
        assert sorted(r["id"] for r in ds.take_all()) == list(range(1, 41))
        with pytest.raises(ValueError):
            ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
    finally:
        ray.shutdown()
