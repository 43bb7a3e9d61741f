#!/bin/bash
# run queries through the proxy (relay on/off), normalize lines, compare
cfg=$1
for mode in relay node; do
  rm -f /tmp/ev-$mode.ndjson
  if [ $mode = node ]; then export CUSTOS_DATAPROXY_RELAY=node; else unset CUSTOS_DATAPROXY_RELAY; fi
  (CUSTOS_LOG_LEVEL=warn ../bin/custos.js dataproxy --config $cfg --upstream postgres://postgres@127.0.0.1:5432/pgb --listen 127.0.0.1:6499 --log-file /tmp/ev-$mode.ndjson 2>err-$mode.txt & echo $! > pid)
  sleep 2.5
  for m in simple extended prepared; do pgbench -n -S -M $m -c 2 -j 1 -t 50 postgresql://bench:bench@127.0.0.1:6499/pgb?sslmode=disable 2>&1 | grep -E "^tps|processed"; done
  PGPASSWORD=bench psql -h 127.0.0.1 -p 6499 -U bench pgb -c "select 1 as a, 'x\"y' as b" -c "select aid, abalance from pgbench_accounts where aid = 3" -c "select aid from pgbench_accounts where aid = 4" -c "select nope" -c "select 2" > /dev/null 2>&1
  kill -INT $(cat pid); sleep 1.5
done
unset CUSTOS_DATAPROXY_RELAY
norm() { sed -E 's/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/UUID/g; s/"eventTime":"[^"]*"/"eventTime":"T"/g; s/"sourceIp":"[^"]*"/"sourceIp":"IP"/g; s/aid = [0-9]+/aid = N/g' $1 | sort; }
wc -l /tmp/ev-relay.ndjson /tmp/ev-node.ndjson
diff <(norm /tmp/ev-relay.ndjson | uniq -c) <(norm /tmp/ev-node.ndjson | uniq -c) && echo SAME
node -e 'for (const l of require("fs").readFileSync("/tmp/ev-relay.ndjson","utf8").trim().split("\n")) JSON.parse(l); console.log("all lines parse")'
