"""Prometheus configuration, alerting rules and the Grafana dashboard: checked by promtool
(configuration, rule syntax, a rule unit test for every alert, and every dashboard query as
PromQL), against the metric names the code actually emits (and describes: every metric has HELP
text), and against the job labels the shipped scrape configurations produce.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

from conftest import REPO, one, run, tool

PROM = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "tgingest.json"
# The metrics the dashboard must show: throughput, lag per partition, batch latency, dead letters,
# Telegram errors, confirm age (issue #8); commit-unknown, producer recreations, webhook
# rejections, the in-flight budget, record age, anomalies, per-bot state and the process's
# memory, CPU and file descriptors (issue #17).
REQUIRED_ON_DASHBOARD = {
    "tgingest_records_consumed_total", "tgingest_rows_written_total", "tgingest_batch_seconds",
    "tgingest_partition_lag", "tgingest_dead_letters_total", "tgingest_rebalances_total",
    "tgingest_fenced_writes_total", "tgingest_updates_received_total", "tgingest_publish_seconds",
    "tgingest_telegram_errors_total", "tgingest_last_confirmed_update_id",
    "tgingest_oldest_unconfirmed_age_seconds",
    "tgingest_commit_unknown_total", "tgingest_producer_recreated_total",
    "tgingest_webhook_rejected_total", "tgingest_consumer_inflight_reserved_bytes",
    "tgingest_partition_record_age_seconds", "tgingest_partition_last_commit_timestamp_seconds",
    "tgingest_log_anomalies_total", "tgingest_partition_halted", "tgingest_bot_up",
    "tgingest_bot_failures_total", "tgingest_webhook_pending_updates", "tgingest_batch_records",
    "process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
}
METRIC = re.compile(r"\b(?:tgingest|process)_[a-z_]+\b")
RUST_SOURCES = ("src", "producer/src", "consumer/src")
# Values of the dashboard's variables when checking its queries as PromQL.
DASHBOARD_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*", "$job": ".*"}
# The jobs every shipped scrape configuration must produce, and the alerts must select.
TGINGEST_JOBS = {"tgingest-producer", "tgingest-consumer"}


def dashboard_queries():
    def walk(panels):
        for p in panels:
            yield from ((p["title"], t["expr"]) for t in p.get("targets", []))
            yield from walk(p.get("panels", []))
    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def alert_rules():
    return [r for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]]


def rust_sources():
    for crate in RUST_SOURCES:
        yield from (REPO / crate).rglob("*.rs")


def metric_sites():
    """(macro, metric name) for every emission (`counter!`, `gauge!`, `histogram!`) and
    description (`describe_counter!`, …) in the Rust sources, constants resolved."""
    consts, sites = {}, []
    const = re.compile(r'const\s+([A-Z_]+):\s*&str\s*=\s*"((?:tgingest|process)_[a-z_]+)"')
    call = re.compile(r'\b((?:describe_)?(?:counter|gauge|histogram))!\(\s*(?:"([a-z_]+)"|(?:[a-z_]+::)*([A-Z_]+))')
    texts = [f.read_text() for f in rust_sources()]
    for text in texts:
        consts.update(const.findall(text))
    for text in texts:
        for macro, literal, constant in call.findall(text):
            name = literal or consts.get(constant)
            if name and name.startswith("tgingest_"):
                sites.append((macro, name))
    return sites


def emitted_metrics():
    """Every metric the code emits: its recorded series and the process metrics."""
    recorded = {name for macro, name in metric_sites() if not macro.startswith("describe_")}
    return recorded | process_metrics()


def process_metrics():
    """The process metrics telemetry.rs renders itself (its PROCESS_METRICS table)."""
    text = (REPO / "src" / "telemetry.rs").read_text()
    table = text[text.index("pub const PROCESS_METRICS"):]
    table = table[:table.index("];")]
    return set(re.findall(r'"(process_[a-z_]+)"', table))


def base_name(metric):
    return re.sub(r"_(bucket|sum|count)$", "", metric)


def selectors(expr):
    """(metric, its label matchers or None) for every metric selector in a query."""
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"\b((?:tgingest|process)_[a-z_]+)\b(?:\{([^}]*)\})?", expr)]


def test_the_compose_prometheus_configuration_is_valid(tmp_path):
    shutil.copy(REPO / "deploy/compose/prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
    result = run([tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_the_alerting_rules_are_valid_and_their_unit_tests_pass():
    promtool = tool("promtool")
    result = run([promtool, "check", "rules", str(PROM / "alerts.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    result = run([promtool, "test", "rules", str(PROM / "alerts.test.yml")], cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_explained_in_the_operations_guide():
    ops = (REPO / "docs" / "OPERATIONS.md").read_text()
    for group in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            assert f"`{rule['alert']}`" in ops, f"{rule['alert']} is not explained in docs/OPERATIONS.md"


def test_the_prometheus_rule_matches_the_alerts_file():
    rule = yaml.safe_load((REPO / "deploy/k8s/components/prometheus-operator/prometheusrule.yaml").read_text())
    assert rule["spec"]["groups"] == yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]


def substitute(expr):
    for variable, value in DASHBOARD_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def test_every_dashboard_query_is_valid_promql(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": substitute(expr)}
        for i, (_title, expr) in enumerate(dashboard_queries())]}]}
    f = tmp_path / "dashboard-queries.yml"
    f.write_text(yaml.safe_dump(rules))
    result = run([tool("promtool"), "check", "rules", str(f)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_in_which_it_fires():
    tests = yaml.safe_load((PROM / "alerts.test.yml").read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t.get("alert_rule_test", [])
             if case.get("exp_alerts")}
    untested = {r["alert"] for r in alert_rules()} - fired
    assert not untested, f"alerts without a promtool test in which they fire: {sorted(untested)}"


def test_target_alerts_select_the_jobs_the_shipped_scrape_configs_produce(rendered):
    compose = yaml.safe_load((REPO / "deploy/compose/prometheus.yml").read_text())
    compose_jobs = {c["job_name"] for c in compose["scrape_configs"] if c["job_name"].startswith("tgingest")}
    assert compose_jobs == TGINGEST_JOBS, compose_jobs
    # The Prometheus Operator labels a ServiceMonitor's targets with job = the Service's name, or
    # the value of the Service label named by spec.jobLabel.
    docs = rendered["prometheus-operator"]
    monitor = one(docs, "ServiceMonitor", "tgingest")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    job_label = monitor["spec"].get("jobLabel")
    operator_jobs = set()
    for service in (d for d in docs if d["kind"] == "Service"):
        labels = service["metadata"].get("labels", {})
        if wanted.items() <= labels.items() and ports & {p.get("name") for p in service["spec"]["ports"]}:
            operator_jobs.add(labels[job_label] if job_label else service["metadata"]["name"])
    assert operator_jobs == TGINGEST_JOBS, operator_jobs

    rules = {r["alert"]: r["expr"] for r in alert_rules()}
    target_down = re.fullmatch(r'up\{job=~"([^"]+)"\} == 0', rules["TgingestTargetDown"])
    assert target_down, rules["TgingestTargetDown"]
    for job in TGINGEST_JOBS:
        assert re.fullmatch(target_down.group(1), job), f"TgingestTargetDown misses job {job}"
    assert not re.fullmatch(target_down.group(1), "prometheus")
    absent = {re.fullmatch(r'absent\(up\{job="([^"]+)"\} == 1\)', e).group(1)
              for e in rules.values() if e.startswith("absent(")}
    assert absent == TGINGEST_JOBS, f"absent() alerts cover {absent}"


def test_the_dashboard_has_namespace_and_job_variables_and_every_query_uses_them():
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    for name in ("namespace", "job"):
        v = variables[name]
        assert v["type"] == "query" and v["includeAll"] and v["allValue"] == ".*", v
        assert v["datasource"]["uid"] == "${datasource}", v
    for title, expr in dashboard_queries():
        for metric, matchers in selectors(expr):
            assert matchers and 'namespace=~"$namespace"' in matchers and 'job=~"$job"' in matchers, \
                f"{title}: {metric} is not scoped by $namespace and $job in {expr}"


def test_every_metric_the_code_emits_has_help_text():
    sites = metric_sites()
    emitted = {(macro, name) for macro, name in sites if not macro.startswith("describe_")}
    described = {(macro.removeprefix("describe_"), name) for macro, name in sites if macro.startswith("describe_")}
    assert emitted, "no metric emissions found in the sources"
    missing = sorted(f"{macro}!({name})" for macro, name in emitted - described)
    assert not missing, f"emitted without a describe_*! (no HELP text): {missing}"


def test_metric_names_follow_prometheus_naming():
    for macro, name in {s for s in metric_sites() if not s[0].startswith("describe_")}:
        if macro == "counter":
            assert name.endswith("_total"), f"counter {name} lacks _total"
        else:
            assert not name.endswith("_total"), f"{macro} {name} ends in _total"


def test_the_dashboard_shows_every_required_metric():
    used = {base_name(m) for _t, e in dashboard_queries() for m in METRIC.findall(e)}
    assert not REQUIRED_ON_DASHBOARD - used, f"missing from the dashboard: {sorted(REQUIRED_ON_DASHBOARD - used)}"


def test_the_dashboard_and_alerts_query_only_metrics_the_code_emits():
    emitted = emitted_metrics()
    assert emitted, "no metric names found in the sources"
    queried = {base_name(m) for _t, e in dashboard_queries() for m in METRIC.findall(e)}
    for rule in alert_rules():
        queried |= {base_name(m) for m in METRIC.findall(rule["expr"])}
    assert not queried - emitted, f"queried but never emitted: {sorted(queried - emitted)}"


def test_the_dashboard_uses_a_selectable_prometheus_datasource():
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]


def test_grafana_provisioning_points_at_the_mounted_dashboards(compose):
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/tgingest.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]
              if isinstance(v, str)} if isinstance(compose["services"]["grafana"]["volumes"][0], str) else {
        v["target"]: v["source"] for v in compose["services"]["grafana"]["volumes"]}
    assert path in mounts and Path(mounts[path]).resolve() == DASHBOARD.parent.resolve()
    datasource = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    url = datasource["datasources"][0]["url"]
    assert url == "http://prometheus:9090" and "prometheus" in compose["services"]


def test_the_metrics_a_process_serves_pass_promtool_lint(tgingest, tmp_path):
    """A producer with nothing to reach (it retries Kafka and Telegram) serves /metrics: every
    series has HELP and TYPE, the process metrics are there, and promtool's lint finds nothing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ADMIN_LISTEN": f"127.0.0.1:{port}",
           "KAFKA_BROKERS": "127.0.0.1:1", "TELEGRAM_BOT_TOKENS": "1:a",
           "TELEGRAM_API_URL": "http://127.0.0.1:1", "RUST_LOG": "error"}
    process = subprocess.Popen([tgingest, "producer"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        text, deadline = "", time.monotonic() + 20
        while "tgingest_bot_up" not in text and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                pass
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "tgingest_bot_up" in text, text
    types = re.findall(r"^# TYPE (\S+) ", text, re.M)
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
            "tgingest_build_info"} <= set(types), types
    for name in types:
        assert f"# HELP {name} " in text, f"{name} has no HELP"
    result = run([tool("promtool"), "check", "metrics"], input=text)
    assert result.returncode == 0, result.stdout + result.stderr
