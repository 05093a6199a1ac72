#!/usr/bin/env bash
# The checks and figures that need the GPU machine, in two calls meant to fit the
# device tool's 10 minutes each:
#
#   benchmarks/device_session.sh tests   # the CUDA kernel's and the state formats' tests, GPU-only ones included
#   benchmarks/device_session.sh bench   # CUDA figures (fp32, bf16/int8 state, peers), CPU with all cores
#
# Run from the repository root; nothing is installed (the machine has torch, Triton,
# numba, numpy, tqdm and pytest). Results go to $OUT (the device tool's folder), else
# ./device-out. If ./wheels holds torchao and bitsandbytes wheels (see
# benchmarks/README.md), they are unpacked and their 8-bit Adam is timed beside
# adamkit's. DEVICE=cpu runs the same benchmark commands on the CPU, to try the script.
set -euo pipefail

out=${OUT:-device-out}
device=${DEVICE:-cuda}
mkdir -p "$out"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export ADAMKIT_CACHE_DIR=${ADAMKIT_CACHE_DIR:-$out/.cache}

adamkit() { python3 -m adamkit "$@"; }

case "${1:-}" in
tests)
    nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
    python3 -m pytest -q -m "slow or not slow" -p no:cacheprovider \
        tests/test_fused_cuda.py tests/test_state_formats.py \
        2>&1 | tee "$out/tests.txt"
    ;;
bench)
    peers=()
    if compgen -G "wheels/*.whl" > /dev/null; then
        for wheel in wheels/*.whl; do python3 -m zipfile -e "$wheel" "$out/peers/"; done
        export PYTHONPATH="$PYTHONPATH:$out/peers"
        peers=("torchao AdamW8bit" "bnb Adam8bit")
    fi
    adamkit bench --device "$device" --sizes 4x16777216 2000x4096 10000x1024 --repeats 20 --json \
        > "$out/bench-$device-fp32.json"
    adamkit bench --device "$device" --sizes 4x16777216 2000x4096 --repeats 20 --json \
        --implementations adamkit "torch fused" "${peers[@]}" --state-dtype bf16,int8 \
        > "$out/bench-$device-state.json"
    threads=$(nproc)
    adamkit bench --threads "$threads" --sizes 4x16777216 2000x4096 --repeats 20 --json \
        --implementations adamkit "torch fused" --state-dtype bf16,int8 \
        > "$out/bench-cpu-$threads-threads-state.json"
    ;;
*)
    echo "usage: $0 tests|bench" >&2
    exit 2
    ;;
esac
