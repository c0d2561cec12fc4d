"""The patch registry's pure logic (vllm_pg_shim.families): release keys, ranges, the nearest family, the
decision, and validation of the matrix's families. No vLLM or torch is imported."""
from __future__ import annotations

import itertools
import textwrap

import pytest
import yaml

from vllm_pg_shim import ShimError, families
from vllm_pg_shim.families import Family, Target

# A second matrix for the pure cases, so they do not follow the shipped matrix's ranges.
RANGES = {"old": "==0.5.0", "middle": ">=0.5.0.post1,<0.6.4", "new": ">=0.6.4,<0.34"}
KNOWN = [Family(name, releases, "v1") for name, releases in RANGES.items()]


@pytest.mark.parametrize("version,key", [
    ("0.33.0", "0.33.0"), ("0.33.0rc1+g12", "0.33.0"), ("0.34.0.dev12+g1234abc", "0.34.0"),
    ("0.5.3.post1", "0.5.3.post1"), ("0.9.0.1", "0.9.0.1"), ("1.0.0rc1", "1.0.0"), ("0.6.6.post1+cpu", "0.6.6.post1"),
])
def test_a_build_is_matched_by_its_release_post_kept(version, key):
    assert families.release_key(version) == key


@pytest.mark.parametrize("version", ["not-a-version", "", "0.32..0", None])
def test_a_version_that_does_not_parse_is_a_shim_error(version):
    with pytest.raises(ShimError, match="not a PEP 440 version"):
        families.release_key(version)


@pytest.mark.parametrize("version,name", [
    ("0.5.0", "old"), ("0.5.0.post1", "middle"), ("0.6.3.post1", "middle"), ("0.6.4", "new"),
    ("0.33.0rc1", "new"), ("0.6.4.dev3", "new"),
])
def test_covers_decides_by_release(version, name):
    assert [f.name for f in KNOWN if f.covers(version)] == [name]


@pytest.mark.parametrize("version", ["0.4.3", "0.34.0", "1.0.0"])
def test_releases_outside_every_range_are_covered_by_none(version):
    assert not any(f.covers(version) for f in KNOWN)


@pytest.mark.parametrize("version,name", [
    ("0.34.0", "new"), ("0.34.0.dev1+g12", "new"), ("2.0", "new"),   # newer: the newest family
    ("0.4.3", "old"), ("0.1", "old"),                                # older: the oldest
    ("0.5.0.post1", "middle"), ("0.6.0", "middle"),                  # inside: the family whose range starts below
])
def test_nearest_family(version, name):
    assert families.nearest(version, KNOWN).name == name


@pytest.mark.parametrize("entry,target", [
    ("a.b:f", Target("a.b", "f", "init")),
    ("a.b:C.m?", Target("a.b", "C.m", "init", optional=True)),
])
def test_targets_parse(entry, target):
    assert Target.parse(entry, "init") == target and str(target) == entry.rstrip("?")


@pytest.mark.parametrize("entry", ["a.b", ":f", "a.b:", ""])
def test_a_target_that_is_not_module_colon_qualname_is_refused(entry):
    with pytest.raises(ValueError, match="is not 'module:qualname'"):
        Target.parse(entry, "init")


# --- the shipped matrix ---------------------------------------------------------------------------------------

def test_the_shipped_matrix_loads_every_family_with_its_patch_module():
    loaded = families.families()
    assert [f.name for f in loaded] == list(families.load_matrix()["families"])
    assert all(f.targets and f.has_patch_module() for f in loaded)
    assert all(any(t.role == "init" for t in f.targets) for f in loaded)


def test_the_shipped_families_ranges_do_not_overlap():
    loaded = families.families()
    tier_versions = {v for tier in families.load_matrix().get("tiers", {}).values() for v in tier.get("versions", [])}
    for version in sorted(tier_versions):
        assert len([f for f in loaded if f.covers(version)]) == 1, version
    for a, b in itertools.combinations(loaded, 2):
        assert not [v for v in tier_versions if a.covers(v) and b.covers(v)], (a.name, b.name)


def test_a_forced_family_wins_and_an_unknown_one_names_the_known():
    name = families.families()[0].name
    decision = families.decide("0.0.1", None, forced=name)
    assert (decision.family.name, decision.how) == (name, "forced")
    with pytest.raises(ShimError, match="does not exist; known families"):
        families.decide("0.32.0", None, forced="no-such-family")


def test_a_release_in_a_range_is_decided_by_the_matrix():
    decision = families.decide("0.32.0", None)
    assert decision.how == "matrix" and decision.family.covers("0.32.0")


def test_an_unknown_release_whose_source_cannot_be_read_is_refused_naming_what_to_do():
    with pytest.raises(ShimError) as info:
        families.decide("0.4.3", None)
    assert "not in compat_matrix.yaml" in str(info.value) and "VLLM_PG_SHIM_FORCE" in str(info.value)


# --- validation of a matrix's families --------------------------------------------------------------------------

GOOD = {"releases": ">=0.11.0", "module": "v1", "targets": {"init": ["m:f"]}}


def write(tmp_path, data) -> str:
    path = tmp_path / "matrix.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("spec,message", [
    ({"module": "v1"}, "no 'releases' key"),
    ({**GOOD, "releases": "~~1"}, "is not a PEP 440 version specifier"),
    ({**GOOD, "module": "no_such_module"}, "does not exist in vllm_pg_shim.patches"),
    ({**GOOD, "targets": ["m:f"]}, "'targets' must map roles"),
    ({**GOOD, "targets": {"launch": ["m:f"]}}, "unknown role"),
    ({**GOOD, "targets": {"init": "m:f"}}, "must be a list"),
    ({**GOOD, "targets": {"init": [3]}}, "is not 'module:qualname'"),
    ({**GOOD, "targets": {"init": ["m"]}}, "is not 'module:qualname'"),
    ("v1", "expected a mapping"),
])
def test_a_malformed_family_is_a_shim_error_naming_the_family(tmp_path, spec, message):
    path = write(tmp_path, {"families": {"broken": spec}})
    with pytest.raises(ShimError, match="family 'broken' is malformed") as info:
        families.families(path)
    assert message in str(info.value)


@pytest.mark.parametrize("text,message", [
    ("families: [", "is not valid YAML"),
    ("families: {}", "has no 'families' mapping"),
    ("- a list", "has no 'families' mapping"),
    ("schema: 1", "has no 'families' mapping"),
])
def test_a_matrix_that_is_not_one_is_a_shim_error(tmp_path, text, message):
    with pytest.raises(ShimError, match=message):
        families.families(write(tmp_path, text))


def test_a_missing_matrix_is_a_shim_error(tmp_path):
    with pytest.raises(ShimError, match="cannot read its compatibility matrix"):
        families.families(str(tmp_path / "absent.yaml"))


def test_a_good_family_loads(tmp_path):
    (family,) = families.families(write(tmp_path, {"families": {"ok": GOOD}}))
    assert family == Family("ok", ">=0.11.0", "v1", (Target("m", "f", "init"),))


IMPORT_ENVIRONMENT = textwrap.dedent("""
    families: {ok: {releases: ">=0", module: v1, targets: {init: ["m:f"]}}}
    import_environment:
      - releases: ">=0.7.0,<0.8.5"
        set: {NCCL_CUMEM_ENABLE: "0"}
      - releases: ">=0.9.1,<0.10.2"
        set_if_unset: {NCCL_CUMEM_ENABLE: "0"}
        unless_exists: /dev/some-path
""")


@pytest.mark.parametrize("version,writes", [
    ("0.7.0", [families.EnvironmentWrite("NCCL_CUMEM_ENABLE", "0")]),
    ("0.9.1rc1+g1", [families.EnvironmentWrite("NCCL_CUMEM_ENABLE", "0", True, "/dev/some-path")]),
    ("0.8.5", []), ("0.10.2", []), ("not-a-version", []),
])
def test_import_environment_by_release(tmp_path, version, writes):
    assert families.import_environment(version, write(tmp_path, IMPORT_ENVIRONMENT)) == writes


def test_a_malformed_import_environment_entry_is_a_shim_error(tmp_path):
    path = write(tmp_path, IMPORT_ENVIRONMENT + "  - {set: {A: 1}}\n")
    with pytest.raises(ShimError, match="import_environment entry 2 is malformed"):
        families.import_environment("0.7.0", path)
