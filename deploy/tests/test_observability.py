"""Prometheus configuration, alerting rules and the Grafana dashboard: checked by promtool
(configuration, rule syntax, rule unit tests, and every dashboard query as PromQL), and against
the metric names the code actually emits.
"""

import json
import re
import shutil
from pathlib import Path

import yaml

from conftest import REPO, run, tool

PROM = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "tgingest.json"
# The metrics the dashboard must show (issue #8): throughput, lag per partition, batch latency,
# dead letters, Telegram errors, confirm age.
REQUIRED_ON_DASHBOARD = {
    "tgingest_records_consumed_total", "tgingest_rows_written_total", "tgingest_batch_seconds",
    "tgingest_partition_lag", "tgingest_dead_letters_total", "tgingest_rebalances_total",
    "tgingest_fenced_writes_total", "tgingest_updates_received_total", "tgingest_publish_seconds",
    "tgingest_telegram_errors_total", "tgingest_last_confirmed_update_id",
    "tgingest_oldest_unconfirmed_age_seconds",
}
METRIC = re.compile(r"\btgingest_[a-z_]+\b")


def dashboard_queries():
    def walk(panels):
        for p in panels:
            yield from ((p["title"], t["expr"]) for t in p.get("targets", []))
            yield from walk(p.get("panels", []))
    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def emitted_metrics():
    """Every metric name that appears as a string literal in the Rust sources."""
    names = set()
    for crate in ("src", "producer/src", "consumer/src"):
        for f in (REPO / crate).rglob("*.rs"):
            names |= set(re.findall(r'"(tgingest_[a-z_]+)"', f.read_text()))
    return names


def base_name(metric):
    return re.sub(r"_(bucket|sum|count)$", "", metric)


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


def test_every_dashboard_query_is_valid_promql(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, (_title, expr) in enumerate(dashboard_queries())]}]}
    f = tmp_path / "dashboard-queries.yml"
    f.write_text(yaml.safe_dump(rules))
    result = run([tool("promtool"), "check", "rules", str(f)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_shows_every_required_metric():
    used = {base_name(m) for _t, e in dashboard_queries() for m in METRIC.findall(e)}
    assert not REQUIRED_ON_DASHBOARD - used, f"missing from the dashboard: {sorted(REQUIRED_ON_DASHBOARD - used)}"


def test_the_dashboard_and_alerts_query_only_metrics_the_code_emits():
    emitted = emitted_metrics()
    assert emitted, "no metric names found in the sources"
    queried = {base_name(m) for _t, e in dashboard_queries() for m in METRIC.findall(e)}
    for group in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
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
