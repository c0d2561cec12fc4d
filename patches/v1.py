"""vLLM 0.11.0 – 0.33.x: V1 only.

Boundary (0.11.0): the V0 worker (``vllm/worker/worker.py``) is gone; the V1 ``gpu_worker``'s
``init_worker_distributed_environment`` (copied into the CPU and XPU workers) is the workers' entry.
Within the family, none of which changes the core's roles:
- 0.12.0 inserts ``prefill_context_model_parallel_size`` (positional shift of later arguments; the wrappers
  pass arguments through untouched);
- 0.17.0 adds an elastic-EP branch that returns early from ``init_distributed_environment``;
- 0.22.0: an in-process ``EngineCore.shutdown`` runs ``cleanup_dist_env_and_memory`` (bound in
  ``v1/engine/core.py`` with ``from ... import``: rebound by the core), whose ``destroy_process_group()`` would
  end the host's WORLD without the teardown scope;
- 0.23.0 adds the opt-in split-group path (``VLLM_DISTRIBUTED_USE_SPLIT_GROUP``); 0.28.0 ``file://`` init
  methods (the seed case on 0.32 uses one); 0.32.0 an exit-time finalizer of the in-process client;
- 0.33.0 adds ``GroupCoordinator.cpu_timeout`` and copies of the teardown functions in the weight-cache daemon.
"""

# The CPU build names its shared-memory segments after this variable (its worker sets it from the init method,
# ``env://`` -> ``//``) and the group's ranks (``cpu_communicator.py``, ``_CPUSHMDistributed.make_group_name``).
HOST_WIDE_NAME_VARIABLES = ("VLLM_DIST_IDENT",)
# From 0.11.0 the external launcher's world size already spans data parallelism (``ParallelConfig.__post_init__``
# multiplies it; ``init_distributed_environment`` skips its DP offset for this backend). 0.10.2 passed TP×PP.
LAUNCHER_WORLD_SIZE_SPANS_DATA_PARALLEL = True
# External data parallelism: an external launcher's world smaller than the WORLD it finds is laid over that WORLD as
# DP blocks (``initialize_model_parallel`` reshapes all ranks to (-1, DP, PP, TP)), and the launcher executor's
# ``determine_available_memory`` takes the minimum across the world group. (0.8.5's V0 launcher executor does the
# same, read in its source; the v0_and_v1 family keeps private blocks: no engine of that family ran here.)
LAUNCHER_EXTERNAL_DATA_PARALLEL = True
# 0.23.0+: vLLM builds its groups with torch.distributed.split_group from a default group it binds to a device.
REFUSED_IN_PRIVATE_WORLD = {
    "VLLM_DISTRIBUTED_USE_SPLIT_GROUP": (
        "vLLM would build its groups with torch.distributed.split_group, which vllm-pg-shim does not carry into "
        "vLLM's private world. Unset it (vLLM's default builds them with new_group), or let vLLM own the WORLD."),
}
