#!/bin/bash
# Issue 20's GPU confirmation on a lent H200.
#   bash bench/device/h200-issue20.sh study   # the multi-objective serving study (10 trials)
#   bash bench/device/h200-issue20.sh grid    # auto_tune.sh's 8 grid points the study did not measure
#   bash bench/device/h200-issue20.sh hv      # both fronts and their hypervolumes
#   bash bench/device/h200-issue20.sh all     # the three in turn
#   bash bench/device/h200-issue20.sh start   # `all` from a copy of the checkout in /root/issue20,
#                                             # in its own session: it outlives the call (a device
#                                             # call lasts 10 minutes; the whole run about 25)
#   bash bench/device/h200-issue20.sh poll S  # wait up to S s for `all` to end, copying what it has
#                                             # to $OUT every 30 s (nothing measured is lost to a
#                                             # call's limit or to the machine going back)
# A trial is never cut by a call's end this way, as a `timeout` per call would cut one.
# Needs: source /root/vllm-env.sh (../shared/device/README.md, EXTRA_WHEELS with Optuna and its
# dependencies) and .device/configs carried (llama-3.1-8b.json); .device/issue20.db too after a
# release. Results under $OUT (/root/issue20/results for a started run).
set -x
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH HPO_INFER_CACHE=/root/hpo-cache
CFG=$PWD/.device/configs
DB=sqlite:////root/issue20.db
RUN=/root/issue20
# A fresh machine keeps nothing: a phase after a release starts from the study fetched last time,
# carried as .device/issue20.db (copy it there from the previous call's files).
[ -f /root/issue20.db ] || [ ! -f .device/issue20.db ] || cp .device/issue20.db /root/issue20.db
sed "s#MODEL#$CFG/llama-3.1-8b.json#" bench/device/vllm-serve-llama8b-mo.yaml > /root/mo.yaml

dump() {
  python3 bench/device/dump_trials.py $DB $OUT/issue20.json > $OUT/issue20.txt 2>&1
  cp /root/issue20.db $OUT/ 2>/dev/null
}
study() { python3 -m hpo_infer tune /root/mo.yaml --storage $DB; echo "tune exit: $?"; }
grid() {  # the same study, auto_tune.sh's points queued: measured unless the study has them already
  N=$(python3 bench/device/issue20_grid.py enqueue /root/mo.yaml $DB | python3 -c "import json,sys;print(json.load(sys.stdin)['trials'])")
  python3 -m hpo_infer tune /root/mo.yaml --storage $DB --trials "$N" --no-validate
  echo "grid exit: $?"
}
hv() { python3 bench/device/issue20_grid.py hv /root/mo.yaml $DB | tee $OUT/hv.json; }

case "$1" in
  study|grid|hv) date -u; nvidia-smi -L; $1; dump; date -u ;;
  all) date -u; nvidia-smi -L; study; dump; grid; dump; hv; dump; date -u; touch $OUT/done ;;
  start)
    rm -rf $RUN && mkdir -p $RUN/results && cp -r bench hpo_infer pyproject.toml .device $RUN/ 2>/dev/null
    (cd $RUN && OUT=$RUN/results setsid nohup bash bench/device/h200-issue20.sh all > $RUN/results/all.log 2>&1 < /dev/null &)
    ;;
  poll)
    set +x
    end=$((SECONDS + ${2:-540}))
    while [ $SECONDS -lt $end ] && [ ! -f $RUN/results/done ]; do
      sleep 30; cp -r $RUN/results/. $OUT/ 2>/dev/null; cp /root/issue20.db $OUT/ 2>/dev/null
    done
    cp -r $RUN/results/. $OUT/ 2>/dev/null; cp /root/issue20.db $OUT/ 2>/dev/null
    tail -40 $OUT/all.log; cat $OUT/issue20.txt 2>/dev/null; nvidia-smi --query-gpu=memory.used --format=csv
    ;;
esac
