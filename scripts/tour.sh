#!/usr/bin/env bash
# The kit-based tour, as a new user runs it: one operator, two data holders, two edge devices,
# each in its own folder under WORK, talking only over loopback. Files move between personas only
# as the kits `fedge kit` writes (copying a kit folder to its site is "handing it over"); each
# holder makes its own data, the operator its own held-out set.
#
#   scripts/tour.sh WORK      (WORK: a new or empty folder; needs fedge, fedge-client,
#                              fedge-agent, flower-superlink and mosquitto on PATH, and python3)
#
# Steps: certs + SuperLink with SuperNode auth + enrollment endpoint + signing key; holder kits;
# holders enroll and join (start.sh); 1 training round; export, sign, place in two local folders;
# broker + device kits; devices start (start.sh); rollout; each device classifies a sentence with
# the new version. Every background process is stopped on exit (trap), whatever happened.
set -euo pipefail

WORK_ARG=${1:?usage: scripts/tour.sh WORK-FOLDER}
mkdir -p "$WORK_ARG"
WORK=$(cd "$WORK_ARG" && pwd)
if [ -n "$(ls -A "$WORK")" ]; then
    echo "tour: $WORK is not empty; give a new or empty folder" >&2
    exit 2
fi
for tool in fedge fedge-client fedge-agent flower-superlink mosquitto python3; do
    command -v "$tool" > /dev/null || { echo "tour: $tool is not on PATH" >&2; exit 2; }
done

# Offline model (the builtin one ships in a package), no telemetry, logs written as they happen.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 PYTHONUNBUFFERED=1

set -m  # every background command gets a process group of its own, so the trap can stop it all
PIDS=()
FG_PID=
cleanup() {
    local status=$? pid i
    trap - EXIT INT TERM
    if [ -n "$FG_PID" ]; then kill -TERM -- "-$FG_PID" 2> /dev/null || true; fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do  # last started first: devices ... SuperLink
        kill -TERM "${PIDS[i]}" 2> /dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.2; done
        kill -KILL -- "-$pid" 2> /dev/null || true  # whatever is left in its group
    done
    if [ "$status" -ne 0 ]; then
        echo "tour: FAILED (exit $status); logs under $WORK" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

START=$SECONDS
step() { printf '\n== %s\n' "$*"; }
# as PERSONA CMD...: run a command in that persona's folder, showing it as the user would type it.
as() {
    local who=$1
    shift
    printf '%s$ %s\n' "$who" "$*"
    # In the background and waited for, so a signal to this script runs the trap at once.
    (cd "$WORK/$who" && exec "$@") &
    FG_PID=$!
    local rc=0
    wait "$FG_PID" || rc=$?
    FG_PID=
    return "$rc"
}
# bg PERSONA LOG CMD...: the same, in the background, output in PERSONA/LOG.
bg() {
    local who=$1 log=$2
    shift 2
    printf '%s$ %s > %s &\n' "$who" "$*" "$log"
    (cd "$WORK/$who" && exec "$@") > "$WORK/$who/$log" 2>&1 &
    PIDS+=($!)
    LAST_PID=$!
    disown "$!"  # no "Terminated" job reports; the trap stops it
}
# wait_for PERSONA LOG TEXT SECONDS: until the log shows TEXT; fail if its process ended first.
wait_for() {
    local who=$1 log=$2 text=$3 limit=$4 pid=$LAST_PID
    for _ in $(seq $((limit * 5))); do
        if grep -qF -- "$text" "$WORK/$who/$log"; then return 0; fi
        if ! kill -0 "$pid" 2> /dev/null; then break; fi
        sleep 0.2
    done
    echo "tour: $who/$log never said '$text':" >&2
    tail -n 20 "$WORK/$who/$log" >&2
    return 1
}
USED_PORTS=" "
free_port() {  # a loopback port nothing listens on (bash's /dev/tcp), not handed out before
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        case "$USED_PORTS" in *" $port "*) continue ;; esac
        if ! (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
            USED_PORTS+="$port "
            echo "$port"
            return
        fi
    done
}
hand_over() {  # KIT PERSONA: the operator hands a kit folder to its site (out of band)
    echo "operator hands over $1 to $2 (as $2/kit)"
    cp -R "$WORK/operator/$1" "$WORK/$2/kit"
}

mkdir -p "$WORK"/{operator,holder-a,holder-b,device-1,device-2}
SUPERLINK_PORT=$(free_port)
ENROLL_PORT=$(free_port)
BROKER_PORT=$(free_port)

step "1. operator: certificates, SuperLink with SuperNode auth, enrollment endpoint, signing key"
as operator fedge certs --out pki | tee "$WORK/operator/certs.txt"
# The exact SuperLink line `fedge certs` printed, on a free port, admitting enrolled nodes only.
read -r -a superlink < <(sed -n 's/^start the SuperLink with: //p' "$WORK/operator/certs.txt")
for i in "${!superlink[@]}"; do
    if [ "${superlink[i]}" = --port ]; then superlink[i + 1]=$SUPERLINK_PORT; fi
done
case " ${superlink[*]} " in *" --enable-supernode-auth "*) ;; *) superlink+=(--enable-supernode-auth) ;; esac
bg operator superlink.log "${superlink[@]}"
wait_for operator superlink.log "Uvicorn running on" 60
bg operator enroll.log fedge enroll serve --certs pki --superlink "127.0.0.1:$SUPERLINK_PORT" \
    --port "$ENROLL_PORT"
wait_for operator enroll.log "enrollment endpoint" 30
as operator fedge keys generate --out keys

step "2. operator: a tiny federation (1 round, short inputs) and one kit per holder"
cat > "$WORK/operator/federation.yaml" << 'EOF'
apiVersion: fedge/v1
kind: FederationPolicy
metadata:
  name: tour
  labels: {app: sentiment}
spec:
  model:
    source: builtin:all-MiniLM-L6-v2
    task: sequence-classification
    numLabels: 2
    maxLength: 32
    pooling: mean
  rounds: 1
  clients: {perRound: 2, minimum: 2}
  roundTimeout: 5m
  aggregation: {strategy: fedavg}
  protection: none
  training: {localEpochs: 2, batchSize: 32, learningRate: 0.05, maxPhysicalBatchSize: 64}
  privacy: {targetEpsilon: 8.0, delta: 1e-3, maxGradNorm: 1.0, accountant: rdp}
EOF
echo "operator wrote federation.yaml (policies/examples/federation.yaml, shrunk: 1 round, 2 holders)"
for holder in holder-a holder-b; do
    as operator fedge kit holder "$holder" --ca pki/ca.crt --policy federation.yaml \
        --coordinator "127.0.0.1:$ENROLL_PORT" --out "kits/$holder"
    hand_over "kits/$holder" "$holder"
done

step "3. holders: their own data, then the kit's start.sh (enroll once, join)"
seed=1
for holder in holder-a holder-b; do
    as "$holder" fedge-client data synth --out data --clients 1 --examples 80 --heldout 0 \
        --seed "$seed"
    seed=$((seed + 1))
    # Two SuperNodes on one machine need two local ports (on separate machines the default does).
    bg "$holder" start.log ./kit/start.sh data/client-0.tsv --port "$(free_port)"
    wait_for "$holder" start.log "joined 127.0.0.1:$SUPERLINK_PORT as $holder" 120
    grep -F "joined" "$WORK/$holder/start.log"
done

step "4. operator: train 1 round, export, sign, place in two local folders"
as operator fedge train --policy federation.yaml --superlink "127.0.0.1:$SUPERLINK_PORT" \
    --ca pki/ca.crt --rounds 1 --workdir run --timeout 600
for holder in holder-a holder-b; do  # what each holder saw of the round
    sed -n "s/^round /$holder: round /p" "$WORK/$holder/start.log"
done
as operator fedge-client data synth --out heldout --clients 1 --examples 1 --heldout 60 --seed 9
as operator fedge export --policy federation.yaml --workdir run --heldout heldout/heldout.tsv \
    --key keys/signing.key --label app=sentiment --max-length 32 --out artifact
cat > "$WORK/operator/inventory.yaml" << 'EOF'
apiVersion: fedge/v1
kind: CloudInventory
metadata: {name: tour-folders}
spec:
  targets:
    - {name: eu-folder, provider: local, path: stores/eu, region: eu-local, residency: eu,
       pricing: {storagePerGBMonth: 0.01}}
    - {name: eu-folder-2, provider: local, path: stores/eu2, region: eu-local-2, residency: eu,
       pricing: {storagePerGBMonth: 0.02}}
EOF
cat > "$WORK/operator/placement.yaml" << 'EOF'
apiVersion: fedge/v1
kind: PlacementPolicy
metadata: {name: tour-eu}
spec:
  artifacts: {matchLabels: {app: sentiment}}
  providers: [local]
  residency: [eu]
  replicas: {min: 1, max: 2}
  failover: {enabled: true}
  retention: {keepVersions: 3}
  enforcement: Enforce
EOF
echo "operator wrote inventory.yaml (two local folders) and placement.yaml"
as operator fedge place apply --policy placement.yaml --inventory inventory.yaml \
    --artifact artifact --state placement.sqlite --trusted keys/signing.pub
as operator fedge place urls --inventory inventory.yaml --artifact artifact \
    --state placement.sqlite --out urls.json
VERSION=$(sed -n 's/^ *"version": "\(.*\)",*$/\1/p' "$WORK/operator/urls.json" | head -n 1)
[ -n "$VERSION" ] || { echo "tour: no version in operator/urls.json" >&2; exit 1; }
echo "placed version $VERSION"

step "5. operator: the broker, one kit per device, then mosquitto"
as operator fedge broker init --out broker --host 127.0.0.1 --port "$BROKER_PORT"
HTTP_PORTS=()
for n in 1 2; do
    HTTP_PORTS+=("$(free_port)")
    as operator fedge kit device "device-$n" --fleet clinics --broker-dir broker \
        --trusted keys/signing.pub --http-port "${HTTP_PORTS[n - 1]}" --out "kits/device-$n"
    hand_over "kits/device-$n" "device-$n"
done
# The device accounts exist before mosquitto reads its files, so no SIGHUP is needed.
bg operator mosquitto.out mosquitto -c broker/mosquitto.conf
wait_for operator broker/mosquitto.log "running" 30

step "6. devices: the kit's start.sh"
for n in 1 2; do
    bg "device-$n" agent.log ./kit/start.sh
    wait_for "device-$n" agent.log "following fedge/v1/clinics/device-$n/desired" 60
    cat "$WORK/device-$n/agent.log"
done

step "7. operator: roll $VERSION out to fleet clinics (canary, short soak, the rest)"
cat > "$WORK/operator/rollout.yaml" << 'EOF'
apiVersion: fedge/v1
kind: RolloutPolicy
metadata: {name: clinics-quick}
spec:
  fleet: {matchLabels: {fleet: clinics}}
  canary: {devices: 1}
  health: {maxErrorRate: 0.05, maxP95LatencyMs: 1000, minSamples: 0}
  soakTime: 2s
  batchSize: 10
  timeout: 3m
  rollback: {automatic: true}
EOF
echo "operator wrote rollout.yaml (policies/examples/rollout.yaml with a 2 s soak)"
as operator fedge deploy --artifact artifact --urls urls.json --rollout rollout.yaml \
    --broker "127.0.0.1:$BROKER_PORT" --fleet clinics --ca broker/certs/ca.crt \
    --username operator --password-file broker/secrets/operator.password

step "8. devices: classify a sentence"
SENTENCE='The nurse was kind and the visit was excellent.'
for n in 1 2; do
    url="http://127.0.0.1:${HTTP_PORTS[n - 1]}/v1/classify"
    body="{\"text\": \"$SENTENCE\"}"
    printf "device-%s$ POST %s %s\n" "$n" "$url" "$body"
    # what `curl -X POST -H 'Content-Type: application/json' -d BODY URL` does, without curl
    answer=$(python3 -c 'import sys, urllib.request as u
r = u.Request(sys.argv[1], data=sys.argv[2].encode(), headers={"Content-Type": "application/json"})
print(u.urlopen(r, timeout=30).read().decode())' "$url" "$body")
    echo "$answer"
    case "$answer" in
        *"\"version\": \"$VERSION\""*) echo "device-$n classified it with version $VERSION" ;;
        *) echo "tour: device-$n did not answer with version $VERSION" >&2; exit 1 ;;
    esac
done

printf '\ntour done in %d s (work folder %s)\n' $((SECONDS - START)) "$WORK"
