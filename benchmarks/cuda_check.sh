#!/usr/bin/env bash
# The checks that need a GPU, as one script for a lent CUDA machine (run from the repo root).
# It expects torch + torchvision there; captum, pytorch-grad-cam and ttach may come as wheels in
# .whl/ (pip download them beforehand). Results are written to $OUT (or ./cuda-check).
set -o pipefail
OUT=${OUT:-cuda-check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=src
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=src:/tmp/site
fi
nvidia-smi -L
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider tests/unit/test_cuda.py tests/unit/test_pooling.py 2>&1 | tee "$OUT/pytest.log" | tail -25
# the same CPU benchmark as on the 2-core machine, at 2 threads, on this quieter CPU
timeout 120 python3 -m benchmarks.bench_unpool_torch --threads 2 > "$OUT/unpool_cpu2.md" 2>&1
grep -E "^###|convscope|F.max_unpool2d|bandwidth \|" "$OUT/unpool_cpu2.md"
for bench in "bench_unpool_torch --device cuda" "bench_rise --device cuda" bench_attribution; do
  name=$(echo "$bench" | cut -d' ' -f1)
  echo "== $bench"
  timeout 150 python3 -m benchmarks.$bench 2>&1 | tee "$OUT/$name.md" | grep -E "^###|convscope|ratio|WRONG" | head -40
done
