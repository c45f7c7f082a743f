#!/usr/bin/env bash
# Portcullis gateway-endpoint benchmark; see bench/README.md.
#
#   bash bench/run.sh
#
# Environment (all optional):
#   BENCH_DURATION     wrk duration per run: 15s (default), 3s, 1m, or plain seconds
#   BENCH_CONNECTIONS  connection counts, default "16 64"
#   BENCH_THREADS      wrk threads, default 2
#   BENCH_ROUNDS       interleaved rounds of every run, default 1; with more, the
#                      ratios and a summary table use each run's median
#   BENCH_WARMUP       seconds of unrecorded warm-up per operation and target, default 1 (0: none)
#   BENCH_TARGETS      any of "sqlite postgres peer", default all three
#   BENCH_OPS          any of "introspect-json introspect-jwt token-cc revoke jwks", default all
#   BENCH_PG_URL       PostgreSQL server on loopback, default postgres://postgres@127.0.0.1:5432
#   PORTCULLIS_BIN     use this portcullis binary instead of building the release one
#   BENCH_KEEP=1       keep the scratch directory (server logs, databases)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
LUA_DIR="$BENCH_DIR/lua"
PEER_DIR="$BENCH_DIR/peer"

DURATION=${BENCH_DURATION:-15s}
[[ $DURATION =~ ^[0-9]+$ ]] && DURATION="${DURATION}s"
CONNECTIONS=${BENCH_CONNECTIONS:-16 64}
THREADS=${BENCH_THREADS:-2}
WARMUP_S=${BENCH_WARMUP:-1}
ROUNDS=${BENCH_ROUNDS:-1}
TARGETS=${BENCH_TARGETS:-sqlite postgres peer}
PG_URL=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}
PG_URL=${PG_URL%/}

case $DURATION in
  *[0-9]s) DURATION_S=${DURATION%s} ;;
  *[0-9]m) DURATION_S=$(( ${DURATION%m} * 60 )) ;;
  *) echo "BENCH_DURATION: expected e.g. 15s, 1m or 15, got '$DURATION'" >&2; exit 2 ;;
esac
[[ $DURATION_S =~ ^[0-9]+$ && $DURATION_S -ge 1 && $DURATION_S -le 600 ]] \
  || { echo "BENCH_DURATION must be between 1s and 10m" >&2; exit 2; }
[[ $WARMUP_S =~ ^[0-9]+$ && $WARMUP_S -le 60 ]] || { echo "BENCH_WARMUP: seconds, 0-60" >&2; exit 2; }
[[ $ROUNDS =~ ^[1-9]$ ]] || { echo "BENCH_ROUNDS: a number of rounds, 1-9" >&2; exit 2; }
for c in $CONNECTIONS; do
  [[ $c =~ ^[0-9]+$ && $c -ge $THREADS && $c -le 1024 ]] \
    || { echo "BENCH_CONNECTIONS: '$c' must be a number between BENCH_THREADS and 1024" >&2; exit 2; }
done
# Every request of this script goes to loopback; refuse anything else.
if ! [[ $PG_URL =~ ^postgres(ql)?://[^@/]*@?(127\.0\.0\.1|localhost)(:[0-9]+)?$ ]]; then
  echo "BENCH_PG_URL must be a postgres:// URL on 127.0.0.1 or localhost without a database" >&2
  exit 2
fi

# ---------------------------------------------------------------- output ---
mkdir -p "$BENCH_DIR/results"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULT_FILE="$BENCH_DIR/results/$STAMP.txt"
WRK_LOG="$BENCH_DIR/results/$STAMP.wrk.log"
exec 3>&1 4>&2
exec > >(tee "$RESULT_FILE" >&3) 2>&1
TEE_PID=$!

SCRATCH=$(mktemp -d /tmp/pc-bench.XXXXXX)
PIDS=()          # every process this script started and still owns
PG_DB=""         # scratch database to drop on exit

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { log "error: $*"; exit 1; }

stop_pid() {  # stop_pid PID: TERM, wait up to 10 s, then KILL
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

forget_pid() {
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

drop_pg_db() {
  [[ -n $PG_DB ]] || return 0
  PGCONNECT_TIMEOUT=5 timeout 30 psql "$PG_URL/postgres" -qAt -v ON_ERROR_STOP=1 \
    -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 \
    && log "dropped database $PG_DB" || log "warning: could not drop database $PG_DB"
  PG_DB=""
}

cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  drop_pg_db
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then
    log "scratch directory kept: $SCRATCH"
  else
    rm -rf "$SCRATCH"
  fi
  if [[ $rc -ne 0 ]]; then log "exit status $rc"; fi
  exec 1>&3 2>&4
  wait "$TEE_PID" 2>/dev/null || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -------------------------------------------------------------- installs ---
apt_install() {  # apt_install PKG...: install, running apt-get update once if that fails
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  log "installing $* (apt-get)"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >"$SCRATCH/apt.log" 2>&1 && return 0
  $sudo apt-get update -q >>"$SCRATCH/apt.log" 2>&1 || true
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >>"$SCRATCH/apt.log" 2>&1 && return 0
  tail -n 20 "$SCRATCH/apt.log"
  return 1
}

command -v wrk >/dev/null || apt_install wrk || die "wrk is required"
command -v curl >/dev/null || apt_install curl || die "curl is required"
command -v jq >/dev/null || apt_install jq || die "jq is required"

HAVE_PG=0
if [[ " $TARGETS " == *" postgres "* ]]; then
  command -v psql >/dev/null || apt_install postgresql-client || true
  if ! command -v psql >/dev/null; then
    log "note: psql not available; skipping PostgreSQL"
  elif ! PGCONNECT_TIMEOUT=5 timeout 10 psql "$PG_URL/postgres" -qAt -c 'select 1' >/dev/null 2>&1; then
    log "note: PostgreSQL at $PG_URL is unreachable; skipping PostgreSQL"
  else
    HAVE_PG=1
  fi
fi

HAVE_PEER=0
if [[ " $TARGETS " == *" peer "* ]]; then
  command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm || true
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    log "note: node/npm not available; skipping the oidc-provider peer"
  elif ! node -e 'const [a,b]=process.versions.node.split(".").map(Number);process.exit(a>22||(a===22&&b>=12)||(a===20&&b>=19)?0:1)'; then
    log "note: node $(node --version) is too old for oidc-provider 9 (needs ^20.19 || ^22.12 || >=23); skipping the peer"
  else
    if [[ ! -f $PEER_DIR/node_modules/oidc-provider/package.json ]] \
      || [[ $PEER_DIR/package-lock.json -nt $PEER_DIR/node_modules/.package-lock.json ]]; then
      log "installing peer dependencies (npm ci)"
      (cd "$PEER_DIR" && { npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error; }) \
        >"$SCRATCH/npm.log" 2>&1 || { tail -n 20 "$SCRATCH/npm.log"; die "npm install failed in bench/peer"; }
    fi
    HAVE_PEER=1
  fi
fi

# ----------------------------------------------------------------- build ---
if [[ -n ${PORTCULLIS_BIN:-} ]]; then
  BIN=$PORTCULLIS_BIN
  [[ -x $BIN ]] || die "PORTCULLIS_BIN=$BIN is not executable"
else
  log "building portcullis (cargo build --release -p portcullis)"
  (cd "$REPO_DIR" && cargo build --release -p portcullis) >"$SCRATCH/build.log" 2>&1 \
    || { tail -n 40 "$SCRATCH/build.log"; die "cargo build failed"; }
  TARGET_DIR=$(cd "$REPO_DIR" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
  BIN="$TARGET_DIR/release/portcullis"
  [[ -x $BIN ]] || die "built binary not found at $BIN"
fi

# --------------------------------------------------------------- helpers ---
USED_PORTS=" "
free_port() {  # a loopback TCP port nobody listens on
  local i p
  for ((i = 0; i < 200; i++)); do
    p=$(( 20000 + RANDOM % 40000 ))
    [[ $USED_PORTS == *" $p "* ]] && continue
    if command -v ss >/dev/null; then
      [[ -z $(ss -Hltn "sport = :$p" 2>/dev/null) ]] || continue
    elif (exec 9<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      continue
    fi
    USED_PORTS+="$p "
    echo "$p"
    return 0
  done
  die "no free loopback port found"
}

wait_http() {  # wait_http URL PID LOGFILE: until URL answers 200 (60 s at most)
  local url=$1 pid=$2 logf=$3 i
  for ((i = 0; i < 240; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$logf"
      die "server exited during start-up (log above)"
    fi
    [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" || true) == 200 ]] && return 0
    sleep 0.25
  done
  tail -n 30 "$logf"
  die "$url not ready after 60 s"
}

jws_header() {  # jws_header COMPACT_JWS: its decoded protected header, or "-"
  local h=${1%%.*}
  [[ $1 == *.*.* && -n $h ]] || { echo "-"; return; }
  h=$(tr '_-' '/+' <<<"$h")
  while (( ${#h} % 4 )); do h+="="; done
  base64 -d <<<"$h" 2>/dev/null | jq -c . 2>/dev/null || echo "-"
}

basic() { printf 'Basic %s' "$(printf '%s:%s' "$1" "$2" | base64 -w0)"; }

get_token() {  # get_token BASE AUTH: a fresh client_credentials access token
  local out
  out=$(curl -s -m 10 -X POST -H "Authorization: $2" -d grant_type=client_credentials -d scope=api "$1") || true
  jq -er .access_token <<<"$out" 2>/dev/null || { log "token request failed: $out"; return 1; }
}

peak_rss() {  # peak_rss PID: VmHWM in MiB
  awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"
}

cpu_ticks() {  # cpu_ticks: "<steal> <total>" jiffies of all CPUs from /proc/stat
  awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t }' /proc/stat 2>/dev/null || echo "0 0"
}

steal_pct() {  # steal_pct "S0 T0" "S1 T1": share of CPU time the hypervisor gave to others
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
    d = y[2] - x[2]; if (d > 0) printf "%.0f", 100 * (y[1] - x[1]) / d; else print "?" }'
}

# One row per wrk run: round|target|op|conns|rps|p50|p99|non2xx|sockerr|steal|status
ROWS=()
ROUND=1
# Per target|op|conns: every round's figures (space-separated), the median
# req/s (RPS, filled after the last round) and non-2xx over all rounds.
declare -A ALL_RPS=() ALL_P50=() ALL_P99=() ALL_STEAL=() RPS=() NON2XX=() RSS=() NOTES=()

run_wrk() {  # run_wrk TARGET OP CONNS MODE URL SCRIPT [VAR=VALUE...]; MODE "warmup" records nothing
  local target=$1 op=$2 c=$3 mode=$4 url=$5 script=$6
  shift 6
  local out line rps p50 p99 non2xx sockerr status steal secs=$DURATION_S ticks0
  [[ $mode == warmup ]] && secs=$WARMUP_S
  ticks0=$(cpu_ticks)
  # In the background so that a signal to this script interrupts `wait` at once.
  env BENCH_LUA_DIR="$LUA_DIR" "$@" \
    timeout $(( secs + 60 )) wrk -t"$THREADS" -c"$c" -d"${secs}s" --timeout 10s --latency \
    -s "$LUA_DIR/$script" "$url" >"$SCRATCH/wrk.out" 2>&1 &
  local wpid=$!
  PIDS+=("$wpid")
  wait "$wpid" || true
  forget_pid "$wpid"
  steal=$(steal_pct "$ticks0" "$(cpu_ticks)")
  out=$(<"$SCRATCH/wrk.out")
  { echo "=== $target $op c=$c ${mode:+($mode) }$url"; echo "$out"; echo; } >>"$WRK_LOG"
  [[ $mode == warmup ]] && return 0
  line=$(grep '^BENCH ' <<<"$out" | tail -n 1 || true)
  if [[ -z $line ]]; then
    log "  $target $op c=$c: wrk failed: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
    ROWS+=("$ROUND|$target|$op|$c|-|-|-|-|-|$steal|wrk failed")
    return 0
  fi
  rps=$(sed -E 's/.* rps=([^ ]+).*/\1/' <<<"$line")
  p50=$(sed -E 's/.* p50_ms=([^ ]+).*/\1/' <<<"$line")
  p99=$(sed -E 's/.* p99_ms=([^ ]+).*/\1/' <<<"$line")
  non2xx=$(sed -E 's/.* non2xx=([^ ]+).*/\1/' <<<"$line")
  sockerr=$(sed -E 's/.* sockerr=([^ ]+).*/\1/' <<<"$line")
  status=$(sed -E 's/.* status=([^ ]+).*/\1/' <<<"$line")
  if [[ $status == "-" ]]; then status=""; else status="first non-2xx: $status"; fi
  ROWS+=("$ROUND|$target|$op|$c|$rps|$p50|$p99|$non2xx|$sockerr|$steal|$status")
  local key="$target|$op|$c"
  ALL_RPS[$key]+="$rps "; ALL_P50[$key]+="$p50 "; ALL_P99[$key]+="$p99 "; ALL_STEAL[$key]+="$steal "
  NON2XX[$key]=$(( ${NON2XX[$key]:-0} + non2xx ))
  log "  $target $op c=$c: $rps req/s, p50 $p50 ms, p99 $p99 ms, non-2xx $non2xx, steal $steal %${status:+ ($status)}"
}

ALL_OPS="introspect-json introspect-jwt token-cc revoke jwks"
OPS=${BENCH_OPS:-$ALL_OPS}
for op in $OPS; do
  [[ " $ALL_OPS " == *" $op "* ]] || die "BENCH_OPS: unknown operation '$op' (known: $ALL_OPS)"
done

# Per target: what run_op needs (filled by prepare_target).
declare -A T_BASE=() T_IPATH=() T_TPATH=() T_RPATH=() T_JPATH=() T_GW=() T_SVC=() T_JWT=() \
  T_ITOK=() T_RTOK=() T_PID=()
READY=()         # targets prepared, in order

# prepare_target TARGET BASE INTROSPECT_PATH TOKEN_PATH REVOKE_PATH JWKS_PATH GW_AUTH SVC_AUTH JWT(yes|no)
prepare_target() {
  local target=$1 base=$2 ipath=$3 tpath=$4 rpath=$5 jpath=$6 gw=$7 svc=$8 jwt=$9
  local itok rtok ztok code body op

  itok=$(get_token "$base$tpath" "$svc") || die "$target: cannot obtain an access token"
  rtok=$(get_token "$base$tpath" "$svc") || die "$target: cannot obtain an access token"
  ztok=$(get_token "$base$tpath" "$svc") || die "$target: cannot obtain an access token"

  # One request of each kind first, so a missing endpoint shows up plainly.
  body=$(curl -s -m 10 -w '\n%{http_code}' -X POST -H "Authorization: $gw" \
         -d "token=$itok" -d token_type_hint=access_token "$base$ipath" || true)
  code=${body##*$'\n'}; body=${body%$'\n'*}
  log "  check introspect JSON: HTTP $code ${body:0:160}"
  body=$(curl -s -m 10 -w '\n%{http_code} %{content_type}' -X POST -H "Authorization: $gw" \
         -H 'Accept: application/token-introspection+jwt' -d "token=$itok" "$base$ipath" || true)
  code=${body##*$'\n'}; body=${body%$'\n'*}
  log "  check introspect JWT:  HTTP $code; JWS header $(jws_header "$body")"
  code=$(curl -s -m 10 -o /dev/null -w '%{http_code}' -X POST -H "Authorization: $svc" \
         -d "token=$ztok" "$base$rpath" || true)
  log "  check revoke:          HTTP $code"
  code=$(curl -s -m 10 -o /dev/null -w '%{http_code}' "$base$jpath" || true)
  log "  check jwks:            HTTP $code"

  T_BASE[$target]=$base; T_IPATH[$target]=$ipath; T_TPATH[$target]=$tpath
  T_RPATH[$target]=$rpath; T_JPATH[$target]=$jpath; T_GW[$target]=$gw; T_SVC[$target]=$svc
  T_JWT[$target]=$jwt; T_ITOK[$target]=$itok; T_RTOK[$target]=$rtok
  READY+=("$target")

  if (( WARMUP_S > 0 )); then
    log "  warm-up: ${WARMUP_S}s per operation (not recorded)"
    for op in $OPS; do
      run_op "$target" "$op" 16 warmup
    done
  fi
}

run_op() {  # run_op TARGET OP CONNS [warmup]
  local target=$1 op=$2 c=$3 mode=${4:-}
  local base=${T_BASE[$1]} gw=${T_GW[$1]} svc=${T_SVC[$1]}
  case $op in
    introspect-json)
      run_wrk "$target" "$op" "$c" "$mode" "$base${T_IPATH[$target]}" introspect.lua \
        BENCH_AUTH="$gw" BENCH_TOKEN="${T_ITOK[$target]}" ;;
    introspect-jwt)
      if [[ ${T_JWT[$target]} != yes ]]; then
        [[ $mode == warmup ]] || ROWS+=("$ROUND|$target|$op|$c|n/a|n/a|n/a|n/a|n/a|-|not supported")
        return 0
      fi
      run_wrk "$target" "$op" "$c" "$mode" "$base${T_IPATH[$target]}" introspect.lua \
        BENCH_AUTH="$gw" BENCH_TOKEN="${T_ITOK[$target]}" BENCH_ACCEPT=application/token-introspection+jwt ;;
    token-cc)
      run_wrk "$target" "$op" "$c" "$mode" "$base${T_TPATH[$target]}" token.lua BENCH_AUTH="$svc" BENCH_SCOPE=api ;;
    revoke)
      run_wrk "$target" "$op" "$c" "$mode" "$base${T_RPATH[$target]}" revoke.lua \
        BENCH_AUTH="$svc" BENCH_TOKEN="${T_RTOK[$target]}" ;;
    jwks)
      run_wrk "$target" "$op" "$c" "$mode" "$base${T_JPATH[$target]}" jwks.lua ;;
  esac
}

start_portcullis() {  # start_portcullis TARGET DATABASE_URL: start, register clients, prepare
  local target=$1 dburl=$2 dir="$SCRATCH/$1" port admin pid gw_secret svc_secret out
  mkdir -p "$dir"
  port=$(free_port); admin=$(free_port)
  local -a envs=(
    PORTCULLIS_DATABASE_URL="$dburl"
    PORTCULLIS_HTTP_PUBLIC_ADDR="127.0.0.1:$port"
    PORTCULLIS_HTTP_ADMIN_ADDR="127.0.0.1:$admin"
    PORTCULLIS_ISSUER="http://127.0.0.1:$port"
    PORTCULLIS_KEYS_DIR="$dir/keys"
    PORTCULLIS_LOG_LEVEL=warn
    # One load generator on one IP and one client id would trip the
    # per-IP/per-client /token limits (README "Rate limits"); the bench
    # measures the endpoint, so those two rules are off here.
    PORTCULLIS_RATE_LIMITS_TOKEN_PER_IP=0
    PORTCULLIS_RATE_LIMITS_TOKEN_PER_CLIENT=0
  )
  # The server refuses PORTCULLIS_* variables it does not know, such as
  # this script's own PORTCULLIS_BIN.
  log "[$target] starting portcullis on 127.0.0.1:$port"
  (cd "$dir" && exec env -u PORTCULLIS_BIN "${envs[@]}" "$BIN" serve) >"$dir/server.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_http "http://127.0.0.1:$port/readyz" "$pid" "$dir/server.log"

  out=$(cd "$dir" && env -u PORTCULLIS_BIN "${envs[@]}" "$BIN" client create --name gw --id gw --grant client_credentials \
        --scope api --may-introspect --exchange-audience orders-api --json 2>&1) \
    || die "[$target] client create gw failed: $out"
  gw_secret=$(jq -er .client_secret <<<"$out") || die "[$target] unexpected output: $out"
  out=$(cd "$dir" && env -u PORTCULLIS_BIN "${envs[@]}" "$BIN" client create --name svc --id svc --grant client_credentials \
        --scope "api read write" --json 2>&1) \
    || die "[$target] client create svc failed: $out"
  svc_secret=$(jq -er .client_secret <<<"$out") || die "[$target] unexpected output: $out"

  T_PID[$target]=$pid
  prepare_target "$target" "http://127.0.0.1:$port" /introspect /token /revoke /jwks.json \
    "$(basic gw "$gw_secret")" "$(basic svc "$svc_secret")" yes
}

start_peer() {
  local dir="$SCRATCH/peer" port pid gw_secret svc_secret disc ipath tpath rpath jpath jwt=no
  mkdir -p "$dir"
  port=$(free_port)
  gw_secret=$(head -c 32 /dev/urandom | base64 -w0 | tr '+/' '-_' | tr -d '=')
  svc_secret=$(head -c 32 /dev/urandom | base64 -w0 | tr '+/' '-_' | tr -d '=')
  log "[peer] starting oidc-provider $(jq -r .version "$PEER_DIR/node_modules/oidc-provider/package.json") (node $(node --version)) on 127.0.0.1:$port"
  (cd "$PEER_DIR" && exec env PEER_PORT="$port" PEER_GW_SECRET="$gw_secret" PEER_SVC_SECRET="$svc_secret" \
     NODE_ENV=production node server.mjs) >"$dir/server.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_http "http://127.0.0.1:$port/.well-known/openid-configuration" "$pid" "$dir/server.log"

  disc=$(curl -s -m 10 "http://127.0.0.1:$port/.well-known/openid-configuration")
  path_of() { jq -er ".$1" <<<"$disc" | sed -E 's#^https?://[^/]+##'; }
  ipath=$(path_of introspection_endpoint) || die "[peer] no introspection_endpoint in discovery"
  tpath=$(path_of token_endpoint) || die "[peer] no token_endpoint in discovery"
  rpath=$(path_of revocation_endpoint) || die "[peer] no revocation_endpoint in discovery"
  jpath=$(path_of jwks_uri) || die "[peer] no jwks_uri in discovery"
  # features.jwtIntrospection advertises introspection signing algorithms.
  if jq -e '(.introspection_signing_alg_values_supported // []) | length > 0' <<<"$disc" >/dev/null; then
    jwt=yes
  else
    NOTES[peer]="JWT introspection not enabled (features.jwtIntrospection)"
  fi

  T_PID[peer]=$pid
  prepare_target peer "http://127.0.0.1:$port" "$ipath" "$tpath" "$rpath" "$jpath" \
    "$(basic gw "$gw_secret")" "$(basic svc "$svc_secret")" "$jwt"
}

# ------------------------------------------------------------------- run ---
START=$SECONDS
log "Portcullis benchmark $STAMP: wrk $DURATION x ${THREADS} threads, connections: $CONNECTIONS"
log "host: $(nproc) cores, $(uname -sr); binary: $BIN"

# Every server is started first; then each operation and connection count
# runs on every target back to back, so a change in the host's load (CPU
# steal) hits Portcullis and the peer alike instead of one whole target.
if [[ " $TARGETS " == *" sqlite "* ]]; then
  start_portcullis sqlite "sqlite://$SCRATCH/sqlite/portcullis.db?mode=rwc"
fi
if [[ $HAVE_PG == 1 ]]; then
  PG_DB="pc_bench_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  PGCONNECT_TIMEOUT=5 timeout 30 psql "$PG_URL/postgres" -qAt -v ON_ERROR_STOP=1 -c "CREATE DATABASE $PG_DB" >/dev/null \
    || die "cannot create database $PG_DB"
  log "created database $PG_DB"
  start_portcullis postgres "$PG_URL/$PG_DB"
fi
if [[ $HAVE_PEER == 1 ]]; then
  start_peer
fi
for ROUND in $(seq 1 "$ROUNDS"); do
  (( ROUNDS > 1 )) && log "round $ROUND of $ROUNDS"
  for op in $OPS; do
    for c in $CONNECTIONS; do
      for t in "${READY[@]}"; do
        run_op "$t" "$op" "$c"
      done
    done
  done
done
median() {  # median "N N N ...": the middle value (mean of the two middle ones)
  tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2];
                             else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
for key in "${!ALL_RPS[@]}"; do
  RPS[$key]=$(median "${ALL_RPS[$key]}")
done
for t in "${READY[@]}"; do
  RSS[$t]=$(peak_rss "${T_PID[$t]}")
  stop_pid "${T_PID[$t]}"; forget_pid "${T_PID[$t]}"
  log "[$t] stopped; peak RSS ${RSS[$t]} MiB"
done
drop_pg_db

# ---------------------------------------------------------------- report ---
echo
echo "Results (wrk -t$THREADS -d$DURATION --latency, loopback; $(nproc) cores shared by server and load generator)"
echo
fmt='%5s %-9s %-16s %6s %10s %9s %9s %8s %8s %7s  %s\n'
printf "$fmt" round target operation conns "req/s" "p50 ms" "p99 ms" non-2xx sockerr "steal%" note
printf "$fmt" ----- --------- ---------------- ------ ---------- --------- --------- -------- -------- ------- ----
for row in "${ROWS[@]}"; do
  IFS='|' read -r r t op c rps p50 p99 n2 se st note <<<"$row"
  printf "$fmt" "$r" "$t" "$op" "$c" "$rps" "$p50" "$p99" "$n2" "$se" "$st" "$note"
done
echo "(steal%: CPU time the hypervisor gave to other guests during the run; above a few"
echo " per cent the figures of that run say more about the host than about the server)"

if (( ROUNDS > 1 )); then
  echo
  echo "Median of $ROUNDS rounds per row (req/s, p50 and p99 each their own median; steal: the rounds' values):"
  mfmt='%-9s %-16s %6s %10s %9s %9s %8s  %s\n'
  printf "$mfmt" target operation conns "req/s" "p50 ms" "p99 ms" non-2xx "steal%"
  printf "$mfmt" --------- ---------------- ------ ---------- --------- --------- -------- ------
  for op in $OPS; do
    for c in $CONNECTIONS; do
      for t in "${READY[@]}"; do
        key="$t|$op|$c"
        [[ -n ${ALL_RPS[$key]:-} ]] || continue
        printf "$mfmt" "$t" "$op" "$c" "${RPS[$key]}" "$(median "${ALL_P50[$key]}")" \
          "$(median "${ALL_P99[$key]}")" "${NON2XX[$key]}" "$(xargs <<<"${ALL_STEAL[$key]}" | tr ' ' ',')"
      done
    done
  done
fi

echo
echo "Peak RSS (VmHWM at the end of each target's runs):"
for t in sqlite postgres peer; do
  if [[ -n ${RSS[$t]:-} ]]; then printf '  %-9s %8s MiB\n' "$t" "${RSS[$t]}"; fi
done
if [[ $HAVE_PG != 1 && " $TARGETS " == *" postgres "* ]]; then echo "  postgres  skipped (PostgreSQL unreachable)"; fi
if [[ $HAVE_PEER != 1 && " $TARGETS " == *" peer "* ]]; then echo "  peer      skipped (node/npm unavailable)"; fi
for t in "${!NOTES[@]}"; do echo "  note ($t): ${NOTES[$t]}"; done

ratio() {  # ratio TARGET OP CONNS: Portcullis req/s / peer req/s
  local a=${RPS["$1|$2|$3"]:-} b=${RPS["peer|$2|$3"]:-} mark=""
  [[ -n $a && -n $b ]] || { echo "n/a"; return; }
  if [[ ${NON2XX["$1|$2|$3"]:-0} != 0 || ${NON2XX["peer|$2|$3"]:-0} != 0 ]]; then mark="*"; fi
  awk -v a="$a" -v b="$b" -v m="$mark" 'BEGIN { if (b > 0) printf "%.2f%s", a / b, m; else print "n/a" }'
}

if [[ $HAVE_PEER == 1 ]]; then
  echo
  echo "Throughput ratio Portcullis / oidc-provider (req/s$( (( ROUNDS > 1 )) && echo ", medians of $ROUNDS rounds"); >1 means Portcullis is faster; * = non-2xx responses present):"
  rfmt='%-16s %6s %14s %14s\n'
  printf "$rfmt" operation conns sqlite/peer postgres/peer
  printf "$rfmt" ---------------- ------ -------------- --------------
  for op in $OPS; do
    for c in $CONNECTIONS; do
      printf "$rfmt" "$op" "$c" "$(ratio sqlite "$op" "$c")" "$(ratio postgres "$op" "$c")"
    done
  done
  if [[ -n ${RSS[peer]:-} ]]; then
    for t in sqlite postgres; do
      if [[ -n ${RSS[$t]:-} ]]; then
        awk -v t="$t" -v a="${RSS[$t]}" -v b="${RSS[peer]}" \
          'BEGIN { if (b > 0) printf "peak RSS %s/peer: %.2f\n", t, a / b }'
      fi
    done
  fi
fi

echo
log "finished in $(( SECONDS - START )) s; results: bench/results/$STAMP.txt, raw wrk output: bench/results/$STAMP.wrk.log"
