#!/usr/bin/env bash
# The suite for a lent GPU machine (torch 2.11+cu130, triton 3.6, Python 3.12, 16 cores, no network):
#   build    build the extension with its CUDA kernels (incremental), record machine and versions
#   parity   the GPU parity tests of the CUDA and Triton kernels against the float64 reference
#   triton   each Triton kernel per pass against cuDNN on the expanded filter (benchmarks/bench_triton.py)
#   layers   every backend per layer and per GER-UNet training step, bf16 and fp32 (benchmarks/run.py)
#   groupbn  fused group batch norm against BatchNorm3d, bf16, GB/s (benchmarks/bench_group_bn.py)
#   sweep    every Triton config per pass and layer against cuDNN, bf16 and fp32, in 450 s
#            (benchmarks/gpu_sweep.py; not in the default stages: a device call of its own). Copy
#            OUT/sweep/configs_sm90.json to ger_kernels/triton/ to make its best configs the defaults
# Everything is written to OUT (copy it back to benchmarks/results/); short tables are printed.
#   bash benchmarks/gpu_suite.sh OUT                 # all stages (up to 14 minutes: the timeouts below)
#   bash benchmarks/gpu_suite.sh OUT build parity    # then `OUT triton layers`: two 10-minute device calls
#   bash benchmarks/gpu_suite.sh OUT sweep           # the config sweep: one device call (8 minutes)
set -euo pipefail
OUT=${1:?usage: bash benchmarks/gpu_suite.sh OUT_DIR [build] [parity] [triton] [layers] [groupbn]}
shift
STAGES=${*:-build parity triton layers groupbn}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
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
      # no network: build against the installed torch and install no dependency
      pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
      python -m ger_kernels info | tee -a "$OUT/machine.txt"
      ;;
    parity)
      # the CUDA kernels of ger_kernels._C, the Triton kernels (on the GPU, not the interpreter),
      # and everything that compares backends
      GER_KERNELS_REQUIRE_EXTENSION=1 timeout 300 python -m pytest -q tests/csrc/test_group_conv_cuda.py \
        tests/csrc/test_group_conv.py tests/test_ops.py tests/triton tests/test_functional.py \
        tests/test_backends.py tests/convert/test_backend.py > "$OUT/parity.log" 2>&1 \
        || echo "parity tests FAILED: see $OUT/parity.log"
      tail -n 3 "$OUT/parity.log"
      ;;
    triton)
      timeout 240 python benchmarks/bench_triton.py --out "$OUT/triton" > "$OUT/triton.log" 2>&1 \
        || echo "triton benchmark FAILED: see $OUT/triton.log"
      cat "$OUT/triton/results.md" 2>/dev/null || true
      ;;
    layers)
      for dtype in bfloat16 float32; do
        timeout 150 python benchmarks/run.py --device cuda --dtype "$dtype" --shapes ger-unet --repeats 5 \
          --no-e2cnn --out "$OUT/$dtype" > "$OUT/$dtype.log" 2>&1 || echo "benchmark $dtype FAILED: see $OUT/$dtype.log"
        echo "== $dtype, forward+backward =="
        grep "forward+backward" "$OUT/$dtype/results.md" 2>/dev/null | cut -d'|' -f2-6 || true
      done
      ;;
    sweep)
      timeout 500 python benchmarks/gpu_sweep.py --out "$OUT/sweep" --budget-s 450 > "$OUT/sweep.log" 2>&1 \
        || echo "config sweep FAILED: see $OUT/sweep.log"
      sed -n '1,/^Every config/p' "$OUT/sweep/sweep.md" 2>/dev/null || true
      ;;
    groupbn)
      timeout 120 python benchmarks/bench_group_bn.py --out "$OUT/group_bn" > "$OUT/group_bn.log" 2>&1 \
        || echo "group batch norm benchmark FAILED: see $OUT/group_bn.log"
      cat "$OUT/group_bn/results.md" 2>/dev/null || true
      ;;
    *) echo "unknown stage $stage (build, parity, triton, layers, sweep, groupbn)"; exit 2 ;;
  esac
done
