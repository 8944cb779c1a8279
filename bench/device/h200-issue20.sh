#!/bin/bash
# Issue 20's GPU confirmation on a lent H200, one device call per phase (each under 10 minutes;
# a phase cut short resumes with the same command: the interrupted trial is queued again).
#   bash bench/device/h200-issue20.sh study   # the multi-objective serving study (11 trials)
#   bash bench/device/h200-issue20.sh grid    # auto_tune.sh's 8 grid points the study did not measure
#   bash bench/device/h200-issue20.sh hv      # both fronts and their hypervolumes
# Needs: source /root/vllm-env.sh (../shared/device/README.md, EXTRA_WHEELS with Optuna and its
# dependencies) and .device/configs carried (llama-3.1-8b.json); .device/issue20.db too after a
# release. Results under $OUT.
set -x
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH HPO_INFER_CACHE=/root/hpo-cache
CFG=$PWD/.device/configs
DB=sqlite:////root/issue20.db
date -u; nvidia-smi -L
# A fresh machine keeps nothing: a phase after a release starts from the study fetched last time,
# carried as .device/issue20.db (copy it there from the previous call's files).
[ -f /root/issue20.db ] || [ ! -f .device/issue20.db ] || cp .device/issue20.db /root/issue20.db
sed "s#MODEL#$CFG/llama-3.1-8b.json#" bench/device/vllm-serve-llama8b-mo.yaml > /root/mo.yaml
case "$1" in
  study)
    timeout -s TERM ${LIMIT:-560} python3 -m hpo_infer tune /root/mo.yaml --storage $DB
    echo "tune exit: $?"
    ;;
  grid)  # the same study, auto_tune.sh's points queued: measured unless the study has them already
    N=$(python3 bench/device/issue20_grid.py enqueue /root/mo.yaml $DB | python3 -c "import json,sys;print(json.load(sys.stdin)['trials'])")
    timeout -s TERM ${LIMIT:-560} python3 -m hpo_infer tune /root/mo.yaml --storage $DB --trials "$N"
    echo "grid exit: $?"
    ;;
  hv)
    python3 bench/device/issue20_grid.py hv /root/mo.yaml $DB | tee $OUT/hv.json
    ;;
esac
python3 bench/device/dump_trials.py $DB $OUT/issue20.json | tee $OUT/issue20.txt
cp /root/issue20.db $OUT/ 2>/dev/null
date -u
