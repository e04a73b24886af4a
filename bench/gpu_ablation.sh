#!/bin/bash
# The task ablation's GPU profile (issue 13): the default {seg} vs {seg, pose, densepose} question on
# one GPU, meant to finish in <= 15 minutes, from a clone with the project installed (Ray, MLflow
# and DVC import; a bare machine with only PyTorch cannot run the pipeline). Not run yet: no session
# has had a GPU since it was written, so its size is an estimate (README "The GPU profile").
#
# What differs from params.yaml (the 2-core CPU default): the cells train at 128 px (the main
# model's size, where sided limbs are wider than a few pixels) on 5 paired seeds, 24 epochs of
# 1,000 images each, on the GPU (bf16 autocast, DataLoader processes). Everything else, the
# statistics and the convergence rule included, is params.yaml's.
#
# Run from the repo root:   bash bench/gpu_ablation.sh [OUT_DIR]   (default bench/results/gpu_ablation)
# It rewrites params.yaml with the profile (comments are lost; `git checkout params.yaml` restores it).
set -u
OUT=${1:-${OUT:-bench/results/gpu_ablation}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
python3 -c "import torch, ray, mlflow, dvc; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  || { echo "needs the project installed (pip install -e .): Ray, MLflow and DVC must import"; exit 1; }
python3 - <<'PY' || exit 1
import yaml
from pipeline.config import apply_overrides, params_from_dict, read_params_file

profile = [
    "train.use_gpu=true",
    "train.cpus_per_worker=8",
    "train.loader_workers=4",
    "ablation.image_size=128",
    "ablation.seeds=[0, 1, 2, 3, 4]",
    "ablation.epochs=24",
]
raw = apply_overrides(read_params_file("params.yaml"), profile)
params_from_dict(raw)  # the profile is valid before anything runs
open("params.yaml", "w").write(yaml.safe_dump(raw, sort_keys=False))
print("params.yaml: the GPU ablation profile:", ", ".join(profile))
PY
SECONDS=0
/usr/bin/time -v dvc repro ablation/dvc.yaml > "$OUT/repro.log" 2>&1
rc=$?
echo "dvc repro ablation/dvc.yaml: exit $rc after $SECONDS s" | tee "$OUT/summary.txt"
grep -E "^ablation cell .*\([0-9]+ s\)$|Maximum resident" "$OUT/repro.log" | tee -a "$OUT/summary.txt"
cp reports/ablation.md reports/ablation.json "$OUT/" 2>/dev/null
grep -E "→ \*\*" reports/ablation.md 2>/dev/null | tee -a "$OUT/summary.txt"
exit $rc
