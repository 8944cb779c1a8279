#!/bin/bash
# One phase: a fresh database DB, db upgrade, then `worker SPEC --gpus GPUS --trials N` under `timeout LIMIT`.
# Usage: phase.sh DB GPUS TRIALS LIMIT LOGDIR
set -x
X2=$(cd "$(dirname "$0")" && pwd); source $X2/env.sh
DB=$1; GPUS=$2; N=$3; LIMIT=$4; LOGDIR=$5
SITE=${SITE:-/tmp/site}; HPO=${HPO:-/root/hpo}; PGPORT=${PGPORT:-55432}; PY=${PY:-python3}
SPEC=${SPEC:-studies/fleet-h100x2-hf.yaml}
URL=postgresql://nobody@127.0.0.1:$PGPORT/$DB
mkdir -p $LOGDIR
$PGBIN/psql -h 127.0.0.1 -p $PGPORT -U nobody -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
cd $HPO
export PYTHONPATH=$HPO:$SITE PYTHONUNBUFFERED=1
$PY -m hpo_infer db upgrade --storage $URL 2>&1 | tee $LOGDIR/$DB-upgrade.log
t0=$(date +%s.%N)
timeout $LIMIT $PY -m hpo_infer worker $SPEC ${SEL:---gpus $GPUS} --trials $N --storage $URL > $LOGDIR/$DB-worker.log 2>&1
rc=$?
t1=$(date +%s.%N)
echo "{\"db\": \"$DB\", \"gpus\": \"$GPUS\", \"trials\": $N, \"rc\": $rc, \"t0\": $t0, \"t1\": $t1, \"wall_s\": $(python3 -c "print(round($t1-$t0,3))")}" | tee $LOGDIR/$DB-phase.json
tail -n 25 $LOGDIR/$DB-worker.log
$PGBIN/psql -h 127.0.0.1 -p $PGPORT -U nobody -d $DB -c "select state, count(*) from trials group by state"
