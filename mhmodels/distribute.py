"""tf.distribute strategies for training and search: the one place they are made.

  default       no distribution (one device)
  mirrored      MirroredStrategy over the local GPUs, or over `num_cpu_devices` logical CPU
                devices (how tests exercise distribution on a CPU-only machine)
  multi_worker  MultiWorkerMirroredStrategy, cluster from $TF_CONFIG
  tpu           TPUStrategy via TPUClusterResolver(tpu=...) (the production target; never
                connected to in tests: connecting to a missing TPU hangs)
"""
from __future__ import annotations

import os

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def configure_cpu_devices(num_devices: int | None) -> None:
    """Split the CPU into `num_devices` logical devices; must run before TF initialises."""
    if not num_devices or num_devices <= 1:
        return
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current and len(current) == num_devices:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
    except RuntimeError as err:
        have = len(tf.config.list_logical_devices("CPU"))
        if have < num_devices:
            raise RuntimeError(
                f"cannot split the CPU into {num_devices} logical devices: TensorFlow was "
                f"initialised already with {have}; set it before anything touches TensorFlow"
            ) from err


def make_strategy(name: str = "default", tpu: str | None = None, *,
                  num_cpu_devices: int | None = None):
    """The tf.distribute strategy called `name` (see the module docstring)."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        configure_cpu_devices(num_cpu_devices)
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices[:num_cpu_devices or None])
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--strategy=multi_worker needs $TF_CONFIG describing the cluster")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if not tpu:
        raise ValueError("--strategy=tpu needs --tpu (the TPU name or grpc:// address; "
                         "'local' for a TPU VM)")
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu="" if tpu == "local" else tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy) -> bool:
    """Whether this process writes checkpoints, summaries and outputs (multi-worker: the
    chief, or worker 0 when the cluster has no chief; every other strategy: True)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return True
    try:
        jobs = resolver.cluster_spec().jobs
    except Exception:  # noqa: BLE001 - no cluster spec: a single process
        return True
    task_type, task_id = getattr(resolver, "task_type", None), getattr(resolver, "task_id", 0)
    if not jobs or task_type in (None, "chief"):
        return True
    return task_type == "worker" and not task_id and "chief" not in jobs
