from .parallel_state import *  # noqa: F401,F403  (as real vLLM does, with no __all__)
