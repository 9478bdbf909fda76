#!/usr/bin/env bash
# Gather what bench/gpu.py needs on the device machine, which gets a copy of the working tree and nothing else
# (../shared stays behind, and it can reach no package registry):
#   .gpu/shared  the data and weights, in the layout of ../shared, slimmed so that all that travels fits in 64 MiB
#   .whl         wheels of what the device's Python lacks: pycocotools (deepfit's COCO metrics, imported by the
#                tests) and airbench (the CIFAR-10 reference, published as a source archive only: built here)
# Both are git-ignored, so the device command names them in `carry` (bench/README.md).
#
#   bash bench/gpu_prepare.sh          # from anywhere in the checkout; DEEPFIT_SHARED=... for another shared folder
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${DEEPFIT_SHARED:-../shared}

rm -rf .gpu .whl
uv run python bench/gpu_data.py slice "$shared" .gpu/shared
git describe --always --dirty > .gpu/shared/commit.txt  # the device gets no .git: gpu.json names the commit from this

# the device's python3 is CPython 3.12 on x86-64 (/work/.library/device/KINDS.md); pip matches manylinux tags exactly
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl pycocotools==2.0.11
python3 -m pip wheel -q --no-deps -w .whl airbench==0.1.8

# what travels: the tracked and untracked-not-ignored files, and the two carried folders
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
carried=$(du -cb .gpu .whl | tail -1 | cut -f1)
total=$((tree + carried))
echo "travels: $((tree / 1048576)) MiB of tree + $((carried / 1048576)) MiB carried = $((total / 1048576)) MiB (limit 64)"
if [ "$total" -ge $((62 * 1048576)) ]; then
    echo "too close to the 64 MiB limit: slim bench/gpu_data.py's slices" >&2
    exit 1
fi
