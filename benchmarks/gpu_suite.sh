#!/usr/bin/env bash
# The suite for a lent GPU machine (torch 2.11+cu130, triton 3.6, Python 3.12, 16 cores, no network).
# Stages, each under `timeout` (seconds), in the order given:
#   build   60  build the extension in place with its CUDA kernels (25 s on the H200), record machine and versions
#   step   240  GER-UNet and R-UNet training step per precision, layout, backend, eager and compiled
#               (benchmarks/bench_step.py, its own budget 210 s)
#   parity 120  GPU parity tests of the CUDA and Triton kernels against the float64 reference (60 s on the H200)
#   triton 150  each Triton kernel per pass against cuDNN on the expanded filter, bfloat16 (benchmarks/bench_triton.py)
#   layers 150  every backend per layer and the run.py training step, bfloat16 (benchmarks/run.py)
# Plan for a session's device time (15 min in all, at most 10 min per call; a fresh machine starts in
# ~40 s and goes back after ~30 s idle): `bash benchmarks/gpu_suite.sh OUT` runs build step parity triton
# as one call of at most 570 s by the timeouts, less as stages end early (on the H200 the build took
# 25 s, the GPU tests 60 s), so 9-10.5 min of device time with the start. What is left (4.5-6 min)
# holds one more call on a fresh machine: `OUT build step` after a change (at most 300 s; a fresh
# machine has no build) or `OUT build layers`. Everything is written to OUT (it comes back; copy it to
# benchmarks/results/); the short tables are printed.
set -euo pipefail
OUT=${1:?usage: bash benchmarks/gpu_suite.sh OUT_DIR [build] [step] [parity] [triton] [layers]}
shift
STAGES=${*:-build step parity triton}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # OUT is relative to where the suite was started, not to the repository
cd "$(dirname "$0")/.."
export MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 PYTHONPATH=$PWD

for stage in $STAGES; do
  case $stage in
    build)
      {
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
        python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
        python -c "import triton; print('triton', triton.__version__)" || true
        date -u
      } > "$OUT/machine.txt" 2>&1
      # no network: build against the installed torch, in place (PYTHONPATH), installing nothing
      timeout 60 python setup.py build_ext --inplace > "$OUT/build.log" 2>&1 \
        || echo "build FAILED: see $OUT/build.log"
      python -m ger_kernels info | tee -a "$OUT/machine.txt"
      ;;
    step)
      timeout -k 10 240 python benchmarks/bench_step.py --device cuda --out "$OUT/step" > "$OUT/step.log" 2>&1 \
        || echo "step benchmark FAILED or stopped: see $OUT/step.log (rows measured so far are in $OUT/step)"
      sed '/^## Top/,$d' "$OUT/step/results.md" 2>/dev/null || true
      ;;
    parity)
      # the CUDA kernels of ger_kernels._C, the Triton kernels (on the GPU, not the interpreter),
      # and everything that compares backends
      GER_KERNELS_REQUIRE_EXTENSION=1 timeout 120 python -m pytest -q tests/csrc/test_group_conv_cuda.py \
        tests/csrc/test_group_conv.py tests/test_ops.py tests/triton tests/test_functional.py \
        tests/test_backends.py tests/convert/test_backend.py > "$OUT/parity.log" 2>&1 \
        || echo "parity tests FAILED: see $OUT/parity.log"
      tail -n 3 "$OUT/parity.log"
      ;;
    triton)
      timeout 150 python benchmarks/bench_triton.py --dtypes bfloat16 --out "$OUT/triton" > "$OUT/triton.log" 2>&1 \
        || echo "triton benchmark FAILED: see $OUT/triton.log"
      cat "$OUT/triton/results.md" 2>/dev/null || true
      ;;
    layers)
      timeout 150 python benchmarks/run.py --device cuda --dtype bfloat16 --shapes ger-unet --repeats 5 \
        --no-e2cnn --out "$OUT/bfloat16" > "$OUT/bfloat16.log" 2>&1 || echo "benchmark FAILED: see $OUT/bfloat16.log"
      grep "forward+backward" "$OUT/bfloat16/results.md" 2>/dev/null | cut -d'|' -f2-6 || true
      ;;
    *) echo "unknown stage $stage (build, step, parity, triton, layers)"; exit 2 ;;
  esac
done
