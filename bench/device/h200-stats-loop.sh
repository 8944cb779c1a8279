#!/bin/bash
# Interleaved runs of h200_stats_cost.py (one engine start each) inside one device call, each
# started only while enough of the call is left: a run cut by the call's limit would be lost.
#   bash bench/device/h200-stats-loop.sh off on off on
# Env: DEADLINE (epoch seconds the last run must end by; default now + BUDGET, BUDGET 560),
# FIRST (limit of the first run, which may compile: default 230), PER (the others: default 140).
# Needs: source /root/vllm-env.sh and .device/configs carried. Writes $OUT/stats.log, $OUT/smi.csv.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH HPO_INFER_CACHE=/root/hpo-cache
CFG=$PWD/.device/configs/llama-3.1-8b.json
DEADLINE=${DEADLINE:-$(($(date +%s) + ${BUDGET:-560}))}
FIRST=${FIRST:-230} PER=${PER:-140}
date -u; nvidia-smi -L
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,temperature.gpu,power.draw,utilization.gpu \
  --format=csv -l 2 >>"$OUT/smi.csv" 2>/dev/null &
smi=$!
i=0
for v in "$@"; do
  lim=$PER; [ -d /root/.cache/vllm/torch_compile_cache ] || lim=$FIRST
  now=$(date +%s)
  if ((now + lim > DEADLINE)); then echo "skip $v: $((DEADLINE - now)) s left, $lim needed"; continue; fi
  echo "== run $i $v at $(date -u +%T) (limit $lim s)" | tee -a "$OUT/stats.log"
  timeout "$lim" python3 bench/device/h200_stats_cost.py "$CFG" "$v" >>"$OUT/stats.log" 2>&1
  echo "rc $? after $(($(date +%s) - now)) s" | tee -a "$OUT/stats.log"
  i=$((i + 1))
done
kill "$smi" 2>/dev/null
grep -E "^RESULT|^== run|^rc " "$OUT/stats.log"
date -u
