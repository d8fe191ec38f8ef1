#!/bin/bash
# Requests and bytes of hourly incremental backups of a database made by
# `cargo xtask gen` (issue 18; docs/benchmarks.md, "Cost of hourly backups").
# Usage: DB=app.db [SQLVAULT_BIN=target/release/sqlvault] [WORK=dir] xtask/scripts/cost-hourly.sh
set -euo pipefail
B=${SQLVAULT_BIN:-target/release/sqlvault}
W=${WORK:-/tmp/cost-hourly}; rm -rf $W; mkdir -p $W
cp "${DB:?set DB to a database made by cargo xtask gen --size-mib 1024}" $W/app.db
export SQLVAULT_HOME=$W/home
$B key generate -o $W/key.txt > $W/rcpt 2>/dev/null
$B -q init $W/repo -r "$(cat $W/rcpt)" >/dev/null
$B -q backup $W/app.db $W/repo --json > $W/b0.json
# The peer in the same run: restic (Debian), to a local repository, the same file
# after each "hour" (a plain file copy: restic does not read SQLite). On S3 every file
# it creates is a PUT; its lock file is a PUT and a DELETE on top.
export RESTIC_PASSWORD=cost-hourly RESTIC_REPOSITORY=$W/restic
restic init -q >/dev/null
files() { find $W/restic -type f | wc -l; }
bytes() { du -sb $W/restic | cut -f1; }
rb=$(files); rs=$(bytes)
restic backup -q $W/app.db >/dev/null
echo "restic0 new-files $(( $(files) - rb )) new-bytes $(( $(bytes) - rs ))" > $W/restic.txt
# One "hour" of an application: 1,000 orders updated at random, 1,000 appended.
hour() {
  sqlite3 $W/app.db "PRAGMA journal_mode=WAL;
    UPDATE orders SET amount = amount + 1, status = 'paid'
      WHERE id IN (SELECT abs(random()) % (SELECT max(id) FROM orders) + 1 FROM generate_series(1, 1000));
    INSERT INTO orders(customer_id, amount, status, created, note)
      SELECT abs(random()) % 100000 + 1, 9.99, 'new', unixepoch(), hex(randomblob(40)) FROM generate_series(1, 1000);" >/dev/null
}
for i in 1 2 3 4 5 6; do
  hour
  $B -q backup $W/app.db $W/repo --json > $W/b$i.json
  rb=$(files); rs=$(bytes)
  restic backup -q $W/app.db >/dev/null
  echo "restic$i new-files $(( $(files) - rb )) new-bytes $(( $(bytes) - rs ))" >> $W/restic.txt
done
cat $W/restic.txt
hour
$B -q backup $W/app.db $W/repo --json --lease > $W/blease.json
$B -q check --cost $W/repo --json > $W/cost.json
$B check --cost $W/repo
python3 - <<PY
import json
for n in ["b0","b1","b2","b3","b4","b5","b6","blease"]:
    j=json.load(open("$W/%s.json"%n)); r=j["requests"]
    print(n, "GET",r["get"],"PUT",r["put"],"HEAD",r["head"],"LIST",r["list"],"DEL",r["delete"],"new",j["bytes_new"],"s",round(j["seconds"],2))
PY
