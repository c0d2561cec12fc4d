"""Patch families, one module each, named by ``module:`` in compat_matrix.yaml.

A family module says only what differs from the core (``vllm_pg_shim.roles``): its docstring records what
changed in vLLM at the family's boundary; it may define ``shares_host_world(call, family_module)`` or
``ROLE_FUNCTIONS`` to override a core role, and the data the core's roles read (``HOST_WIDE_NAME_VARIABLES``,
``LAUNCHER_WORLD_SIZE_SPANS_DATA_PARALLEL``, ``REFUSED_IN_PRIVATE_WORLD``: see ``vllm_pg_shim.roles``). The
targets themselves are data, in compat_matrix.yaml.
"""
