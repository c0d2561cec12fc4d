"""vLLM 0.5.0.post1 – 0.6.3.post1: ``GroupCoordinator`` and a world group, V0 workers only.

Boundary (0.5.0.post1): ``GroupCoordinator``, ``_WORLD`` and ``destroy_distributed_environment`` appear, and the
step path broadcasts over ``get_tp_group()`` instead of the default group, so only initialisation and teardown
need the private world. ``init_world_group`` exists from 0.5.1 (0.5.0.post1 builds the world group inline).
Within the family: ``initialize_model_parallel`` asserts ``world_size == tp * pp`` (the host's WORLD size, stock:
the "world_size (N) is not equal to" error); general plugins appear in 0.5.5; the default start method of vLLM's
workers is fork from 0.5.1. The V0 worker binds ``init_distributed_environment`` and
``ensure_model_parallel_initialized`` with ``from vllm.distributed import ...``.

Nothing differs from the core's roles.
"""
