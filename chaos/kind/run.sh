#!/usr/bin/env bash
# egressd chaos drills on a kind cluster (needs Docker, kind and kubectl; run as
# a user who may use Docker, with root for the ARP watcher). See README.md.
#
#   chaos/kind/run.sh up                      cluster, image, pods, outpost, egressd
#   chaos/kind/run.sh drill SCENARIO ROUNDS   graceful|kill|kill-restart|freeze|link-cut|api-partition|api-outage
#   chaos/kind/run.sh down
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
CLUSTER=${CLUSTER:-egressd}
PY=${PY:-$root/.venv/bin/python}
STATE=${STATE:-$here/.state}
GW_A="$CLUSTER-worker3"
GW_B="$CLUSTER-worker4"
CP="$CLUSTER-control-plane"
OUTPOST_NAME="$CLUSTER-outpost"
ROUND_SECONDS=${ROUND_SECONDS:-14}
SUDO=$([[ $EUID -eq 0 ]] || echo sudo)

log() { printf '== %s\n' "$*" >&2; }

subnet() { docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' kind | tr ' ' '\n' | grep -v : | head -1; }
egress_ips() { local p; p=$(subnet | cut -d. -f1-2); echo "$p.0.42,$p.0.43"; }
outpost_ip() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$OUTPOST_NAME"; }
node_ip() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }

up() {
  mkdir -p "$STATE"
  log "cluster $CLUSTER (1 control plane, 4 workers)"
  kind create cluster --name "$CLUSTER" --config "$here/cluster.yaml"
  log "gateways $GW_A and $GW_B: tainted and labelled as in the walkthrough"
  kubectl taint node "$GW_A" egress-gw:NoSchedule
  kubectl taint node "$GW_B" egress-gw:NoSchedule
  kubectl label nodes "$GW_A" "$GW_B" egress-gw=true
  log "image egressd:dev"
  docker build -t egressd:dev "$root"
  kind load docker-image egressd:dev --name "$CLUSTER"
  log "pods xwing, ywing (org=alliance) and tiefighter (org=empire)"
  for spec in xwing:alliance ywing:alliance tiefighter:empire; do
    kubectl run "${spec%%:*}" --image egressd:dev --image-pull-policy=Never \
      --labels "org=${spec#*:},class=${spec%%:*}" --command -- sleep infinity
  done
  kubectl wait --for=condition=Ready pod/xwing pod/ywing pod/tiefighter --timeout=180s
  local ips net
  ips=$(egress_ips)
  net=$(subnet)
  log "outpost on the kind network, answering only $ips"
  docker run -d --name "$OUTPOST_NAME" --network kind --entrypoint python egressd:dev \
    -m egressd.lab.outpost --allowed "$ips" --listen 0.0.0.0:8000 --udp 0.0.0.0:9000 --log /tmp/outpost.jsonl
  # kindnet masquerades pod traffic that leaves the pod network; the selected
  # pods' traffic must reach the gateway with the pod address for SNAT to
  # select it, so their nodes skip that masquerade for the kind network.
  local pod node ip
  for pod in xwing ywing; do
    node=$(kubectl get pod "$pod" -o jsonpath='{.spec.nodeName}')
    ip=$(kubectl get pod "$pod" -o jsonpath='{.status.podIP}')
    docker exec "$node" iptables -t nat -I KIND-MASQ-AGENT 1 -s "$ip/32" -d "$net" -j RETURN
  done
  log "egressd: the DaemonSet of deploy/ with a config for this cluster"
  kubectl apply -k "$root/deploy"
  local cp_ip
  cp_ip=$(node_ip "$CP")
  # Kubernetes mode, as deploy/ ships it; on kind the egress IPs live on eth0
  cat >"$STATE/egressd.yaml" <<EOF
node:
  name: \${NODE_NAME}
  address: \${NODE_IP}
mode: kubernetes
kubernetes:
  access: in-cluster
  namespace: egressd
metrics:
  listen: \${NODE_IP}:9464
mesh:
  keyFile: /etc/egressd-mesh/key
  optional: true
EOF
  # the mesh's cluster key, made as docs/mesh.md says
  head -c 32 /dev/urandom >"$STATE/mesh.key"
  kubectl -n egressd create secret generic egressd-mesh --from-file=key="$STATE/mesh.key" \
    --dry-run=client -o yaml | kubectl apply -f -
  kubectl apply -f - <<EOF
apiVersion: egressd.io/v1alpha1
kind: EgressGatewayPolicy
metadata:
  name: outpost
spec:
  selectors:
    - podSelector:
        matchLabels:
          org: alliance
  destinationCIDRs: [$net]
  excludedCIDRs: [$cp_ip/32]
  egressGateway:
    nodeSelector:
      matchLabels:
        egress-gw: "true"
    interface: eth0
    egressIPs: [${ips//,/, }]
EOF
  kubectl -n egressd create configmap egressd --from-file=egressd.yaml="$STATE/egressd.yaml" \
    --dry-run=client -o yaml | kubectl apply -f -
  kubectl -n egressd rollout restart ds/egressd
  kubectl -n egressd rollout status ds/egressd --timeout=180s
  log "walkthrough check"
  for pod in xwing ywing tiefighter; do
    printf '%s: ' "$pod"
    kubectl exec "$pod" -- python -c "import urllib.request as u,sys
try: print(u.urlopen('http://$(outpost_ip):8000/', timeout=2).read().decode().strip())
except Exception as e: print('refused:', e)"
  done
}

holder_of() { kubectl -n egressd get lease "egressd-${1//./-}" -o jsonpath='{.spec.holderIdentity}'; }
egress_ip_of_xwing() {
  kubectl exec xwing -- python -c "import json,urllib.request as u
print(json.load(u.urlopen('http://$(outpost_ip):8000/', timeout=2))['ip'])"
}
daemon() { docker exec "$1" pkill "-$2" -f 'egressd run'; }

fault() { # SCENARIO NODE: start the fault
  case $1 in
    graceful) kubectl -n egressd delete pod -l app.kubernetes.io/name=egressd --field-selector "spec.nodeName=$2" --wait=false ;;
    kill | kill-restart) daemon "$2" KILL ;;  # the kubelet restarts the container (kill: after its back-off)
    freeze) daemon "$2" STOP ;;
    link-cut) node_ip "$2" >"$STATE/link-ip"; docker network disconnect kind "$2" ;;
    api-partition) docker exec "$2" iptables -I OUTPUT -d "$(node_ip "$CP")" -p tcp --dport 6443 -j DROP ;;
    api-outage) docker pause "$CP" ;;
    *) echo "unknown scenario $1" >&2; exit 2 ;;
  esac
}

heal() { # SCENARIO NODE: end the fault
  case $1 in
    freeze) daemon "$2" CONT ;;
    link-cut) docker network connect --ip "$(cat "$STATE/link-ip")" kind "$2" ;;
    api-partition) docker exec "$2" iptables -D OUTPUT -d "$(node_ip "$CP")" -p tcp --dport 6443 -j DROP ;;
    api-outage) docker unpause "$CP" ;;
    *) ;;
  esac
}

drill() {
  local scenario=$1 rounds=$2 ips bridge out
  ips=$(egress_ips)
  bridge="br-$(docker network inspect -f '{{.Id}}' kind | cut -c1-12)"
  out="$root/chaos/results/kind-$scenario.json"
  mkdir -p "$STATE" "$root/chaos/results"
  : >"$STATE/rounds.jsonl"
  {
    printf '{'
    for n in "$GW_A" "$GW_B"; do printf '"%s": "%s",' "$(docker exec "$n" cat /sys/class/net/eth0/address)" "$n"; done
    printf '"": ""}\n'
  } >"$STATE/macs.json"
  for ((i = 1; i <= rounds; i++)); do
    local ip owner hold=5
    ip=$(egress_ip_of_xwing)
    owner=$(holder_of "$ip")
    [[ $scenario == api-outage ]] && hold=30
    [[ $scenario == freeze ]] && hold=5
    kubectl exec xwing -- python -m egressd.lab.probe send --target "$(outpost_ip):9000" \
      --seconds "$((ROUND_SECONDS + hold))" >"$STATE/probes.jsonl" &
    local prober=$!
    # shellcheck disable=SC2024 # only the raw socket needs root; the file stays the user's
    $SUDO "$PY" "$here/arpwatch.py" --bridge "$bridge" --ips "$ips" --seconds "$((ROUND_SECONDS + hold))" \
      >"$STATE/arp.jsonl" &
    local watcher=$!
    sleep 3
    local fault_at
    fault_at=$(date +%s.%N)
    fault "$scenario" "$owner"
    sleep "$hold"
    heal "$scenario" "$owner"
    wait "$prober" "$watcher" || true
    "$PY" "$here/analyse.py" --probes "$STATE/probes.jsonl" --fault-at "$fault_at" --allowed "$ips" \
      --arp "$STATE/arp.jsonl" --macs "$STATE/macs.json" | tee -a "$STATE/rounds.jsonl"
    kubectl -n egressd rollout status ds/egressd --timeout=180s >/dev/null
    sleep 5  # settle: both IPs owned again, kubelet back-off passed
  done
  "$PY" - "$scenario" "$STATE/rounds.jsonl" "$out" <<'EOF'
import json, sys
from egressd.core.model import Timing
from egressd.drill.analysis import percentile
scenario, src, dst = sys.argv[1:4]
rounds = [json.loads(line) for line in open(src) if line.strip()]
gaps = [r["gap_ms"] for r in rounds if r["gap_ms"] is not None]
summary = {"rounds": len(rounds), "p50_gap_ms": percentile(gaps, 50), "p99_gap_ms": percentile(gaps, 99),
           "max_gap_ms": max(gaps, default=None), "dual_owner_ms": sum(r["dual_owner_ms"] for r in rounds),
           "lost_probes": sum(r["lost_probes"] for r in rounds)}
t = Timing()
json.dump({"scenario": scenario, "environment": "kind",
           "timings": {"leaseDuration": t.lease_duration, "renewDeadline": t.renew_deadline,
                       "retryPeriod": t.retry_period, "fenceTtl": t.fence_ttl, "addressLifetime": t.address_lifetime},
           "rounds": [{**r, "timeline": []} for r in rounds], "summary": summary}, open(dst, "w"), indent=2)
print(json.dumps(summary))
EOF
}

down() {
  docker rm -f "$OUTPOST_NAME" >/dev/null 2>&1 || true
  kind delete cluster --name "$CLUSTER"
  rm -rf "$STATE"
}

case ${1:-} in
  up) up ;;
  drill) drill "${2:?scenario}" "${3:-20}" ;;
  down) down ;;
  *) sed -n 2,9p "$0"; exit 2 ;;
esac
