"""Version strings the matrix does not know, against the real vLLM installed here (its source files are read,
nothing is imported). Skipped where no real vLLM is installed."""
from __future__ import annotations

import importlib.util

import pytest

from vllm_pg_shim import ShimError, families

if importlib.util.find_spec("vllm") is None:
    pytest.skip("needs a real vLLM installed", allow_module_level=True)

REAL = families.vllm_distribution()


@pytest.mark.parametrize("version", ["0.34.0", "0.34.0.dev12+g1234abc", "1.0.0rc1"])
def test_newer_builds_get_the_newest_family_when_the_shape_fits(version):
    decision = families.decide(version, REAL[0])
    assert decision.how == "shape" and decision.family.name == "v1"
    assert version in decision.note and "applied" in decision.note


def test_an_older_unknown_release_is_refused_naming_what_differs():
    with pytest.raises(ShimError) as info:
        families.decide("0.4.3", REAL[0])
    message = str(info.value)
    assert "vLLM 0.4.3 is not in compat_matrix.yaml" in message
    assert "nearest family, legacy_050" in message and "vllm.worker.worker" in message


def test_known_releases_are_decided_by_the_matrix():
    assert families.decide(REAL[1], REAL[0]).how == "matrix"
    assert families.decide("0.33.0rc1+gabc", REAL[0]).how == "matrix"


@pytest.mark.parametrize("version", ["not-a-version", "", "0.32..0"])
def test_version_strings_that_do_not_parse_are_a_clear_error(version):
    with pytest.raises(ShimError, match="not a PEP 440 version"):
        families.decide(version, REAL[0])
