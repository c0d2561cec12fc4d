"""vLLM 0.6.4 – 0.10.x: V0 and V1 side by side, and ``cleanup_dist_env_and_memory``.

Boundary (0.6.4): ``cleanup_dist_env_and_memory`` appears and (to 0.10.0) calls
``torch.distributed.destroy_process_group()`` itself after ``destroy_distributed_environment()``; the V1
``gpu_worker`` appears with its own ``init_worker_distributed_environment``; ``VLLM_ENABLE_V1_MULTIPROCESSING``
appears (default 0 in 0.6.4, 1 from 0.6.5). Within the family: the world-size check goes in 0.7.3; data-parallel
rank/world-size offsets and ``VLLM_DP_*`` in 0.8.0 (applied before the WORLD check, so the private world is sized
DP×TP×PP); ``cleanup`` stops calling ``destroy_process_group`` directly in 0.10.1; ``timeout`` and the
decode-context-parallel argument in 0.10.2. Teardown wrappers cover all of it.

Nothing differs from the core's roles.
"""

# The CPU worker names its shared-memory segments after this variable (set from the init method) and the
# group's ranks, as in the v1 family (read from the releases' cpu_worker.py; no CPU engine of this family ran here).
HOST_WIDE_NAME_VARIABLES = ("VLLM_DIST_IDENT",)
