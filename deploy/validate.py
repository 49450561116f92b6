#!/usr/bin/env python3
"""Checks the deployment files under deploy/ without a cluster or Docker.

- Kubernetes (deploy/kubernetes/): every manifest against the Kubernetes API schema (strict:
  an unknown or misspelt field is an error), with the schemas that ship inside the
  kubernetes-validate package; every kustomization's resources exist and every manifest is
  either listed in one or named as not applied; every Secret and ConfigMap key the relays read
  is defined; the grace period covers the preStop wait and the drain timeout.
- Compose (deploy/compose/compose.yaml): against the Compose specification's schema (shipped
  inside check-jsonschema); the relay nodes have distinct ids and UDP ports, each announcing
  the host port it is published on, and share one fleet secret and directory; Prometheus
  scrapes every one of them.
- Grafana (deploy/grafana/*.json): the dashboard parses, uses a data source variable, and every
  query names only metrics the relay exports, with labels they have.

The metrics the relay exports are listed in RELAY_METRICS below. With `--relay PATH` the script
also starts that relay binary on loopback, reads its /metrics and fails if the list differs, so
CI (which builds the release relay first) keeps the list honest. `--self-test` first breaks
copies of the files in known ways (a misspelt field, a wrong type, an unknown metric) and fails
unless each is caught.

Run through deploy/validate.sh, which installs the pinned checkers in a virtualenv.
"""

from __future__ import annotations

import argparse
import copy
import importlib.resources
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parent
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
PROMETHEUS = DEPLOY / "compose" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"

# Kubernetes version whose API schema the manifests are checked against.
KUBERNETES_VERSION = "1.33.0"
# Manifests that are examples, applied by hand (never by a kustomization).
NOT_APPLIED = {"secrets.example.yaml"}

# Every sample name the relay exports (its /metrics, standalone or in a fleet), with the labels
# each carries. Counters are exported with `_total`, histograms as `_bucket`/`_sum`/`_count`.
RELAY_METRICS: dict[str, frozenset[str]] = {
    name: frozenset(labels)
    for name, labels in {
        "baton_connections": (),
        "baton_connections_accepted_total": (),
        "baton_host_unresponsive_total": (),
        "baton_connections_refused_total": ("reason",),
        "baton_handshakes_in_flight": (),
        "baton_retries_sent_total": (),
        "baton_nat_probes_total": ("result",),
        "baton_tls_tickets_total": ("result",),
        "baton_allocations": (),
        "baton_allocations_created_total": (),
        "baton_joins_total": (),
        "baton_rejoins_total": (),
        "baton_datagrams_forwarded_total": (),
        "baton_bytes_forwarded_total": (),
        "baton_snapshot_upload_bytes": (),
        "baton_datagrams_dropped_total": ("reason",),
        "baton_requests_refused_total": ("reason",),
        "baton_direct_paths_total": ("outcome", "reason"),
        "baton_credentials_refused_total": ("reason",),
        "baton_members_left_total": ("reason",),
        "baton_hook_events_published_total": (),
        "baton_hook_webhook_delivered_total": (),
        "baton_hook_webhook_failed_attempts_total": (),
        "baton_hook_webhook_queued": (),
        "baton_hook_events_dropped_total": ("sink",),
        "baton_hook_stream_subscribers": (),
        "baton_hook_stream_subscriptions_refused_total": ("reason",),
        "baton_admin_connections": (),
        "baton_admin_connections_refused_total": ("reason",),
        "baton_rate_limited_total": ("limit",),
        "baton_held_datagrams_total": ("outcome",),
        "baton_lane_delay_seconds_bucket": ("le",),
        "baton_lane_delay_seconds_sum": (),
        "baton_lane_delay_seconds_count": (),
        "baton_directory_op_seconds_bucket": ("op", "le"),
        "baton_directory_op_seconds_sum": ("op",),
        "baton_directory_op_seconds_count": ("op",),
        "baton_directory_errors_total": ("op",),
        "baton_directory_records_dropped_total": (),
    }.items()
}
# Series Prometheus makes itself for every target, and the labels it (and the scrape
# configuration's relabelling) adds to every series.
PROMETHEUS_SERIES = {"up": frozenset()}
TARGET_LABELS = frozenset({"instance", "job", "node"})

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and",
    "or", "unless", "inf", "nan",
}


class Failures:
    """Collects every problem found, so one run reports them all."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")


def load_yaml_docs(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --- Kubernetes ---------------------------------------------------------------------------------


def check_kubernetes_object(doc: object, where: str, fails: Failures) -> None:
    """One manifest against the strict Kubernetes schema."""
    if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
        fails.add(where, "not a Kubernetes object (no kind/apiVersion)")
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as first:
        # validate() stops at the first error; list them all with the same schema.
        for e in all_schema_errors(doc) or [first]:
            path = "/".join(str(p) for p in e.path)
            fails.add(where, f"{doc['kind']} {doc.get('metadata', {}).get('name')}: "
                             f"at /{path}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError:
        fails.add(where, f"no schema for {doc['apiVersion']} {doc['kind']}")


def all_schema_errors(doc: dict) -> list:
    """Every error of `doc` against the strict schema kubernetes_validate.validate uses."""
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    version = [v for v in utils.all_versions()
               if utils.major_minor(v) <= utils.major_minor(KUBERNETES_VERSION)][-1]
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    schema = utils.schema_contents(f"{folder}/{doc['kind'].lower()}-{api}.json", KUBERNETES_VERSION)
    definitions = utils.schema_contents(f"{folder}/_definitions.json", KUBERNETES_VERSION)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    validator = jsonschema.validators.Draft202012Validator(schema, registry=registry)
    return list(validator.iter_errors(doc))


def check_kustomization(doc: dict, path: Path, fails: Failures) -> set[Path]:
    """A kustomization's resources exist; returns the manifest files it lists."""
    listed: set[Path] = set()
    for resource in doc.get("resources", []):
        target = (path.parent / resource).resolve()
        if target.is_file():
            listed.add(target)
        elif not (target / "kustomization.yaml").is_file():
            fails.add(str(path), f"resource {resource!r} is neither a file nor a kustomization")
    for patch in doc.get("patches", []):
        ops = yaml.safe_load(patch.get("patch", "")) if isinstance(patch, dict) else None
        if not isinstance(ops, list) or not all(
            isinstance(op, dict) and op.get("op") in {"add", "remove", "replace", "move", "copy", "test"}
            and str(op.get("path", "")).startswith("/")
            for op in ops
        ):
            fails.add(str(path), f"patch is not a JSON patch (a list of op/path): {patch!r}")
    return listed


def kubernetes_objects(root: Path, fails: Failures) -> list[tuple[str, dict]]:
    """Validates every manifest under `root`; returns (file, object) for each object."""
    objects: list[tuple[str, dict]] = []
    manifests: set[Path] = set()
    listed: set[Path] = set()
    for path in sorted(root.rglob("*.yaml")):
        try:
            docs = load_yaml_docs(path)
        except yaml.YAMLError as e:
            fails.add(str(path), f"YAML does not parse: {e}")
            continue
        if path.name == "kustomization.yaml":
            for doc in docs:
                listed |= check_kustomization(doc, path, fails)
            continue
        manifests.add(path.resolve())
        for i, doc in enumerate(docs):
            check_kubernetes_object(doc, f"{path} (document {i + 1})", fails)
            if isinstance(doc, dict):
                objects.append((str(path), doc))
    for path in sorted(manifests - listed):
        if path.name not in NOT_APPLIED:
            fails.add(str(path), "listed in no kustomization.yaml")
    if not objects:
        fails.add(str(root), "no manifests found")
    return objects


def seconds(duration: str) -> float:
    """A relay duration ("90s", "1m30s", "500ms") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(n) * units[u] for n, u in parts)


def check_relay_workload(objects: list[tuple[str, dict]], fails: Failures) -> None:
    """The relay StatefulSet's references and timings hold together."""
    try:
        check_relay_references(objects, fails)
    except (TypeError, KeyError, AttributeError, IndexError) as e:
        fails.add("baton-relay", f"not shaped as the relay StatefulSet: {e!r}")


def check_relay_references(objects: list[tuple[str, dict]], fails: Failures) -> None:
    """The references and timings of check_relay_workload."""
    by_kind: dict[tuple[str, str], dict] = {}
    for _, obj in objects:
        by_kind[(obj.get("kind", ""), obj.get("metadata", {}).get("name", ""))] = obj

    def keys(kind: str, name: str) -> set[str] | None:
        obj = by_kind.get((kind, name))
        if obj is None:
            return None
        return set(obj.get("data", {}) or {}) | set(obj.get("stringData", {}) or {})

    relays = [o for (k, n), o in by_kind.items() if k == "StatefulSet" and n == "baton-relay"]
    if not relays:
        fails.add("kubernetes", "no StatefulSet baton-relay")
        return
    spec = relays[0]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e for e in container.get("env", [])}
    config: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        obj = by_kind.get(("ConfigMap", ref))
        if obj is None:
            fails.add("baton-relay", f"envFrom names ConfigMap {ref!r}, which is not defined")
        else:
            config.update(obj.get("data", {}))
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            have = keys("Secret", ref["name"])
            if have is None or (ref["key"] not in have and not ref.get("optional")):
                fails.add("baton-relay", f"env {e['name']} reads Secret {ref['name']} key "
                                         f"{ref['key']!r}, which secrets.example.yaml lacks")
    for volume in spec.get("volumes", []):
        name = volume.get("secret", {}).get("secretName")
        if name and keys("Secret", name) is None:
            fails.add("baton-relay", f"volume {volume['name']} mounts undefined Secret {name}")
    for var in ("BATON_NODE_ID", "BATON_PUBLIC_ADDR", "BATON_FLEET_SECRET", "BATON_ADMIN_TOKEN"):
        if var not in env:
            fails.add("baton-relay", f"env {var} is not set")
    if env.get("BATON_NODE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get(
            "fieldPath") != "metadata.name":
        fails.add("baton-relay", "BATON_NODE_ID does not come from the pod name")
    if "BATON_DIRECTORY" not in config and "BATON_DIRECTORY" not in env:
        fails.add("baton-relay", "BATON_DIRECTORY is not set")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        if container.get(probe, {}).get("httpGet", {}).get("path") != path:
            fails.add("baton-relay", f"{probe} does not ask {path}")
    pre_stop = " ".join(container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
                        .get("command", []))
    if "/v1/drain" not in pre_stop:
        fails.add("baton-relay", "the preStop hook does not call POST /v1/drain")
    waits = [int(n) for n in re.findall(r"SECONDS \+ (\d+)", pre_stop)]
    try:
        drain = seconds(config.get("BATON_DRAIN_TIMEOUT", ""))
    except ValueError as e:
        fails.add("baton-relay", f"BATON_DRAIN_TIMEOUT: {e}")
        drain = 0
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= drain + sum(waits):
        fails.add("baton-relay", f"terminationGracePeriodSeconds {grace} is not above the preStop "
                                 f"wait {sum(waits)} s plus BATON_DRAIN_TIMEOUT {drain} s")


# --- Compose ------------------------------------------------------------------------------------


def compose_schema() -> dict:
    schema = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(schema.read_text(encoding="utf-8"))


def check_compose(compose: dict, prometheus: dict, fails: Failures) -> None:
    where = str(COMPOSE)
    validator_class = jsonschema.validators.validator_for(compose_schema())
    validator = validator_class(compose_schema())
    for error in validator.iter_errors(compose):
        path = "/".join(str(p) for p in error.path)
        fails.add(where, f"at /{path}: {error.message}")
    try:
        check_compose_fleet(compose, prometheus, fails)
    except (TypeError, KeyError, AttributeError, IndexError) as e:
        fails.add(where, f"not shaped as a relay fleet: {e!r}")


def check_compose_fleet(compose: dict, prometheus: dict, fails: Failures) -> None:
    """The relay services form a fleet: ids, ports, shared settings, scraping."""
    where = str(COMPOSE)
    services = compose.get("services") if isinstance(compose.get("services"), dict) else {}
    relays = {
        name: svc for name, svc in services.items()
        if isinstance(svc, dict) and isinstance(svc.get("environment"), dict)
        and "BATON_NODE_ID" in svc["environment"]
    }
    if len(relays) < 2:
        fails.add(where, f"a fleet needs at least 2 relay services, found {len(relays)}")
    node_ids: set[str] = set()
    udp_ports: set[str] = set()
    shared: dict[str, set[str]] = {"BATON_FLEET_SECRET": set(), "BATON_DIRECTORY": set()}
    for name, svc in relays.items():
        env = svc["environment"]
        if env["BATON_NODE_ID"] in node_ids:
            fails.add(where, f"{name}: node id {env['BATON_NODE_ID']} is used twice")
        node_ids.add(env["BATON_NODE_ID"])
        for var, values in shared.items():
            values.add(str(env.get(var)))
        published = [
            p.split(":")[-2] for p in svc.get("ports", [])
            if isinstance(p, str) and p.endswith(":7700/udp")
        ]
        public_port = str(env.get("BATON_PUBLIC_ADDR", "")).rsplit(":", 1)[-1]
        if published != [public_port]:
            fails.add(where, f"{name}: BATON_PUBLIC_ADDR port {public_port} is not the one host "
                             f"UDP port its QUIC port is published on ({published})")
        elif public_port in udp_ports:
            fails.add(where, f"{name}: UDP port {public_port} is published twice")
        udp_ports.add(public_port)
    for var, values in shared.items():
        if len(values) != 1 or "None" in values:
            fails.add(where, f"the relays do not share one {var}")
    targets = {
        t.split(":")[0]
        for job in prometheus.get("scrape_configs", [])
        for static in job.get("static_configs", [])
        for t in static.get("targets", [])
    }
    for name in relays:
        if name not in targets:
            fails.add(str(PROMETHEUS), f"relay {name} is not scraped")
    for name, svc in services.items():
        for volume in svc.get("volumes", []) if isinstance(svc, dict) else []:
            source = str(volume).split(":")[0]
            if source.startswith(".") and not (COMPOSE.parent / source).exists():
                fails.add(where, f"{name}: mounts {source}, which does not exist")


# --- Grafana ------------------------------------------------------------------------------------


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and label names a PromQL expression (with Grafana variables) uses."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # strings
    text = re.sub(r"\$\{?\w+\}?", "1", text)  # Grafana variables
    labels: set[str] = set()
    for selector in re.findall(r"\{([^}]*)\}", text):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", selector))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    for clause in re.findall(
            r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        labels |= set(re.findall(r"[A-Za-z_]\w*", clause))
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names, labels


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, query) for every panel target and query variable."""
    queries = []

    def panels(items: list) -> None:
        for panel in items:
            panels(panel.get("panels", []))
            for target in panel.get("targets", []):
                if "expr" in target:
                    queries.append((panel.get("title", "?"), target["expr"]))

    panels(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", str(query).strip())
            queries.append((f"variable {var.get('name')}", m.group(1) if m else str(query)))
    return queries


def check_dashboard(path: Path, dashboard: dict, metrics: dict[str, frozenset[str]],
                    fails: Failures) -> None:
    where = str(path)
    variables = dashboard.get("templating", {}).get("list", [])
    ds_vars = [v["name"] for v in variables if v.get("type") == "datasource"]
    if not ds_vars:
        fails.add(where, "no data source variable")
    known = {**metrics, **PROMETHEUS_SERIES}
    queries = dashboard_queries(dashboard)
    if not queries:
        fails.add(where, "no queries")
    for title, expr in queries:
        names, labels = promql_names(expr)
        if not names:
            fails.add(where, f"{title}: {expr!r} names no metric")
        allowed = set(TARGET_LABELS)
        for name in names:
            if name not in known:
                fails.add(where, f"{title}: {name} is not a metric the relay exports")
            else:
                allowed |= known[name]
        for label in sorted(labels - allowed):
            fails.add(where, f"{title}: label {label!r} is on none of {sorted(names)}")

    def panel_sources(items: list) -> None:
        for panel in items:
            panel_sources(panel.get("panels", []))
            uid = (panel.get("datasource") or {}).get("uid") if isinstance(
                panel.get("datasource"), dict) else panel.get("datasource")
            if panel.get("type") != "row" and ds_vars and uid not in {
                    f"${{{v}}}" for v in ds_vars} | {f"${v}" for v in ds_vars}:
                fails.add(where, f"{panel.get('title')}: data source is not the variable")

    panel_sources(dashboard.get("panels", []))


def check_grafana(metrics: dict[str, frozenset[str]], fails: Failures) -> None:
    paths = sorted(GRAFANA.glob("*.json"))
    if not paths:
        fails.add(str(GRAFANA), "no dashboards")
    for path in paths:
        try:
            dashboard = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            fails.add(str(path), f"JSON does not parse: {e}")
            continue
        check_dashboard(path, dashboard, metrics, fails)


# --- The relay's own metrics --------------------------------------------------------------------


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_relay(binary: Path) -> dict[str, frozenset[str]]:
    """Starts `binary` on loopback, reads its /metrics, stops it: sample name -> labels."""
    admin = free_port(socket.SOCK_STREAM)
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            [str(binary), "--listen", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
             "--admin-listen", f"127.0.0.1:{admin}", "--data-dir", data],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as r:
                        text = r.read().decode("utf-8")
                    break
                except OSError:
                    if proc.poll() is not None:
                        raise SystemExit(f"{binary} exited: {proc.stderr.read().decode()}")
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{binary}: no /metrics within 30 s")
                    time.sleep(0.1)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][\w:]*)(?:\{([^}]*)\})?\s", line)
        if m is None:
            raise SystemExit(f"unexpected /metrics line: {line!r}")
        labels = set(re.findall(r'(\w+)="', m.group(2) or ""))
        found.setdefault(m.group(1), set()).update(labels)
    return {name: frozenset(labels) for name, labels in found.items()}


def check_metric_list(scraped: dict[str, frozenset[str]], fails: Failures) -> None:
    for name in sorted(set(scraped) | set(RELAY_METRICS)):
        if scraped.get(name) != RELAY_METRICS.get(name):
            fails.add("RELAY_METRICS in deploy/validate.py",
                      f"{name}: the relay exports labels {sorted(scraped[name]) if name in scraped else None}, "
                      f"the list says {sorted(RELAY_METRICS[name]) if name in RELAY_METRICS else None}")


# --- Running it ---------------------------------------------------------------------------------


def check_all(k8s: list[tuple[str, dict]] | None, compose: dict, prometheus: dict,
              dashboards: list[tuple[Path, dict]] | None, fails: Failures) -> None:
    if k8s is not None:
        for where, obj in k8s:
            check_kubernetes_object(obj, where, fails)
        check_relay_workload(k8s, fails)
    check_compose(compose, prometheus, fails)
    for path, dashboard in dashboards or []:
        check_dashboard(path, dashboard, RELAY_METRICS, fails)


def self_test(objects: list[tuple[str, dict]]) -> list[str]:
    """Breaks copies of the files in known ways; returns the mistakes that went unnoticed."""
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    prometheus = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    dashboard_path = sorted(GRAFANA.glob("*.json"))[0]
    dashboard = json.loads(dashboard_path.read_text(encoding="utf-8"))

    def relay_container(objs: list[tuple[str, dict]]) -> dict:
        for _, o in objs:
            if o.get("kind") == "StatefulSet" and o["metadata"]["name"] == "baton-relay":
                return o["spec"]["template"]["spec"]["containers"][0]
        raise SystemExit("self-test: no baton-relay StatefulSet")

    def relay_spec(objs: list[tuple[str, dict]]) -> dict:
        for _, o in objs:
            if o.get("kind") == "StatefulSet" and o["metadata"]["name"] == "baton-relay":
                return o["spec"]
        raise SystemExit("self-test: no baton-relay StatefulSet")

    def k8s(change):
        objs = copy.deepcopy(objects)
        change(objs)
        return objs

    cases = {
        "Kubernetes: a misspelt field (readinessProbe -> readinesProbe)": dict(k8s=k8s(
            lambda o: relay_container(o).__setitem__(
                "readinesProbe", relay_container(o).pop("readinessProbe")))),
        "Kubernetes: a wrong type (replicas: \"three\")": dict(k8s=k8s(
            lambda o: relay_spec(o).__setitem__("replicas", "three"))),
        "Kubernetes: a grace period shorter than the drain": dict(k8s=k8s(
            lambda o: relay_spec(o)["template"]["spec"].__setitem__(
                "terminationGracePeriodSeconds", 30))),
        "Compose: a misspelt field (depends_on -> depend_on)": dict(compose=(
            lambda c: c["services"]["relay-2"].__setitem__(
                "depend_on", c["services"]["relay-2"].pop("depends_on")))),
        "Compose: a wrong type (ports: 7700)": dict(compose=(
            lambda c: c["services"]["relay-1"].__setitem__("ports", 7700))),
        "Compose: a public address that is not the published port": dict(compose=(
            lambda c: c["services"]["relay-3"]["environment"].__setitem__(
                "BATON_PUBLIC_ADDR", "127.0.0.1:7700"))),
        "Grafana: a metric the relay does not export": dict(dashboard=(
            lambda d: d["panels"][-1]["targets"][0].__setitem__(
                "expr", "sum(rate(baton_datagrams_forwarded[5m]))"))),
        "Grafana: a label the metric does not have": dict(dashboard=(
            lambda d: d["panels"][-1]["targets"][0].__setitem__(
                "expr", "sum by (reason) (baton_allocations)"))),
    }
    baseline = Failures()
    check_all(objects, compose, prometheus, [(dashboard_path, dashboard)], baseline)
    if baseline.items:
        return ["the unbroken files already fail: " + "; ".join(baseline.items)]
    missed = []
    for name, case in cases.items():
        c, d = copy.deepcopy(compose), copy.deepcopy(dashboard)
        if "compose" in case:
            case["compose"](c)
        if "dashboard" in case:
            case["dashboard"](d)
        fails = Failures()
        check_all(case.get("k8s"), c, prometheus, [(dashboard_path, d)], fails)
        print(f"  {'caught' if fails.items else 'MISSED'}: {name}"
              + (f" ({fails.items[0]})" if fails.items else ""))
        if not fails.items:
            missed.append(name)
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--relay", type=Path,
                        help="a baton-relay binary whose /metrics must match RELAY_METRICS")
    parser.add_argument("--self-test", action="store_true",
                        help="first check that known mistakes are caught")
    args = parser.parse_args()

    fails = Failures()
    objects = kubernetes_objects(KUBERNETES, fails)
    check_relay_workload(objects, fails)
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    prometheus = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    check_compose(compose, prometheus, fails)
    check_grafana(RELAY_METRICS, fails)
    if args.relay is not None:
        check_metric_list(scrape_relay(args.relay), fails)
        print(f"RELAY_METRICS matches the /metrics of {args.relay}")
    if args.self_test:
        print("self-test: known mistakes must be caught")
        for name in self_test(objects):
            fails.add("self-test", f"not caught: {name}")

    for item in fails.items:
        print(f"FAIL {item}", file=sys.stderr)
    print(f"deploy/: {len(objects)} Kubernetes objects, compose.yaml, "
          f"{len(list(GRAFANA.glob('*.json')))} dashboard(s) checked; "
          f"{len(fails.items)} problem(s)")
    return 1 if fails.items else 0


if __name__ == "__main__":
    sys.exit(main())
