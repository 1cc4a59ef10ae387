#!/usr/bin/env bash
# What the two device calls of bench/gpu.sh carry, prepared on this machine (it needs PyPI; the GPU
# machine has no network), from the repository root of the checkout the device call is made from:
#   .whl/   kornia + kornia_rs (the shared fetch-wheels.sh: manylinux wheels for the device's Python 3.12)
#           and airbench 0.1.8 (an sdist on PyPI: built here into a pure-Python wheel)
#   .data/  a copy of the shared CIFAR-10 JPEG archive (cifar10-jpeg.tar.gz)
# Both folders are git-ignored; name them in the device call's carry: [".whl", ".data"].
#   bash bench/wheels.sh                 (SHARED: the shared folder, default ../shared beside the checkout)
set -eu
cd "$(git rev-parse --show-toplevel)"
SHARED=${SHARED:-../shared}
PY=${PYTHON:-python3}
"$SHARED/gpu/fetch-wheels.sh"
"$PY" -m pip wheel -q --no-deps airbench==0.1.8 -w .whl
mkdir -p .data
[ -f .data/cifar10-jpeg.tar.gz ] || cp "$SHARED/data/cifar10-jpeg.tar.gz" .data/
ls -la .whl .data
