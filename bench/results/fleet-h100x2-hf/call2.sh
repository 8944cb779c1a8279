#!/bin/bash
# Call 2: Phase B (2 agents on GPUs 0,1, 16 trials, database hpo2); Phase A again first if the machine is new.
set -x
export PYTHONUNBUFFERED=1
X=$(cd "$(dirname "$0")" && pwd); L=/tmp/logs; mkdir -p $L
date -u; nvidia-smi -L
bash $X/setup.sh > $L/setup2.log 2>&1 || { tail -40 $L/setup2.log; exit 1; }
source $X/env.sh
if ! $PGBIN/psql -h 127.0.0.1 -p 55432 -U nobody -d postgres -Atc "select datname from pg_database" | grep -qx hpo1 || [ -n "$REDO_A" ]; then
  nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader -l 1 -f $L/smi-hpo1.csv & S=$!
  bash $X/phase.sh hpo1 0 ${A_TRIALS:-8} ${A_LIMIT:-200} $L; kill $S
fi
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader -l 1 -f $L/smi-hpo2.csv & S=$!
bash $X/phase.sh hpo2 0,1 ${B_TRIALS:-16} ${B_LIMIT:-200} $L
kill $S
PYTHONPATH=/tmp/site python3 $X/dump.py $OUT $L hpo1 hpo2 > $L/dump.log 2>&1; grep -v '^   ' $L/dump.log | head -120
$PGBIN/psql -h 127.0.0.1 -p 55432 -U nobody -d hpo2 -c "select t.number, t.state, a.value_json from trials t left join trial_user_attributes a on a.trial_id=t.trial_id and a.key='agent' order by t.number" > $L/hpo2-sql.txt 2>&1
$PGBIN/pg_dump -h 127.0.0.1 -p 55432 -U nobody hpo2 | gzip > $L/hpo2.sql.gz
$PGBIN/postgres -V
date -u
tar -czf $OUT/logs.tgz -C /tmp logs
