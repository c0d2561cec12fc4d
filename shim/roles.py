"""What each role of target does around the vLLM function it wraps (roles are named in compat_matrix.yaml)."""
from __future__ import annotations

import inspect
import logging

from . import world

log = logging.getLogger("vllm_pg_shim")


def bound_arguments(wrapped, args, kwargs) -> dict:
    """vLLM's call as a dict of its parameters, defaults included (signatures differ between releases)."""
    try:
        bound = inspect.signature(wrapped).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return dict(kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def shares_host_world(call: dict) -> bool:
    """vLLM asked to *be* the host's WORLD (``external_launcher`` on every rank, over ``env://``, same size
    and rank): that is vLLM's own supported way to share a world, so it is left alone."""
    import torch.distributed as dist

    host = world.host_default_group()
    return (
        call.get("distributed_init_method", "env://") == "env://"
        and call.get("world_size") in (host.size(), -1)
        and call.get("rank") in (host.rank(), -1)
        and dist.get_world_size() == host.size()
    )


def init(wrapped, instance, args, kwargs, family_module=None):
    live = world.current_private()
    if live is not None:  # vLLM initialising again while its private world lives (ensure/re-init)
        with world.scope(live):
            return wrapped(*args, **kwargs)
    state = world.host_world_state()
    if state != "foreign":
        result = wrapped(*args, **kwargs)
        if state == "none":
            world.note_vllm_owned_default()
        return result
    call = bound_arguments(wrapped, args, kwargs)
    decide = getattr(family_module, "shares_host_world", shares_host_world)
    if decide(call):
        log.info("vllm-pg-shim: vLLM shares the host's WORLD on purpose (%s); left alone", call)
        return wrapped(*args, **kwargs)
    label = "world_size={} rank={} init={}".format(
        call.get("world_size"), call.get("rank"), call.get("distributed_init_method")
    )
    private = world.new_private_world(label)
    log.info("vllm-pg-shim: the WORLD here is foreign; vLLM gets private world %d (%s)", private.id, label)
    try:
        with world.scope(private):
            return wrapped(*args, **kwargs)
    except BaseException:
        world.discard(private)
        raise


def scope(wrapped, instance, args, kwargs, family_module=None):
    live = world.current_private()
    if live is None or world.in_private_scope():
        return wrapped(*args, **kwargs)
    with world.scope(live):
        return wrapped(*args, **kwargs)


def teardown(wrapped, instance, args, kwargs, family_module=None):
    live = world.current_private()
    if live is None:
        if world.host_world_state() != "foreign":
            return wrapped(*args, **kwargs)
        # vLLM's teardown called again after its world is gone (users call cleanup_dist_env_and_memory() after
        # deleting an engine): its destroy_process_group() must find nothing, as in a clean process, not the
        # host's WORLD. An empty private world stands in for the one already released.
        live = world.new_private_world("empty (teardown after release)")
    # Only the outermost teardown releases the world: vLLM's cleanup (0.6.4-0.10.0) calls
    # destroy_process_group() again after destroy_distributed_environment(), and that call must still reach
    # the private world (where it finds nothing left), never the host's.
    outermost = not world.in_private_scope()
    try:
        with world.scope(live):
            return wrapped(*args, **kwargs)
    finally:
        if outermost:
            world.release(live)  # a no-op while its default group still exists


ROLE_FUNCTIONS = {"init": init, "scope": scope, "teardown": teardown}
