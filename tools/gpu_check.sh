#!/usr/bin/env bash
# GPU check, about 6-8 minutes on one GPU: what this project cannot test on its CPU machines.
#  1. SCSN's paper config (R50, 384x128, stages 3 and 4 at stride 1) and fast-reid's BoT-R50 train 200 iterations on
#     SyntheticReIDBench with fast-reid's fp16 AMP and channels_last, through tools/train_net.py --num-gpus 1, then
#     evaluate (train_net's own evaluation at the last epoch);
#     then the SCSN run teaches a BoT-R50 student the same way (configs/SCSN/distill/market_r50-bot_r50.yml: fast-reid's
#     Distiller with the SCSN teacher, fp16 AMP);
#  2. the SCSN checkpoint is exported to ONNX and checked against PyTorch (tools/export_onnx.py);
#  3. a gallery search with faiss (on the GPU where faiss-gpu is installed: pip install -e '.[gpu]');
#  4. tools/benchmark.py on the device: images/s, training step, peak memory, fp32 against AMP + channels_last, SCSN
#     against BoT and against itself with every module off.
# Everything goes to $OUT (default logs/gpu_check/<date>); the summary is printed and written to $OUT/summary.txt,
# the benchmark's JSON to $OUT/cost_<device>.json.
#
#     bash tools/gpu_check.sh                 # after `make install` (or with the project's environment active)
#     SMOKE=1 bash tools/gpu_check.sh         # the same steps on the CPU, tiny, in minutes: checks the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
OUT=${OUT:-logs/gpu_check/$(date +%Y%m%d-%H%M%S)}
export FASTREID_DATASETS=${FASTREID_DATASETS:-$PWD/datasets}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"

if [ "${SMOKE:-0}" = 1 ]; then
  DEVICE=cpu DATASET=SyntheticReIDTiny BATCH=16 EPOCHS=2 WARMUP=2
  SIZE=(INPUT.SIZE_TRAIN "[128, 64]" INPUT.SIZE_TEST "[128, 64]")
  BENCH=(--device cpu --sizes 128x64 --repeats 1 --infer-batch 2 --train-batch 4)
else
  DEVICE=cuda DATASET=SyntheticReIDBench BATCH=64 EPOCHS=4 WARMUP=50
  SIZE=()
  BENCH=(--device cuda --train-batch 64 --infer-batch 128 --repeats 5)
  $PY -c "
import sys, torch
if not torch.cuda.is_available():
    sys.exit('gpu_check: no CUDA device visible to torch; run this on a GPU machine (SMOKE=1 for the CPU).')
print(f'gpu_check: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, '
      f'{torch.cuda.device_count()} GPU(s)')"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU: smoke run"; } \
  | tee "$SUMMARY"

# On the GPU, 200 iterations: 4 epochs of SyntheticReIDBench's 3200 training images in batches of 64 (16 ids x 4).
TRAIN=(DATASETS.NAMES "(\"$DATASET\",)" DATASETS.TESTS "(\"$DATASET\",)" MODEL.BACKBONE.PRETRAIN False
       MODEL.DEVICE "$DEVICE" SOLVER.AMP.ENABLED True MODEL.MEMORY_FORMAT channels_last SOLVER.IMS_PER_BATCH "$BATCH"
       SOLVER.MAX_EPOCH "$EPOCHS" SOLVER.WARMUP_ITERS "$WARMUP" SOLVER.DELAY_EPOCHS 0 SOLVER.CHECKPOINT_PERIOD "$EPOCHS"
       TEST.EVAL_PERIOD "$EPOCHS" TEST.IMS_PER_BATCH 256 DATALOADER.NUM_WORKERS 4 SEED 0 "${SIZE[@]}")
declare -A CONFIG=([scsn_r50]=configs/SCSN/market_r50.yml [bot_r50]=configs/Market1501/bagtricks_R50.yml
                   [distill_bot_r50]=configs/SCSN/distill/market_r50-bot_r50.yml)
TEACHER=(KD.MODEL_CONFIG "(\"$OUT/scsn_r50/config.yaml\",)" KD.MODEL_WEIGHTS "(\"$OUT/scsn_r50/model_final.pth\",)")
for name in scsn_r50 bot_r50 distill_bot_r50; do
  start=$(date +%s)
  extra=(); [ "$name" = distill_bot_r50 ] && extra=("${TEACHER[@]}")
  $PY tools/train_net.py --num-gpus 1 --config-file "${CONFIG[$name]}" "${TRAIN[@]}" "${extra[@]}" \
    OUTPUT_DIR "$OUT/$name" > "$OUT/$name.log" 2>&1 || { tail -40 "$OUT/$name.log"; exit 1; }
  seconds=$(( $(date +%s) - start ))
  it=$(grep -oP ' time: \K[0-9.]+(?=  data_time)' "$OUT/$name.log" | tail -1)
  mem=$(grep -o "max_mem: [0-9]*M" "$OUT/$name.log" | tail -1 | cut -d' ' -f2 || true)
  metrics=$($PY -c "import json; r = json.load(open('$OUT/$name/eval_results.json')); \
print(f\"mAP {r['mAP']:.2f} Rank-1 {r['Rank-1']:.2f}\")")
  echo "$name: $EPOCHS epochs of $DATASET, AMP + channels_last on $DEVICE: $it s/it" \
       "($(awk "BEGIN { printf \"%.2f\", 1 / $it }") it/s), peak ${mem:-?} (fast-reid's max_mem, CUDA only)," \
       "$seconds s with evaluation; $metrics" | tee -a "$SUMMARY"
done

$PY tools/export_onnx.py --config-file "$OUT/scsn_r50/config.yaml" --output "$OUT/scsn_r50.onnx" \
  --json "$OUT/onnx.json" MODEL.WEIGHTS "$OUT/scsn_r50/model_final.pth" 2>&1 | grep -v Warning | tail -8 \
  | tee -a "$SUMMARY"

M=(--config-file "$OUT/scsn_r50/config.yaml" MODEL.WEIGHTS "$OUT/scsn_r50/model_final.pth")
$PY -c "import faiss; print('faiss', faiss.__version__, 'GPUs', faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') \
else 0, '(with faiss-cpu: pip install -e .[gpu] for the GPU index)')" | tee -a "$SUMMARY"
read -r GALLERY QUERY < <($PY -c "
import os, scsn
from scsn.engine.cli import dataset_items
print(os.path.dirname(dataset_items('$DATASET', 'gallery')[0][0]), dataset_items('$DATASET', 'query')[0][0])" \
  2>/dev/null)
$PY tools/search.py build --index "$OUT/gallery.faiss" --images "$GALLERY" "${M[@]}" 2>&1 | tail -1 | tee -a "$SUMMARY"
$PY tools/search.py query --index "$OUT/gallery.faiss" --images "$QUERY" --top-k 3 "${M[@]}" 2>&1 | tail -4 \
  | tee -a "$SUMMARY"

$PY tools/benchmark.py "${BENCH[@]}" --models "BoT-R50,SCSN-R50 (3 stages),SCSN-R50 (modules off)" \
  --paths "fp32,AMP + channels_last" --out "$OUT/cost_$DEVICE.json" 2>&1 | grep -v Warning | tail -16 \
  | tee -a "$SUMMARY"
echo "gpu_check: done; summary in $SUMMARY"
