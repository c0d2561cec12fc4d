#!/usr/bin/env bash
# The one-GPU tier on a GPU host without network, from a kit (tests/support/gpu_kit.py; docs/gpu-1x.md).
#
#   tools/offline_gpu_run.sh STAGE JOB [pytest arguments...]
#
# STAGE holds the kit's pieces (kit.part*), kit.sha256 and tools/ (nox's own wheels). The tier runs from a copy of
# this checkout in JOB/repo, so the caller's directory may change meanwhile (the device tool sends the tree again
# with every call); it is meant to be started detached (setsid), since the tier takes longer than one device call.
# JOB gets gpu-1x.log, the records the tier wrote (compat_records.yaml), every rank's data (ranks.tar.gz) and DONE
# with the tier's exit status.
set -uxo pipefail
stage=$(realpath "$1") job=$(realpath -m "$2")
shift 2
mkdir -p "$job"
rm -rf "$job/repo" && mkdir "$job/repo" && tar --exclude=./.gpukit -cf - . | tar -xf - -C "$job/repo" \
    && cd "$job/repo" || exit 1
if [ ! -d "$stage/house" ]; then
    cat "$stage"/kit.part* > "$stage/kit.tar.xz" && (cd "$stage" && sha256sum -c kit.sha256) \
        && tar -xJf "$stage/kit.tar.xz" -C "$stage" || { echo 1 > "$job/DONE"; exit 1; }
fi
python3 -m pip install -q --no-index --no-deps --no-compile --target "$job/tools" "$stage"/tools/*.whl
# offline: no script environment for nox (docs/gpu.md); PyYAML is the host's
NOX_SCRIPT_MODE=none PYTHONPATH="$job/tools" timeout 1500 python3 -m nox -s gpu -- --tier gpu-1x \
    --wheelhouse "$stage/house" -v -rA --basetemp "$job/pt" "$@" > "$job/gpu-1x.log" 2>&1
status=$?
cp compat_records.yaml "$job/"
find "$job/pt" -name '*.json' -print0 | tar -czf "$job/ranks.tar.gz" --null -T - 2>/dev/null
echo "$status" > "$job/DONE"
