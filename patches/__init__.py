"""Patch families, one module each, named by ``module:`` in compat_matrix.yaml.

A family module says only what differs from the core (``vllm_pg_shim.roles``): its docstring records what
changed in vLLM at the family's boundary; it may define ``shares_host_world(call)`` or ``ROLE_FUNCTIONS`` to
override a core role. The targets themselves are data, in compat_matrix.yaml.
"""
