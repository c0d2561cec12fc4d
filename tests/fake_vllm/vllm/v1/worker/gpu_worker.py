from vllm.distributed import ensure_model_parallel_initialized, init_distributed_environment


def init_worker_distributed_environment(vllm_config=None, rank=0, distributed_init_method=None, local_rank=-1,
                                        backend="gloo"):
    init_distributed_environment(1, rank, distributed_init_method, local_rank, backend)
    ensure_model_parallel_initialized(1, 1)
