"""The functions the shim wraps, with real vLLM's signatures and a minimal body over torch.distributed."""
import torch.distributed

_WORLD = None


def init_distributed_environment(world_size=-1, rank=-1, distributed_init_method="env://", local_rank=-1,
                                 backend="nccl", timeout=None):
    global _WORLD
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, init_method=distributed_init_method,
                                             world_size=world_size, rank=rank, timeout=timeout)
    if _WORLD is None:
        _WORLD = init_world_group(list(range(torch.distributed.get_world_size())), local_rank, backend)


def init_world_group(ranks, local_rank, backend):
    return torch.distributed.new_group(ranks, backend="gloo")


def initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1, backend=None):
    pass


def ensure_model_parallel_initialized(tensor_model_parallel_size, pipeline_model_parallel_size, backend=None):
    initialize_model_parallel(tensor_model_parallel_size, pipeline_model_parallel_size, backend)


def destroy_model_parallel():
    pass


def destroy_distributed_environment():
    global _WORLD
    if _WORLD is not None:
        torch.distributed.destroy_process_group(_WORLD)
    _WORLD = None
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def cleanup_dist_env_and_memory(shutdown_ray=False):
    destroy_model_parallel()
    destroy_distributed_environment()
