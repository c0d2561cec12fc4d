from vllm.distributed import cleanup_dist_env_and_memory  # noqa: F401
