"""The Ray Data extension points we build on, in one place, checked against the Ray we run on.

We subclass Ray Data's public Datasource and Datasink and build ReadTasks with BlockMetadata,
whose constructor has changed between releases. Everything version-sensitive is here, so an
unsupported Ray fails at import with one clear message instead of deep inside a worker.
"""

from __future__ import annotations

import ray

# The oldest Ray the test suite has passed on (pyproject.toml says the same).
MIN_RAY = (2, 60)


class UnsupportedRay(ImportError):
    pass


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if _version(ray.__version__) < MIN_RAY:
    raise UnsupportedRay(
        f"cogscale needs ray[data]>={'.'.join(map(str, MIN_RAY))}, found ray {ray.__version__}: "
        f"pip install 'ray[data]>={'.'.join(map(str, MIN_RAY))}'"
    )

try:
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasink, Datasource, ReadTask
except ImportError as e:  # pragma: no cover - depends on the installed Ray
    raise UnsupportedRay(f"ray {ray.__version__}: Ray Data's Datasource/Datasink API is missing ({e})") from e


def read_task(read, input_files: tuple[str, ...], size_bytes: int | None = None) -> ReadTask:
    """A ReadTask whose rows count is unknown until read."""
    try:
        meta = BlockMetadata(num_rows=None, size_bytes=size_bytes, exec_stats=None, input_files=list(input_files))
    except TypeError as e:  # pragma: no cover - depends on the installed Ray
        raise UnsupportedRay(f"ray {ray.__version__}: BlockMetadata does not take the fields we set ({e})") from e
    return ReadTask(read, meta)


def fixed_cluster_resources() -> bool:
    """On a Ray this process started (one node, no autoscaler behind it), let Ray Data take the
    node's resources as they are instead of asking a cluster autoscaler for more.

    Ray Data's default (rate-based) cluster autoscaler reaches the autoscaler through a
    coordinator actor, `_AutoscalingCoordinatorActor`: one more Ray worker process (~120 MiB PSS,
    benchmarks/RESULTS.md, memory) that on an embedded Ray has nothing to scale. Ray offers no
    setting for this, so the executor's factory is replaced; on a Ray whose internals differ
    nothing is changed (returns False) and Ray Data behaves as shipped.
    """
    try:
        from ray.data._internal.cluster_autoscaler import ClusterAutoscaler
        from ray.data._internal.execution import streaming_executor
        from ray.data._internal.execution.interfaces.execution_options import ExecutionResources
    except ImportError:  # pragma: no cover - depends on the installed Ray
        return False
    if not callable(getattr(streaming_executor, "create_cluster_autoscaler", None)):  # pragma: no cover
        return False

    class FixedCluster(ClusterAutoscaler):
        def __init__(self):
            self._total = None

        def try_trigger_scaling(self):
            pass

        def on_executor_shutdown(self):
            pass

        def get_total_resources(self):
            if self._total is None:  # the node never changes: one RPC per dataset
                self._total = ExecutionResources.from_resource_dict(ray.cluster_resources())
            return self._total

    streaming_executor.create_cluster_autoscaler = lambda *args, **kwargs: FixedCluster()
    return True


__all__ = ["Datasink", "Datasource", "ReadTask", "UnsupportedRay", "read_task", "fixed_cluster_resources", "MIN_RAY"]
