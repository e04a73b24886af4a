#!/bin/bash
# GPU run of issue 12's two benchmarks at the default budget (240 TFLOP per model), from a bare
# machine with PyTorch: synthesize + prepare (skipped when prepared data is there), then
# bench_peer's plan (every model's throughput probed back to back, alone on the GPU), then every
# job of that plan and both bench_learning recipes as processes sharing the GPU (a fixed number of
# steps each, so sharing does not change what "same wall" means), then the merged results.
# Run from the repo root:   bash bench/gpu_learning_peer.sh [OUT_DIR]   (default bench/results/gpu)
OUT=${1:-${OUT:-bench/results/gpu}}
LIMIT=${LIMIT:-480}     # seconds any one training process may take
BUDGET=${BUDGET:-240}   # TFLOP per model
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu BUDGET=0.2 checks the script itself on any machine
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null
python3 -c "import torch, torchvision, yaml, matplotlib; print('torch', torch.__version__, torch.cuda.is_available())" \
  || exit 1
SECONDS=0
if [ ! -f data/prepared/main/val/manifest.json ]; then
  python3 -m pipeline.cli synth > $OUT/synth.log 2>&1 || { tail -5 $OUT/synth.log; exit 1; }
  python3 -m pipeline.cli prepare > $OUT/prepare.log 2>&1 || { tail -5 $OUT/prepare.log; exit 1; }
fi
echo "data ready after $SECONDS s"
python3 bench/bench_peer.py --device $DEVICE --budget $BUDGET --plan-only --out $OUT/peer_plan.json || exit 1
JOBS=$(python3 -c "import json; print(' '.join(json.load(open('$OUT/peer_plan.json'))['plan']['jobs']))")
for job in $JOBS; do
  timeout $LIMIT python3 bench/bench_peer.py --device $DEVICE --loader-workers 2 --threads 1 \
    --plan $OUT/peer_plan.json --jobs $job --out "$OUT/peer_$job.json" > "$OUT/log_peer_$job.txt" 2>&1 &
done
for recipe in previous current; do
  timeout $LIMIT python3 bench/bench_learning.py --device $DEVICE --loader-workers 2 --threads 1 \
    --budget $BUDGET --machine-from $OUT/peer_plan.json \
    --recipes $recipe --out $OUT/learning_$recipe.json > $OUT/log_learning_$recipe.txt 2>&1 &
done
wait
echo "benches done after $SECONDS s"
python3 bench/bench_peer.py --merge $OUT/peer_*@*.json --out $OUT/peer.json
python3 bench/bench_learning.py --merge $OUT/learning_previous.json $OUT/learning_current.json \
  --out $OUT/learning.json
for f in $OUT/log_*.txt; do echo "== $f"; grep -v '^$' "$f" | tail -4; done
nvidia-smi --query-gpu=memory.used --format=csv,noheader 2>/dev/null
