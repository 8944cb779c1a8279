#!/bin/bash
# Issue 16's GPU evidence on a lent H200, one device call per phase (each under 10 minutes).
# The study lives in /root/h200.db on the warm machine; every call copies it and a dump to $OUT.
#   bash bench/device/h200-issue16.sh vllm N   # the vLLM study up to N trials (enqueued seeds first)
#   bash bench/device/h200-issue16.sh hf       # Gemma-2B, HF, HumanEval (campaign-quick's grid)
# Needs: source /root/vllm-env.sh (../shared/device/README.md) and .device/configs carried
# (llama-3.1-8b.json, gemma-2b.json, HumanEval-SingleLineInfilling.jsonl.gz).
set -x
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH HPO_INFER_CACHE=/root/hpo-cache
CFG=$PWD/.device/configs
DB=${DB:-sqlite:////root/h200.db}
date -u; nvidia-smi -L
case "$1" in
  vllm)
    sed "s#synthetic: ../../shared/data/model-configs/llama-3.1-8b.json#synthetic: $CFG/llama-3.1-8b.json#" \
      studies/vllm-llama8b.yaml > /root/vllm-llama8b.yaml
    python3 bench/device/enqueue_h200.py /root/vllm-llama8b.yaml $DB || exit 1
    timeout -s TERM ${LIMIT:-520} python3 -m hpo_infer tune /root/vllm-llama8b.yaml --storage $DB --trials "$2" --no-validate
    ;;
  hf)
    sed -e "s#HUMANEVAL#$CFG/HumanEval-SingleLineInfilling.jsonl.gz#" -e "s#MODEL#$CFG/gemma-2b.json#" \
      bench/device/hf-gemma2b-humaneval.yaml > /root/hf-gemma.yaml
    timeout -s TERM ${LIMIT:-520} python3 -m hpo_infer tune /root/hf-gemma.yaml --storage $DB --no-validate
    ;;
esac
echo "tune exit: $?"
python3 bench/device/dump_trials.py $DB $OUT/trials.json | tee $OUT/trials.txt
cp ${DB#sqlite:///} $OUT/
date -u
