#!/usr/bin/env bash
# One command for a lent GPU machine (torch 2.11+cu130, triton 3.6, Python 3.12, 16 cores, no
# network): build the extension with CUDA, run the GPU parity tests of the CUDA and Triton kernels,
# benchmark the Triton kernels per pass against cuDNN and every backend per layer and per training
# step at GER-UNet shapes in bf16 and fp32, write everything to OUT (copy it back), print short tables.
# Fits one 10-minute device call.
#   bash benchmarks/gpu_suite.sh OUT
set -euo pipefail
OUT=${1:?usage: bash benchmarks/gpu_suite.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 PYTHONPATH=$PWD
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  python -c "import triton; print('triton', triton.__version__)" || true
  date -u
} > "$OUT/machine.txt" 2>&1
# no network: build against the installed torch and install no dependency
pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
python -c "import ger_kernels; print(ger_kernels.backends())" | tee -a "$OUT/machine.txt"
# parity with the float64 reference: the CUDA kernels of ger_kernels._C, the Triton kernels (on the
# GPU, not the interpreter), and everything that compares backends
GER_KERNELS_REQUIRE_EXTENSION=1 timeout 240 python -m pytest -q tests/csrc/test_group_conv_cuda.py \
  tests/csrc/test_group_conv.py tests/test_ops.py tests/triton tests/test_functional.py tests/test_backends.py \
  tests/convert/test_backend.py > "$OUT/parity.log" 2>&1 || echo "parity tests FAILED: see $OUT/parity.log"
# each Triton kernel against cuDNN on the expanded filter, per pass
timeout 120 python benchmarks/bench_triton.py --out "$OUT/triton" > "$OUT/triton.log" 2>&1 \
  || echo "triton benchmark FAILED: see $OUT/triton.log"
# layers and a training step: reference, cpp, triton, pre-expanded (cuDNN on W~)
for dtype in bfloat16 float32; do
  timeout 110 python benchmarks/run.py --device cuda --dtype "$dtype" --shapes ger-unet --repeats 5 --no-e2cnn \
    --out "$OUT/$dtype" > "$OUT/$dtype.log" 2>&1 || echo "benchmark $dtype FAILED: see $OUT/$dtype.log"
done
tail -n 3 "$OUT/parity.log"
cat "$OUT/triton/results.md" 2>/dev/null || true
for dtype in bfloat16 float32; do
  echo "== $dtype, forward+backward =="
  grep "forward+backward" "$OUT/$dtype/results.md" 2>/dev/null | cut -d'|' -f2-6 || true
done
