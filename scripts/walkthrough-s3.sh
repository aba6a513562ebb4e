#!/usr/bin/env bash
# The job and every reader on an s3:// store, end to end: starts tansu and moto_server on
# free 127.0.0.1 ports, generates 20,000 events, runs the job with the store, checkpoints
# and model in a bucket, then check-config, store tables, query, training-set, drift
# report, store compact, replay --store s3://… (compared file by file with the live run)
# and check-store (pyarrow, DuckDB). Needs a built binary (cargo build), tansu (make
# tansu), moto_server and boto3 (the machine image has both).
#
# usage: scripts/walkthrough-s3.sh
set -uo pipefail
cd "$(dirname "$0")/.."
B="${SHOPSTREAM_BIN:-target/debug/shopstream}"
W="$(mktemp -d)"
tp=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mp=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd $W && "${SHOPSTREAM_TANSU:-$HOME/.cache/shopstream/tools/bin/tansu}" broker --listener-url tcp://127.0.0.1:$tp --advertised-listener-url tcp://127.0.0.1:$tp --storage-engine memory://tansu/ > tansu.log 2>&1 &)
moto_server -H 127.0.0.1 -p $mp > $W/moto.log 2>&1 &
trap 'pkill -f "tansu broker --listener-url tcp://127.0.0.1:$tp"; pkill -f "moto_server -H 127.0.0.1 -p $mp"; rm -rf "$W"' EXIT
sleep 3
curl -s -X PUT http://127.0.0.1:$mp/shop >/dev/null
export AWS_ENDPOINT_URL=http://127.0.0.1:$mp AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export SHOPSTREAM__KAFKA__BROKERS=127.0.0.1:$tp
export SHOPSTREAM__STORE__PATH=s3://shop/store
export SHOPSTREAM__MODEL__PATH=s3://shop/model/model.bin
export SHOPSTREAM__CHECKPOINT__DIR=s3://shop/checkpoints
printf '[store]\npath = "s3://shop/store"\n[store.options]\naws_secret_access_key = "testing"\n' > $W/job.toml
echo "## check-config"; $B check-config $W/job.toml > $W/cc.out 2>&1; echo "exit $?"; grep -nE "secret|path|reach|bucket" $W/cc.out | head -8
echo "## generate"; $B generate --seed 5 --events 20000 2>&1 | tail -2
echo "## run --stop-at-end"; /usr/bin/time -f "%e s" $B run --stop-at-end --summary-json $W/summary.json 2>&1 | tail -3
python3 -c "import json;d=json.load(open('$W/summary.json'));print({k:v for k,v in d.items() if not isinstance(v,(dict,list))})"
echo "## bucket objects"; python3 - <<PY
import boto3
s3=boto3.client('s3',endpoint_url='http://127.0.0.1:$mp',aws_access_key_id='testing',aws_secret_access_key='testing',region_name='us-east-1')
keys=[]; tok=None
while True:
    kw=dict(Bucket='shop'); 
    if tok: kw['ContinuationToken']=tok
    r=s3.list_objects_v2(**kw); keys+= [(o['Key'],o['Size']) for o in r.get('Contents',[])]
    if not r.get('IsTruncated'): break
    tok=r['NextContinuationToken']
from collections import Counter
c=Counter('/'.join(k.split('/')[:3]) for k,_ in keys)
for k,v in sorted(c.items()): print(v, k)
print(sum(1 for k,_ in keys), 'objects')
PY
echo "## store tables"; $B store tables
echo "## query"; $B query "SELECT scenario, count(*) AS n, round(avg(CAST(clicked AS DOUBLE)),4) AS ctr FROM examples GROUP BY scenario ORDER BY scenario"
echo "## training-set"; $B query --format csv --out $W/spine.csv "SELECT user_id, ts, clicked FROM examples ORDER BY ts LIMIT 500" ; $B training-set --spine $W/spine.csv --key user_id --out $W/ts.parquet 2>&1 | tail -3; ls -la $W/ts.parquet
echo "## drift report"; $B drift report --from 2026-01-01T00:00:00Z --to 2026-01-10T00:00:00Z --out $W/drift.html 2>&1 | tail -3; ls -la $W/drift.html
echo "## store compact"; $B store compact 2>&1 | tail -3
echo "## replay --store s3://shop/replayed"; $B replay --from 2026-01-01T00:00:00Z --to 2026-01-10T00:00:00Z --store s3://shop/replayed --summary-json $W/replay.json 2>&1 | tail -3
echo "## replayed example files equal?"; python3 - <<PY
import boto3, hashlib
s3=boto3.client('s3',endpoint_url='http://127.0.0.1:$mp',aws_access_key_id='testing',aws_secret_access_key='testing',region_name='us-east-1')
def files(prefix):
    out={}; tok=None
    while True:
        kw=dict(Bucket='shop',Prefix=prefix)
        if tok: kw['ContinuationToken']=tok
        r=s3.list_objects_v2(**kw)
        for o in r.get('Contents',[]):
            k=o['Key'][len(prefix):]
            if k.endswith('.parquet'): out[k]=hashlib.sha256(s3.get_object(Bucket='shop',Key=o['Key'])['Body'].read()).hexdigest()
        if not r.get('IsTruncated'): break
        tok=r['NextContinuationToken']
    return out
a=files('store/examples/'); b=files('replayed/examples/')
print(len(a),'live-run example files;',len(b),'replayed;', 'identical' if a==b else 'DIFFER: '+str(sorted(set(a.items())^set(b.items()))[:4]))
PY
echo "## check-store"; scripts/check-store.sh s3://shop/store 2>&1 | tail -12
