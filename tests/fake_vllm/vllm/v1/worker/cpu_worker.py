from vllm.v1.worker.gpu_worker import init_worker_distributed_environment  # noqa: F401
