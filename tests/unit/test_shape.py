"""Reading an unknown release's source for the shape a family expects (vllm_pg_shim.shape), on source text."""
from __future__ import annotations

import ast
import textwrap

import pytest

from vllm_pg_shim import shape
from vllm_pg_shim.families import Target

INIT = Target("vllm.distributed.parallel_state", "init_distributed_environment", "init")

FITS = """
def init_distributed_environment(world_size=-1, rank=-1, distributed_init_method="env://", local_rank=-1,
                                 backend="nccl"):
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, init_method=distributed_init_method,
                                             world_size=world_size, rank=rank)
"""


def function(source: str, qualname: str = "init_distributed_environment"):
    return shape._find(ast.parse(textwrap.dedent(source)), qualname)


def test_an_init_that_fits_has_no_problems():
    assert shape._check_target(INIT, function(FITS)) == []


def test_missing_parameters_are_named():
    problems = shape._check_target(INIT, function(FITS.replace("rank=-1, distributed_init_method", "rnk=-1, method")))
    assert problems == [f"{INIT} has no parameter(s) ['rank', 'distributed_init_method']"]


@pytest.mark.parametrize("body", [
    "    torch.distributed.init_process_group(backend=backend)\n",                       # unguarded
    "    if not torch.distributed.is_initialized():\n        pass\n",                    # guarded, never called
    "    if ready():\n        torch.distributed.init_process_group(backend=backend)\n",  # another guard
])
def test_init_process_group_must_be_behind_is_initialized(body):
    head = FITS.split("    if not")[0]
    assert shape._check_target(INIT, function(head + body)) == [
        f"{INIT} no longer calls init_process_group behind is_initialized()"]


def test_other_roles_only_need_to_exist():
    assert shape._check_target(Target("m", "f", "teardown"), function("def f():\n    pass\n", "f")) == []


@pytest.mark.parametrize("qualname,found", [
    ("Worker.execute_model", "execute_model"), ("Worker", "Worker"), ("Worker.absent", None), ("absent", None),
    ("Worker.execute_model.inner", "inner"),
])
def test_find_walks_qualnames_through_classes_and_functions(qualname, found):
    source = """
    class Worker:
        def execute_model(self):
            def inner():
                pass
    """
    node = function(source, qualname)
    assert (node.name if node is not None else None) == found
