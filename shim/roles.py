"""What each role of target does around the vLLM function it wraps (roles are named in compat_matrix.yaml)."""
from __future__ import annotations

import collections
import inspect
import logging
import os

from . import _env, world

log = logging.getLogger("vllm_pg_shim")


def bound_arguments(wrapped, args, kwargs) -> dict:
    """vLLM's call as a dict of its parameters, defaults included (signatures differ between releases)."""
    try:
        bound = inspect.signature(wrapped).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return dict(kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def parallel_config():
    """vLLM's current parallel config, where the release keeps one (else None)."""
    try:
        from vllm.config import get_current_vllm_config

        return get_current_vllm_config().parallel_config
    except Exception:  # a release without a current config, or none set
        return None


def data_parallel_size() -> int:
    """vLLM's data-parallel size from its current config (1 where there is none)."""
    return int(getattr(parallel_config(), "data_parallel_size", 1) or 1)


def world_size_built(call: dict, family_module=None) -> int:
    """The size of the world vLLM builds from this call: the call's size times the data-parallel size (vLLM
    offsets each DP rank's ranks inside), except where the family says its external launcher already passes
    the size across DP (``LAUNCHER_WORLD_SIZE_SPANS_DATA_PARALLEL``: no offset happens there)."""
    size: int = call.get("world_size", -1)
    if (getattr(family_module, "LAUNCHER_WORLD_SIZE_SPANS_DATA_PARALLEL", False)
            and getattr(parallel_config(), "distributed_executor_backend", None) == "external_launcher"):
        return size
    return size * data_parallel_size()


def shares_host_world(call: dict, family_module=None) -> bool:
    """vLLM asked to *be* the host's WORLD (``external_launcher`` on every rank, over ``env://``: the world it
    builds, data parallelism included, is the host's, and its rank the host's): that is vLLM's own supported
    way to share a world, so it is left alone."""
    import torch.distributed as dist

    host = world.host_default_group()
    size = call.get("world_size")
    return (
        call.get("distributed_init_method", "env://") == "env://"
        and (size == -1 or world_size_built(call, family_module) == host.size())
        and call.get("rank") in (host.rank(), -1)
        and dist.get_world_size() == host.size()
    )


def lays_data_parallel_over_host_world(call: dict, family_module=None) -> bool:
    """vLLM's external launcher (its executor, named by the current config) on *every* host rank at once, each
    engine a block of the host's ranks (TRL's colocate: TP=1 on every rank, or TP=2 pairs; verl's dp × tp
    rollout). Stock vLLM lays its data parallelism over the host's WORLD there, in the families that say so
    (``LAUNCHER_EXTERNAL_DATA_PARALLEL``): its world group is the host's, and its start-up takes the least free
    memory across the ranks, so engines sharing a GPU size their KV caches alike. That is vLLM's own layout, so it
    is left alone (its teardown is still kept off the host's default group). Whether every rank builds now only
    the ranks know: they count themselves in the host's store, waiting at most ``VLLM_PG_SHIM_LAUNCHER_WAIT``
    seconds; an engine on only some ranks gets private blocks after that wait."""
    import torch.distributed as dist

    if (not getattr(family_module, "LAUNCHER_EXTERNAL_DATA_PARALLEL", False) or launcher_block(call) is None
            or getattr(parallel_config(), "distributed_executor_backend", None) != "external_launcher"):
        return False
    host = world.host_default_group().size()
    size = world_size_built(call, family_module)
    if not 0 < size < host or host % size or dist.get_world_size() != host:
        return False
    wait = _env.launcher_wait()
    if wait > 0 and every_host_rank_arrives(arrival_store(size), host, wait):
        return True
    log.info("vllm-pg-shim: not every host rank built a launcher engine of %d within %s=%g s: a private world for "
             "this engine's block", size, _env.LAUNCHER_WAIT_VAR, wait)
    return False


_arrival_rounds: collections.Counter = collections.Counter()  # engine world size -> launcher engines asked about


def arrival_store(size: int):
    """A key space of the host's store for this launcher engine: one per engine built there, as for blocks."""
    import torch.distributed.distributed_c10d as c10d
    from torch.distributed import PrefixStore

    _arrival_rounds[size] += 1
    return PrefixStore(f"vllm_pg_shim/arrivals/{size}/{_arrival_rounds[size]}", c10d._get_default_store())


def every_host_rank_arrives(store, host_ranks: int, wait: float) -> bool:
    """Every host rank counts itself in ``store``. The last to arrive says "together"; a rank that waited
    ``wait`` seconds says "apart". The first word stands for all (compare-and-set), so every rank takes the same
    way, however late it arrives."""
    import time

    if store.add("arrived", 1) == host_ranks:
        return store.compare_set("decision", "", "together") == b"together"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if store.check(["decision"]):
            return store.get("decision") == b"together"
        time.sleep(0.05)
    return store.compare_set("decision", "", "apart") == b"together"


_launcher_worlds: collections.Counter = collections.Counter()  # (size, block) -> private worlds made so far


def launcher_block(call: dict) -> tuple[int, int] | None:
    """vLLM's external launcher on *some* of the host's ranks (e.g. ranks 2 and 3 of 4 form one TP=2 engine while
    0 and 1 train): vLLM asks for a world of its own size over ``env://`` with the host's rank, and names no
    address of its own (``env://`` is the host's). The engine's members are the host's ranks in aligned blocks
    of that size, torchrun's convention: (block, rank in block), known to every member without a collective."""
    size = call.get("world_size")
    if call.get("distributed_init_method", "env://") != "env://" or not isinstance(size, int) or size < 1:
        return None
    host_rank = world.host_default_group().rank()
    if call.get("rank") not in (host_rank, -1):
        return None  # a rank of vLLM's own numbering: vLLM made its own address
    return host_rank // size, host_rank % size


def _meet_on_host_store(private, call: dict, block: tuple[int, int]) -> tuple[dict, str]:
    """Members of a launcher block meet in a key space of the host's store (a key-value store, no collective):
    one per block and per engine built there, so a rebuilt engine never reads an old engine's keys.
    Returns vLLM's call with the rank in the block, and the meeting place's name (the same in every member)."""
    import torch.distributed.distributed_c10d as c10d
    from torch.distributed import PrefixStore

    index, rank = block
    size = call["world_size"]
    _launcher_worlds[(size, index)] += 1
    generation = _launcher_worlds[(size, index)]
    private.rendezvous_store = PrefixStore(f"vllm_pg_shim/launcher/{size}/{index}/{generation}",
                                           c10d._get_default_store())
    private.rendezvous_where = (f"the host's store (engine block {index}: host ranks "
                                f"{index * size}-{index * size + size - 1}, engine {generation} there)")
    # env://'s port tells this host job from any other on the machine (and from a killed earlier run, whose
    # host-wide resources may outlive it)
    job = os.environ.get("MASTER_PORT", "")
    return {**call, "rank": rank}, f"vllm_pg_shim-{job}-launcher-{size}-{index}-{generation}"


_named: dict[str, tuple[str, str]] = {}  # naming variable -> (vLLM's value, the value the shim wrote over it)


def name_after_meeting_place(family_module, place: str) -> None:
    """vLLM names some host-wide resources after its init method and its ranks (the family lists the
    environment variables it derives such names from, ``HOST_WIDE_NAME_VARIABLES``). Every launcher block
    numbers its ranks from 0 and vLLM's method, ``env://``, is the same for all of them, so two blocks on one
    host would claim the same names (stock, the ranks were the host's and differed). The variables get the
    place where this block met, which every member knows and no other block (of this job or another) shares."""
    for variable in getattr(family_module, "HOST_WIDE_NAME_VARIABLES", ()):
        value = os.environ.get(variable)
        if value is None:
            continue
        original, written = _named.get(variable, (value, ""))
        base = original if value == written else value  # our name is still there, or vLLM set it again
        os.environ[variable] = f"{base}-{place}"
        _named[variable] = (base, os.environ[variable])


def refuse_what_a_private_world_cannot_carry(family_module) -> None:
    """Settings under which vLLM builds its groups in a way a private world does not carry (the family lists
    them, ``REFUSED_IN_PRIVATE_WORLD``: variable -> why, what to do): an error naming the variable, at once."""
    from . import ShimError

    for variable, advice in getattr(family_module, "REFUSED_IN_PRIVATE_WORLD", {}).items():
        value = os.environ.get(variable, "")
        if value.strip() not in ("", "0"):
            raise ShimError(f"{variable}={value} with vLLM in a WORLD made by someone else: {advice}")


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
    if decide(call, family_module):
        log.info("vllm-pg-shim: vLLM shares the host's WORLD on purpose (%s); left alone", call)
        return wrapped(*args, **kwargs)
    if lays_data_parallel_over_host_world(call, family_module):
        log.info("vllm-pg-shim: every host rank builds a launcher engine (%s): vLLM's data parallelism over the "
                 "host's WORLD, as stock; left alone but for its teardown", call)
        return wrapped(*args, **kwargs)
    label = "world_size={} rank={} init={}".format(
        call.get("world_size"), call.get("rank"), call.get("distributed_init_method")
    )
    refuse_what_a_private_world_cannot_carry(family_module)
    block = launcher_block(call)
    private = world.new_private_world(label)
    log.info("vllm-pg-shim: the WORLD here is foreign; vLLM gets private world %d (%s)", private.id, label)
    try:
        if block is not None:
            kwargs, place = _meet_on_host_store(private, call, block)
            args = ()
            name_after_meeting_place(family_module, place)
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
        with world.scope(live), world.gloo_backends_freed_last(live):
            return wrapped(*args, **kwargs)
    finally:
        if outermost:
            world.release(live)  # a no-op while its default group still exists


def host_cuda_device() -> int | None:
    """The CUDA device this process's host chose (``torch.cuda.set_device``), when it chose one other than 0.

    Never initialises CUDA: a process that has not touched CUDA chose nothing (and must stay fork-safe for
    vLLM's workers)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    index = torch.cuda.current_device()
    return index or None


def device(wrapped, instance, args, kwargs, family_module=None):
    """vLLM's device config, made in a process whose foreign host set a CUDA device: that device becomes vLLM's.

    vLLM's in-process executor takes its device index from the config (``cuda`` alone means ``cuda:0``) and
    makes it the process's current device: an engine built on host rank 1 after ``set_device(1)`` would land on
    GPU 0, the GPU of rank 0, and move the host's current device with it."""
    result = wrapped(*args, **kwargs)
    if instance is None or getattr(instance, "device_type", None) != "cuda" or world.host_world_state() != "foreign":
        return result
    current = getattr(instance, "device", None)
    index = host_cuda_device()
    if index is not None and getattr(current, "index", 0) is None:
        import torch

        instance.device = torch.device("cuda", index)
        log.info("vllm-pg-shim: the host set CUDA device %d in this process; vLLM's engine uses it", index)
    return result


ROLE_FUNCTIONS = {"init": init, "scope": scope, "teardown": teardown, "device": device}
