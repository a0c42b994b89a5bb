#!/usr/bin/env bash
# The checks that need a GPU, in one batch (a few minutes on one H100/H200): run from the project root.
#   bash scripts/device_checks.sh [OUT_DIR]        (OUT_DIR defaults to $OUT, else /tmp/device_checks)
# 1. trainer.amp=bf16 against fp32 when evaluating one trained checkpoint (bf16 must not touch geometry);
# 2. the training step at full scale in bf16 (an option) and in fp32 (the recipes' precision, trainer.amp=auto):
#    the floor and each method's ratio to it, with peak memory;
# 3. the step at scale=bench (to check its "Table 5 in about 30 minutes" budget).
# On an offline machine that lacks hydra-core/omegaconf/pycocotools, fill .whl/ first (the shared
# offline-wheels script); they are installed from there.
set -uo pipefail
out=${1:-${OUT:-/tmp/device_checks}}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export DFD_CACHE=${DFD_CACHE:-/tmp/dfd_cache}
runs=/tmp/device_runs
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -c "import torch, torchvision, sys; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'python', sys.version.split()[0])"
} | tee "$out/device.txt"

echo "== 1. bf16 vs fp32 evaluation of one trained checkpoint"
python3 scripts/train.py scale=smoke distill=none trainer.device=cuda trainer.progress=false \
  hydra.run.dir=$runs/student > "$out/train_student.log" 2>&1 || tail -5 "$out/train_student.log"
python3 scripts/amp_check.py $runs/student/checkpoints/last.pth device=cuda out=$runs/amp | tee "$out/amp_check.md"

echo "== 2. step time at full scale (bf16, then fp32)"
python3 scripts/bench_step.py scale=full trainer.amp=bf16 methods=none,dfd,mse,mgd,fgd,pkd iters=20 2>&1 | tee "$out/bench_step_full.txt" | tail -12
python3 scripts/bench_step.py scale=full methods=none,dfd,mgd iters=10 2>&1 | tee "$out/bench_step_full_fp32.txt" | tail -8

echo "== 3. step time at scale=bench"
python3 scripts/bench_step.py scale=bench methods=none,dfd,mgd iters=20 2>&1 | tee "$out/bench_step_bench.txt" | tail -8
