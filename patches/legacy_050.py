"""vLLM 0.5.0: module-level groups, no ``GroupCoordinator``, and the default group read on every step.

What differs from the core, read from 0.5.0's ``vllm/distributed`` and ``vllm/worker``:
- Its groups are module globals (``_CPU_WORLD_GROUP``, ``_TP_DEVICE_GROUP``, ...), set only inside
  ``init_distributed_environment``'s ``if not torch.distributed.is_initialized()`` branch. In a private world
  vLLM sees no WORLD, so that branch runs and the globals are vLLM's own.
- Every inference step calls ``broadcast_tensor_dict(data, src=0)`` with no group: it reads the *default* group
  (``get_world_size(group=None)``, ``group.WORLD``, ``get_rank()``), and ``get_tensor_model_parallel_src_rank``
  uses the global rank. So the private world must also be current around those steps: ``broadcast_tensor_dict``
  and the workers' ``execute_model`` are ``scope`` targets in compat_matrix.yaml.
- There is no ``destroy_distributed_environment`` and no cleanup function: ``destroy_model_parallel`` ends the
  model-parallel groups only. So here the teardown role also ends the private world itself (what later
  releases' ``destroy_distributed_environment`` does); a later engine makes a new one, and because 0.5.0 sets its
  group globals inside the ``not is_initialized()`` branch, they are set again there.
"""
from vllm_pg_shim import roles, world


def teardown(wrapped, instance, args, kwargs, family_module=None):
    live = world.current_private()
    try:
        return roles.teardown(wrapped, instance, args, kwargs)
    finally:
        if live is not None:
            world.discard(live)


ROLE_FUNCTIONS = {"teardown": teardown}
