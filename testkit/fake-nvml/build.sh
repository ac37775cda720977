#!/usr/bin/env bash
# Builds the fake libnvidia-ml.so.1 (see fake_nvml.c) into DIR; extra arguments go to the compiler
# (e.g. -DFAKE_NVML_OMIT_ENERGY). The tests call the compiler themselves; this is for trying the
# fake by hand: LLMD_NVML_LIB=DIR/libnvidia-ml.so.1 FAKE_NVML_CONFIG=readings.txt llmd ...
# Usage: testkit/fake-nvml/build.sh DIR [CFLAGS...]
set -euo pipefail
out=${1:?usage: build.sh DIR [CFLAGS...]}
shift
mkdir -p "$out"
"${CC:-cc}" -shared -fPIC -O1 -Wall -Wextra -Werror "$@" \
    -o "$out/libnvidia-ml.so.1" "$(dirname "$0")/fake_nvml.c"
