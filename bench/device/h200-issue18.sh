#!/bin/bash
# Issue 18's GPU evidence on a lent H200, one device call per phase (each under 10 minutes).
#   bash bench/device/h200-issue18.sh abba      # vLLM 8B baseline, spawn/fork/fork/spawn (values agree?)
#   bash bench/device/h200-issue18.sh stepped N # the stepped vLLM study, forked, N trials (resumes)
#   bash bench/device/h200-issue18.sh hf        # HF Gemma-2B flat study, spawn/fork/fork/spawn
# Needs: source /root/vllm-env.sh (../shared/device/README.md) and .device/configs carried
# (llama-3.1-8b.json, gemma-2b.json, HumanEval-SingleLineInfilling.jsonl.gz). Results under $OUT.
set -x
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH HPO_INFER_CACHE=/root/hpo-cache
CFG=$PWD/.device/configs
date -u; nvidia-smi -L
sed "s#MODEL#$CFG/llama-3.1-8b.json#" bench/device/vllm-llama8b-stepped.yaml > /root/vllm-stepped.yaml
sed -e "s#HUMANEVAL#$CFG/HumanEval-SingleLineInfilling.jsonl.gz#" -e "s#MODEL#$CFG/gemma-2b.json#" \
  bench/device/hf-gemma2b-flat.yaml > /root/hf-flat.yaml
case "$1" in
  abba)  # one trial per run: the baseline (vLLM defaults), the same config on both paths
    timeout -s TERM ${LIMIT:-560} python3 bench/trial_overhead.py --spec /root/vllm-stepped.yaml \
      --order spawn,fork,fork,spawn --out $OUT/abba.json -- --trials 1
    ;;
  stepped)
    DB=sqlite:////root/stepped.db
    timeout -s TERM ${LIMIT:-560} python3 -m hpo_infer tune /root/vllm-stepped.yaml --storage $DB --trials "$2" --no-validate
    echo "tune exit: $?"
    python3 bench/device/dump_trials.py $DB $OUT/stepped.json | tee $OUT/stepped.txt
    python3 -m hpo_infer report "$(python3 -c "import optuna;print(optuna.get_all_study_names('$DB')[0])")" \
      --storage $DB --out $OUT/stepped-report
    cp /root/stepped.db $OUT/
    ;;
  hf)
    timeout -s TERM ${LIMIT:-560} python3 bench/trial_overhead.py --spec /root/hf-flat.yaml \
      --order spawn,fork,fork,spawn --out $OUT/hf.json
    ;;
esac
ls -la ~/.cache/vllm/torch_compile_cache 2>/dev/null | head
date -u
