"""vLLM 0.32–0.33: V1 engine only, split-group and elastic-EP paths in ``init_distributed_environment``.

What the core relies on here, read from these releases' ``vllm/distributed/parallel_state.py``:
- ``init_distributed_environment(world_size, rank, distributed_init_method, local_rank, backend, timeout)``
  calls ``torch.distributed.init_process_group`` only when no WORLD exists, then
  ``init_world_group(range(get_world_size()))`` and ``_node_count`` (a collective) on the world's CPU group;
  with a foreign WORLD both would run over the host's ranks — the seed case's hang.
- ``destroy_distributed_environment`` ends with ``destroy_process_group()`` on the default group, reached from
  ``cleanup_dist_env_and_memory`` (copied into ``v1/engine/core.py``, run by an in-process ``EngineCore``'s
  shutdown) and from the executors' shutdown (copies in ``v1/executor/multiproc_executor.py``).
- The workers bind ``init_worker_distributed_environment`` from ``v1/worker/gpu_worker.py``; the CPU worker
  copies it from there.

Nothing differs from the core's roles: this module only names the family.
"""
