#!/bin/bash
# GPU check of the facing head (issue 12): the default recipe with / without model.facing_head,
# seeds 0 and 1, one process per run sharing the GPU (each is launch-bound at batch 8), from a
# bare machine with PyTorch: synthesize + prepare, then the four runs. Run from the repo root:
#   bash bench/gpu_sides.sh [OUT_DIR]      (default bench/results/gpu_sides)
OUT=${1:-${OUT:-bench/results/gpu_sides}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
python3 -c "import torch, yaml, tqdm, PIL, numpy; print('torch', torch.__version__, torch.cuda.is_available())" || exit 1
SECONDS=0
python3 -m pipeline.cli synth > $OUT/synth.log 2>&1 || { tail -5 $OUT/synth.log; exit 1; }
python3 -m pipeline.cli prepare > $OUT/prepare.log 2>&1 || { tail -5 $OUT/prepare.log; exit 1; }
echo "data ready after $SECONDS s"; tail -c 300 $OUT/prepare.log; echo
for s in 0 1; do for a in without with; do
  timeout 470 python3 bench/bench_sides.py --device cuda --loader-workers 3 --threads 1 --seeds $s --arms $a \
    --out $OUT/sides_${a}_s$s.json > $OUT/log_${a}_s$s.txt 2>&1 &
done; done
wait
echo "bench done after $SECONDS s"
python3 bench/bench_sides.py --merge $OUT/sides_*_s*.json --out $OUT/sides.json
for f in $OUT/log_*.txt; do echo "== $f"; grep -v '^$' $f | tail -6; done
nvidia-smi --query-gpu=memory.used --format=csv,noheader
