#!/usr/bin/env bash
# Load benchmark: webhook-gateway against nginx on the same machine, same load.
#
#   bench/run.sh                 # all scenarios, 8 s each
#   DURATION=15 bench/run.sh     # longer runs
#   SCENARIOS="journal" bench/run.sh   # some of: inline forward journal workflows
#   GATEWAY_BIN=path/to/webhook-gateway bench/run.sh   # a gateway already built
#
# Scenarios (each the same 1 KB JSON POST with keep-alive, wrk: 1 thread, 32 connections):
#   inline   gateway: API key + JSON Schema + 6-variable mapping + small script, result returned
#            nginx:   `return 200` with a fixed JSON body
#   forward  gateway: API key, body forwarded unchanged to a backend nginx, its answer relayed
#            nginx:   `proxy_pass` to the same backend with an upstream keep-alive pool
#   journal  gateway: the inline workflow with `response: accept`: each event written to the
#            run journal (SQLite, group commit, fsync) before its 202, then run in the
#            background; compared with the inline workflow answered synchronously (journal
#            cost = 1 - accept/inline), by throughput and by the gateway's CPU time per request
#   workflows gateway: the inline workflow on a gateway loading 10,000 workflows (copies of it)
#            and 1,000 API keys, against the same on one loading 10; resident memory of each
#
# wrk runs on CPU 0; the server under test and the backend nginx share CPU 1, one worker each.
# Prints req/s and p99 side by side with the gateway/nginx ratio. Installs nginx and wrk
# with apt-get when they are missing. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-32}
SCENARIOS=${SCENARIOS:-inline forward journal workflows}
wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }
for scenario in $SCENARIOS; do
  case $scenario in
    inline | forward | journal | workflows) ;;
    *) echo "bench: unknown scenario '$scenario' (inline, forward, journal, workflows)" >&2; exit 2 ;;
  esac
done
LOAD_CPU=${LOAD_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}

need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
if ! need nginx || ! need wrk; then
  echo "bench: installing nginx and wrk" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >&2
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
.ci/prereqs
if [ -n "${GATEWAY_BIN:-}" ]; then
  GATEWAY=$(realpath "$GATEWAY_BIN")
else
  cargo build --release -q
  GATEWAY=$PWD/target/release/webhook-gateway
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # up to a minute: a debug build loading 10,000 workflows takes a dozen seconds
  for _ in $(seq 1 1200); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "bench: nothing listens on port $1" >&2
  exit 1
}

BACKEND_PORT=$(free_port)
NGINX_PORT=$(free_port)
GATEWAY_PORT=$(free_port)
KEY=bench-key-0123456789

# The 1 KB event: an order with 12 items.
python3 - "$WORK/body.json" <<'EOF'
import json, sys
items = [{"sku": f"SKU-{i:04d}", "name": f"Item number {i}", "quantity": i % 3 + 1, "unit_price": 9.5 + i}
         for i in range(12)]
event = {"id": "ord_77001", "customer": {"email": "bench@example.com", "name": "Bench"},
         "currency": "EUR", "channel": "web", "items": items}
open(sys.argv[1], "w").write(json.dumps(event))
EOF
BODY_BYTES=$(wc -c <"$WORK/body.json")

cat >"$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "$KEY"
local file = io.open("$WORK/body.json", "rb")
wrk.body = file:read("*a")
file:close()
EOF

nginx_conf() { # name port body-of-server-block
  mkdir -p "$WORK/$1/logs"
  cat >"$WORK/$1/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/$1/body;
  proxy_temp_path $WORK/$1/proxy;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$2 reuseport;
    client_max_body_size 2m;
    $3
  }
}
EOF
}

start_pinned() { # name command...
  local name=$1; shift
  taskset -c "$SERVER_CPU" "$@" >"$WORK/$name.out" 2>&1 &
  PIDS+=($!)
}

nginx_conf backend "$BACKEND_PORT" 'location / { default_type application/json; return 200 "{\"ok\":true}"; }'
nginx_conf reference "$NGINX_PORT" '
    location /inline { default_type application/json; return 200 "{\"order_id\":\"ord_77001\",\"priority\":\"high\"}"; }
    location /forward { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }'
start_pinned backend "$NGINX" -p "$WORK/backend" -c "$WORK/backend/nginx.conf"
start_pinned reference "$NGINX" -p "$WORK/reference" -c "$WORK/reference/nginx.conf"

mkdir -p "$WORK/gateway/workflows" "$WORK/gateway/scripts" "$WORK/gateway/state"
cat >"$WORK/gateway/gateway.yaml" <<EOF
server:
  threads: 1
paths:
  state: $WORK/gateway/state
runs:
  workers: 2
  queue_capacity: 1000000
api_keys:
  - name: bench
    key: "$KEY"
backends:
  backend:
    addresses: ["http://127.0.0.1:$BACKEND_PORT"]
EOF
cp bench/workflows/inline.yaml "$WORK/gateway/workflows/"
cp bench/scripts/inline.rhai "$WORK/gateway/scripts/"
cat >"$WORK/gateway/workflows/forward.yaml" <<'EOF'
id: forward
forward:
  backend: backend
  path: /tickets
  body: original
EOF
sed 's/^id: inline$/id: accept/; $a response: accept' "$WORK/gateway/workflows/inline.yaml" \
  >"$WORK/gateway/workflows/accept.yaml"
start_pinned gateway "$GATEWAY" run --config "$WORK/gateway/gateway.yaml" --listen "127.0.0.1:$GATEWAY_PORT"
MAIN_GATEWAY_PID=${PIDS[-1]}

for port in "$BACKEND_PORT" "$NGINX_PORT" "$GATEWAY_PORT"; do wait_port "$port"; done
url_of() {
  "$GATEWAY" urls --json --config "$WORK/gateway/gateway.yaml" |
    python3 -c "import json,sys; print([w['url'] for w in json.load(sys.stdin) if w['id']=='$1'][0])" |
    sed -E "s#^https?://[^/]+#http://127.0.0.1:$GATEWAY_PORT#"
}
INLINE_URL=$(url_of inline)
FORWARD_URL=$(url_of forward)
ACCEPT_URL=$(url_of accept)

# Fail early, with the answer, if a target does not answer 200 (202 for accept).
for url in "$INLINE_URL" "$FORWARD_URL" "$ACCEPT_URL" "http://127.0.0.1:$NGINX_PORT/inline" "http://127.0.0.1:$NGINX_PORT/forward"; do
  status=$(curl -s -o "$WORK/check.out" -w '%{http_code}' -H "X-API-Key: $KEY" -H 'Content-Type: application/json' \
    --data-binary @"$WORK/body.json" "$url")
  expected=200
  [ "$url" = "$ACCEPT_URL" ] && expected=202
  if [ "$status" != "$expected" ]; then
    echo "bench: $url answered $status: $(cat "$WORK/check.out")" >&2
    exit 1
  fi
done

# Runs wrk and prints "requests-per-second p99-in-ms".
measure() {
  local out
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$WORK/post.lua" "$1")
  if echo "$out" | grep -q "Non-2xx"; then
    echo "bench: non-2xx answers from $1" >&2
    echo "$out" >&2
    exit 1
  fi
  local rps p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  echo "$rps $(to_ms "$p99")"
}
to_ms() { # wrk prints 1.23ms, 456.00us or 1.02s
  python3 -c "
v='$1'
for unit, scale in (('us', 0.001), ('ms', 1.0), ('m', 60000.0), ('s', 1000.0)):
    if v.endswith(unit):
        print(round(float(v[:-len(unit)]) * scale, 2)); break"
}

echo "webhook-gateway vs nginx: ${DURATION}s per run, ${CONNECTIONS} connections, ${BODY_BYTES}-byte JSON POST"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
if wants inline || wants forward; then
  printf '%-9s %14s %10s %14s %10s %12s\n' scenario gateway_rps p99_ms nginx_rps p99_ms rps_ratio
fi
for scenario in inline forward; do
  wants "$scenario" || continue
  if [ "$scenario" = inline ]; then gateway_url=$INLINE_URL; else gateway_url=$FORWARD_URL; fi
  read -r g_rps g_p99 < <(measure "$gateway_url")
  read -r n_rps n_p99 < <(measure "http://127.0.0.1:$NGINX_PORT/$scenario")
  ratio=$(python3 -c "print(round($g_rps / $n_rps, 2))")
  printf '%-9s %14s %10s %14s %10s %12s\n' "$scenario" "$g_rps" "$g_p99" "$n_rps" "$n_p99" "$ratio"
done

# The journal's cost: the same workflow accepted (journaled, 202, run in the background)
# against answered inline, measured again just before so that both come from the same minute.
# Sync goes first: accepted runs left running would take CPU from whatever comes next.
# Besides throughput, the gateway's CPU time per request (user + system, all its threads,
# accepted runs' background work included): steadier than req/s on a shared machine.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$MAIN_GATEWAY_PID/stat"; }
settled_cpu_ticks() { # once the background runs are done: CPU time stops growing
  local previous=-1 now
  while now=$(cpu_ticks) && [ "$now" != "$previous" ]; do previous=$now; sleep 0.3; done
  echo "$now"
}
cpu_us_per_request() { # ticks-before ticks-after req/s
  python3 -c "print(round(($2 - $1) / $(getconf CLK_TCK) * 1e6 / ($3 * $DURATION), 1))"
}

if wants journal; then
  before=$(settled_cpu_ticks)
  read -r s_rps s_p99 < <(measure "$INLINE_URL")
  middle=$(settled_cpu_ticks)
  read -r a_rps a_p99 < <(measure "$ACCEPT_URL")
  after=$(settled_cpu_ticks)
  s_cpu=$(cpu_us_per_request "$before" "$middle" "$s_rps")
  a_cpu=$(cpu_us_per_request "$middle" "$after" "$a_rps")
  echo
  printf '%-9s %14s %10s %14s %10s %12s %12s %12s %12s\n' scenario accept_rps p99_ms sync_rps p99_ms rps_ratio \
    accept_cpu_us sync_cpu_us cpu_ratio
  ratio=$(python3 -c "print(round($a_rps / $s_rps, 2))")
  cpu_ratio=$(python3 -c "print(round($s_cpu / $a_cpu, 2))")
  printf '%-9s %14s %10s %14s %10s %12s %12s %12s %12s\n' journal "$a_rps" "$a_p99" "$s_rps" "$s_p99" "$ratio" \
    "$a_cpu" "$s_cpu" "$cpu_ratio"
  runs_left=$(python3 - "$WORK/gateway/state/runs.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute("select count(*) from runs where state not in ('succeeded')").fetchone()[0])
PY
  )
  echo "journaled runs not (yet) succeeded when the load stopped: $runs_left"
  echo "journal files after the load: database $(du -m "$WORK/gateway/state/runs.db" | cut -f1) MiB," \
    "write-ahead log $(du -m "$WORK/gateway/state/runs.db-wal" | cut -f1) MiB"
fi

# Many workflows: the inline workflow measured on a gateway that loads 10 workflows, then on
# one that loads 10,000 (all copies of it under other ids), each with 1,000 API keys. Prints
# throughput and p99 side by side, and each gateway's resident memory after its load.
many_workflows_gateway() { # count -> directory with gateway.yaml, workflows and scripts
  local dir="$WORK/many-$1"
  mkdir -p "$dir/workflows" "$dir/scripts" "$dir/state"
  cp "$WORK/gateway/scripts/inline.rhai" "$dir/scripts/"
  python3 - "$dir" "$1" "$KEY" "$WORK/gateway/workflows/inline.yaml" <<'PY'
import sys
dir, count, key, template = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
body = "".join(line for line in open(template) if not line.startswith(("id:", "#")))
for i in range(count):
    open(f"{dir}/workflows/inline-{i:05d}.yaml", "w").write(f"id: inline-{i:05d}\n{body}")
keys = [f"  - name: key-{i:04d}\n    key: \"bench-key-{i:04d}-0123456789abcdef\"" for i in range(999)]
keys.append(f"  - name: bench\n    key: \"{key}\"")
open(f"{dir}/gateway.yaml", "w").write(
    f"server:\n  threads: 1\npaths:\n  state: {dir}/state\napi_keys:\n" + "\n".join(keys) + "\n")
PY
  echo "$dir"
}

rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

if wants workflows; then
  # The first gateway's accepted runs may still be executing: stop it so they take no CPU.
  kill "$MAIN_GATEWAY_PID" 2>/dev/null || true
  wait "$MAIN_GATEWAY_PID" 2>/dev/null || true
  echo
  printf '%-9s %14s %10s %14s %10s %12s %10s %10s\n' scenario w10k_rps p99_ms w10_rps p99_ms rps_ratio rss10_MiB rss10k_MiB
  declare -A MANY_RPS MANY_P99 MANY_RSS
  for count in 10 10000; do
    dir=$(many_workflows_gateway "$count")
    port=$(free_port)
    taskset -c "$SERVER_CPU" "$GATEWAY" run --config "$dir/gateway.yaml" --listen "127.0.0.1:$port" \
      >"$dir/gateway.out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$port"
    middle=$(printf 'inline-%05d' $((count / 2)))
    url=$("$GATEWAY" urls --json --config "$dir/gateway.yaml" |
      python3 -c "import json,sys; print([w['url'] for w in json.load(sys.stdin) if w['id']=='$middle'][0])" |
      sed -E "s#^https?://[^/]+#http://127.0.0.1:$port#")
    read -r rps p99 < <(measure "$url")
    MANY_RPS[$count]=$rps
    MANY_P99[$count]=$p99
    MANY_RSS[$count]=$(rss_mib "$pid")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
  ratio=$(python3 -c "print(round(${MANY_RPS[10000]} / ${MANY_RPS[10]}, 2))")
  printf '%-9s %14s %10s %14s %10s %12s %10s %10s\n' workflows "${MANY_RPS[10000]}" "${MANY_P99[10000]}" \
    "${MANY_RPS[10]}" "${MANY_P99[10]}" "$ratio" "${MANY_RSS[10]}" "${MANY_RSS[10000]}"
fi
