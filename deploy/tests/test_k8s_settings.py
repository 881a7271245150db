"""Kubernetes from an empty cluster and under GitOps: the settings are written once
(deploy/k8s/settings/settings.yaml) and reach every object that uses them; the ConfigMap is
generated with a content hash; an image change is an ordinary rollout with the migration as the
consumers' init container (no immutable Job); the consumers log in as the writer role and only the
migration sees the owner's credentials; the namespace is set once; disruption budgets, network
policies and termination messages are what operators rely on.

Renders the repository's overlays (fixture `rendered`) and, for changed settings or images, small
overlays written to a temporary directory the way docs/OPERATIONS.md tells operators to write
theirs.
"""

import copy
import os
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import K8S, OVERLAYS, REPO, by_kind, one, pod_specs, run, tool

SETTINGS_FILE = K8S / "settings" / "settings.yaml"
DEFAULTS = yaml.safe_load(SETTINGS_FILE.read_text())["data"]
PLACEHOLDER = "SET-BY-WIRING"

# Every setting changed at once, to values that appear nowhere else.
CUSTOM = {
    "kafkaBrokers": "b1.kafka.example:19093,b2.kafka.example:19093",
    "kafkaPort": "19093",
    "kafkaTopic": "custom.updates",
    "kafkaGroup": "custom-sink",
    "topicPartitions": "24",
    "strimziCluster": "custom-cluster",
    "kafkaProducerUser": "custom-producer",
    "kafkaConsumerUser": "custom-consumer",
    "kafkaProducerSecret": "custom-producer-secret",
    "kafkaConsumerSecret": "custom-consumer-secret",
    "kafkaPasswordKey": "custom-password-key",
    "kafkaCaSecret": "custom-kafka-ca",
    "databaseOwnerSecret": "custom-db-owner",
    "databaseWriterSecret": "custom-db-writer",
    "databaseWriterRole": "custom_writer",
    "databaseUrlKey": "custom-url-key",
    "databaseCaSecret": "custom-db-ca",
    "databasePort": "15432",
}


def render_overlay(tmp_path: Path, components, settings=None, image_tag=None, namespace=None) -> list:
    """Renders an operator's overlay: the repository's base, a settings.yaml of its own, the
    given components and the wiring component last."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load(SETTINGS_FILE.read_text())
    doc["data"].update(settings or {})
    (tmp_path / "settings.yaml").write_text(yaml.safe_dump(doc))
    # Kustomize takes directories by relative path only.
    rel = lambda p: os.path.relpath(p, tmp_path)  # noqa: E731
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [rel(K8S / "base"), "settings.yaml"],
        "components": [rel(K8S / "components" / c) for c in components] + [rel(K8S / "components" / "wiring")],
    }
    if image_tag:
        # The base already maps `tgingest` to the published name; an overlay matches that name.
        kustomization["images"] = [{"name": "ghcr.io/tgingest/tgingest", "newName": "registry.example/tgingest",
                                    "newTag": image_tag}]
    if namespace:
        kustomization["namespace"] = namespace
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = run([tool("kubectl"), "kustomize", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def container(docs, deployment, name, init=False):
    spec = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    [c] = [c for c in spec.get("initContainers" if init else "containers", []) if c["name"] == name]
    return c


def volume(docs, deployment, name):
    spec = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    [v] = [v for v in spec["volumes"] if v["name"] == name]
    return v["secret"]["secretName"], [i["key"] for i in v["secret"]["items"]]


def configmap(docs):
    ref = container(docs, "tgingest-consumer", "consumer")["envFrom"][0]["configMapRef"]["name"]
    return one(docs, "ConfigMap", ref)


# ---------------------------------------------------------------- settings, written once

def test_no_overlay_leaves_a_placeholder_or_renders_the_settings_object(rendered):
    for overlay, docs in rendered.items():
        text = yaml.safe_dump_all(docs)
        assert PLACEHOLDER not in text, f"{overlay}: a value the wiring component should write is missing"
        assert not [d for d in docs if d["metadata"]["name"] == "tgingest-settings"], \
            f"{overlay}: the local-config settings must not be applied to the cluster"


def test_every_overlay_lists_the_settings_and_the_wiring_last():
    for overlay in OVERLAYS:
        k = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
        assert "../../settings" in k["resources"], overlay
        assert k["components"][-1] == "../../components/wiring", f"{overlay}: wiring must come last"


def test_each_shared_value_is_written_once_in_the_manifests():
    """Brokers, topic, group, partition count and the Strimzi/CloudNativePG names appear in
    deploy/k8s only in settings.yaml (the ScaledObject, HPA, KafkaTopic, KafkaUsers and pods get
    them from there)."""
    # Ports, keys and the partition count are too short to grep for, and the Kafka user names are
    # also the names of the Deployments (and of the KafkaUsers, which the wiring renames):
    # test_changed_settings_reach_every_object_that_uses_them covers those.
    skip = ("kafkaPort", "databasePort", "kafkaPasswordKey", "databaseUrlKey", "topicPartitions",
            "kafkaProducerUser", "kafkaConsumerUser", "kafkaProducerSecret", "kafkaConsumerSecret")
    values = {k: v for k, v in DEFAULTS.items() if k not in skip}
    for path in sorted(K8S.rglob("*.yaml")):
        if path == SETTINGS_FILE:
            continue
        text = path.read_text()
        for key, value in values.items():
            assert not re.search(rf"(?<![\w.-]){re.escape(value)}(?![\w.-])", text), \
                f"{path.relative_to(REPO)} writes {key}={value!r} again; take it from settings.yaml"
    # Numbers are checked where they would be written: the autoscalers and the topic.
    for path in (K8S / "components" / "keda" / "scaledobject.yaml", K8S / "components" / "hpa" / "hpa.yaml",
                 K8S / "components" / "strimzi" / "kafkatopic.yaml"):
        assert not re.search(rf"\b{DEFAULTS['topicPartitions']}\b", path.read_text()), path.name


@pytest.mark.parametrize("autoscaler", ["keda", "hpa"])
def test_changed_settings_reach_every_object_that_uses_them(tmp_path, autoscaler):
    components = [autoscaler, "strimzi"]
    docs = render_overlay(tmp_path / "custom", components, CUSTOM)
    s = CUSTOM
    assert PLACEHOLDER not in yaml.safe_dump_all(docs)
    config = configmap(docs)["data"]
    assert (config["KAFKA_BROKERS"], config["KAFKA_TOPIC"], config["KAFKA_GROUP_ID"]) == \
        (s["kafkaBrokers"], s["kafkaTopic"], s["kafkaGroup"])
    partitions = int(s["topicPartitions"])
    if autoscaler == "keda":
        so = one(docs, "ScaledObject", "tgingest-consumer")
        meta = so["spec"]["triggers"][0]["metadata"]
        assert (meta["bootstrapServers"], meta["topic"], meta["consumerGroup"]) == \
            (s["kafkaBrokers"], s["kafkaTopic"], s["kafkaGroup"])
        assert so["spec"]["maxReplicaCount"] == partitions
        auth = {r["parameter"]: r for r in one(docs, "TriggerAuthentication", "tgingest-consumer")["spec"]["secretTargetRef"]}
        assert (auth["password"]["name"], auth["password"]["key"]) == (s["kafkaConsumerSecret"], s["kafkaPasswordKey"])
        assert auth["ca"]["name"] == s["kafkaCaSecret"]
    else:
        assert one(docs, "HorizontalPodAutoscaler", "tgingest-consumer")["spec"]["maxReplicas"] == partitions
    topic = one(docs, "KafkaTopic", "tgingest-updates")
    assert (topic["spec"]["topicName"], topic["spec"]["partitions"]) == (s["kafkaTopic"], partitions)
    users = {u["metadata"]["name"]: u for u in by_kind(docs, "KafkaUser")}
    assert set(users) == {s["kafkaProducerUser"], s["kafkaConsumerUser"]}
    names = {(a["resource"]["type"], a["resource"].get("name"))
             for u in users.values() for a in u["spec"]["authorization"]["acls"]}
    assert names == {("topic", s["kafkaTopic"]), ("group", s["kafkaGroup"]), ("cluster", None)}
    for obj in by_kind(docs, "KafkaTopic") + by_kind(docs, "KafkaUser"):
        assert obj["metadata"]["labels"]["strimzi.io/cluster"] == s["strimziCluster"]
    # Pods: user names, Secret names and keys, the writer role.
    assert env_of(container(docs, "tgingest-producer", "producer"))["KAFKA_SASL_USERNAME"] == s["kafkaProducerUser"]
    assert env_of(container(docs, "tgingest-consumer", "consumer"))["KAFKA_SASL_USERNAME"] == s["kafkaConsumerUser"]
    assert volume(docs, "tgingest-producer", "kafka-sasl") == (s["kafkaProducerSecret"], [s["kafkaPasswordKey"]])
    assert volume(docs, "tgingest-consumer", "kafka-sasl") == (s["kafkaConsumerSecret"], [s["kafkaPasswordKey"]])
    for deployment in ("tgingest-producer", "tgingest-consumer"):
        assert volume(docs, deployment, "kafka-tls") == (s["kafkaCaSecret"], ["ca.crt"])
    assert volume(docs, "tgingest-consumer", "database-writer") == (s["databaseWriterSecret"], [s["databaseUrlKey"]])
    assert volume(docs, "tgingest-consumer", "database-owner") == (s["databaseOwnerSecret"], [s["databaseUrlKey"]])
    assert volume(docs, "tgingest-consumer", "postgres-tls") == (s["databaseCaSecret"], ["ca.crt"])
    migrate = container(docs, "tgingest-consumer", "migrate", init=True)
    assert env_of(migrate)["CONSUMER_ROLE"] == s["databaseWriterRole"]
    # NetworkPolicy ports.
    policies = {p["metadata"]["name"]: p for p in by_kind(docs, "NetworkPolicy")}
    egress_ports = {name: {port["port"] for rule in p["spec"]["egress"] for port in rule.get("ports", [])}
                    for name, p in policies.items()}
    assert {int(s["kafkaPort"]), int(s["databasePort"])} <= egress_ports["tgingest-consumer"]
    assert int(s["kafkaPort"]) in egress_ports["tgingest-producer"]
    assert int(DEFAULTS["kafkaPort"]) not in egress_ports["tgingest-producer"] | egress_ports["tgingest-consumer"]


def test_a_changed_setting_renames_the_configmap_so_the_pods_roll(tmp_path):
    default = render_overlay(tmp_path / "a", ["keda"])
    changed = render_overlay(tmp_path / "b", ["keda"], {"kafkaBrokers": "other-bootstrap:9093"})
    a, b = configmap(default)["metadata"]["name"], configmap(changed)["metadata"]["name"]
    assert re.fullmatch(r"tgingest-[a-z0-9]{10}", a), a
    assert a != b
    for docs, name in ((default, a), (changed, b)):
        for workload, spec in pod_specs(docs):
            for c in spec.get("initContainers", []) + spec["containers"]:
                assert [s["configMapRef"]["name"] for s in c.get("envFrom", [])] == [name], workload


# ---------------------------------------------------------------- upgrades under apply and GitOps

IMMUTABLE_TEMPLATE_KINDS = {"Job"}


def test_an_image_upgrade_is_a_rollout_that_migrates_first(tmp_path):
    old = render_overlay(tmp_path / "old", ["keda", "strimzi"], image_tag="1.0.0")
    new = render_overlay(tmp_path / "new", ["keda", "strimzi"], image_tag="1.1.0")
    old_by = {(d["kind"], d["metadata"]["name"]): d for d in old}
    new_by = {(d["kind"], d["metadata"]["name"]): d for d in new}
    assert set(old_by) == set(new_by), "an image change must not add or remove objects"
    changed = {key for key in old_by if old_by[key] != new_by[key]}
    assert changed == {("Deployment", "tgingest-producer"), ("Deployment", "tgingest-consumer")}, changed
    for key in changed:
        # `kubectl apply` cannot change these; a GitOps sync would fail on them.
        assert key[0] not in IMMUTABLE_TEMPLATE_KINDS, key
        assert old_by[key]["spec"]["selector"] == new_by[key]["spec"]["selector"], key
        # Nothing but images differs.
        stripped = []
        for doc in (old_by[key], new_by[key]):
            doc = copy.deepcopy(doc)
            spec = doc["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                c.pop("image")
            stripped.append(doc)
        assert stripped[0] == stripped[1], key
    for docs, tag in ((old, "1.0.0"), (new, "1.1.0")):
        assert not by_kind(docs, "Job"), "the migration is an init container, not an immutable Job"
        spec = one(docs, "Deployment", "tgingest-consumer")["spec"]["template"]["spec"]
        [migrate] = spec["initContainers"]
        assert migrate["args"] == ["migrate"]
        assert migrate["image"] == spec["containers"][0]["image"] == f"registry.example/tgingest:{tag}"
        # A rolling update keeps every old consumer until a new one (migrated) is ready.
        strategy = one(docs, "Deployment", "tgingest-consumer")["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_only_the_migration_sees_the_owner_credentials(rendered):
    for overlay, docs in rendered.items():
        owner = volume(docs, "tgingest-consumer", "database-owner")
        writer = volume(docs, "tgingest-consumer", "database-writer")
        assert owner[0] != writer[0], f"{overlay}: the consumers must not log in as the owner"
        for workload, spec in pod_specs(docs):
            owner_volumes = {v["name"] for v in spec.get("volumes", [])
                             if v.get("secret", {}).get("secretName") == owner[0]}
            for c in spec.get("initContainers", []) + spec["containers"]:
                mounts = {m["name"] for m in c.get("volumeMounts", [])}
                if c.get("args", [None])[0] == "migrate":
                    assert mounts & owner_volumes, f"{overlay} {workload}: migrate needs the owner"
                    assert env_of(c).get("CONSUMER_ROLE"), f"{overlay}: migrate must grant the writer role"
                else:
                    assert not mounts & owner_volumes, f"{overlay} {workload}/{c['name']} mounts the owner's Secret"
        consumer = container(docs, "tgingest-consumer", "consumer")
        assert any(m["name"] == "database-writer" for m in consumer["volumeMounts"]), overlay
        assert env_of(consumer)["DATABASE_URL_FILE"].startswith(
            next(m["mountPath"] for m in consumer["volumeMounts"] if m["name"] == "database-writer")), overlay


def test_secret_keys_default_to_what_strimzi_and_cloudnativepg_write():
    assert DEFAULTS["kafkaPasswordKey"] == "password"      # Strimzi KafkaUser Secret
    assert DEFAULTS["databaseUrlKey"] == "uri"             # CloudNativePG <cluster>-app Secret
    assert DEFAULTS["kafkaProducerSecret"] == DEFAULTS["kafkaProducerUser"]   # Strimzi names it after the user
    assert DEFAULTS["kafkaConsumerSecret"] == DEFAULTS["kafkaConsumerUser"]


# ---------------------------------------------------------------- namespace, budgets, policies

def test_the_namespace_is_set_once_and_holds_everything(rendered, tmp_path):
    written = [p for p in K8S.rglob("kustomization.yaml") if re.search(r"^namespace:", p.read_text(), re.M)]
    assert written == [K8S / "base" / "kustomization.yaml"], written
    for overlay, docs in rendered.items():
        [ns] = [d["metadata"]["name"] for d in by_kind(docs, "Namespace")]
        for d in docs:
            if d["kind"] != "Namespace":
                assert d["metadata"].get("namespace") == ns, f"{overlay}: {d['kind']}/{d['metadata']['name']}"
    # An operator's `namespace:` moves everything, the Namespace object included.
    docs = render_overlay(tmp_path / "ns", ["keda", "strimzi"], namespace="ingest-prod")
    assert {d["metadata"].get("namespace", d["metadata"]["name"]) for d in docs} == {"ingest-prod"}


def test_disruption_budgets_let_unhealthy_pods_go(rendered):
    for overlay, docs in rendered.items():
        pdbs = by_kind(docs, "PodDisruptionBudget")
        assert pdbs, overlay
        for pdb in pdbs:
            assert pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow", \
                f"{overlay} {pdb['metadata']['name']}: a crash-looping pod would block node drains"


def test_every_container_reports_its_last_log_lines_on_failure(rendered):
    for overlay, docs in rendered.items():
        for workload, spec in pod_specs(docs):
            for c in spec.get("initContainers", []) + spec["containers"]:
                assert c.get("terminationMessagePolicy") == "FallbackToLogsOnError", f"{overlay} {workload}/{c['name']}"


def test_network_policies_allow_each_role_only_what_it_needs(rendered):
    for overlay, docs in rendered.items():
        policies = {p["metadata"]["name"]: p for p in by_kind(docs, "NetworkPolicy")}
        for role in ("producer", "consumer"):
            policy = policies[f"tgingest-{role}"]
            labels = one(docs, "Deployment", f"tgingest-{role}")["spec"]["template"]["metadata"]["labels"]
            assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
            assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            egress = {(p.get("protocol", "TCP"), p["port"]) for r in policy["spec"]["egress"] for p in r["ports"]}
            ingress = {p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]}
            assert ("UDP", 53) in egress and ("TCP", int(DEFAULTS["kafkaPort"])) in egress, (overlay, role)
            assert "admin" in ingress
            if role == "producer":
                assert ("TCP", 443) in egress and ("TCP", int(DEFAULTS["databasePort"])) not in egress
                assert ("webhook" in ingress) == (overlay == "webhook"), overlay
            else:
                assert ("TCP", int(DEFAULTS["databasePort"])) in egress and ("TCP", 443) not in egress
                assert ingress == {"admin"}


def test_no_static_membership_tied_to_deployment_pod_names(rendered):
    """A Deployment's pod names change at every rollout, so KAFKA_GROUP_INSTANCE_ID set to the pod
    name would leave a stale static member per rollout; nothing sets or advises it."""
    for overlay, docs in rendered.items():
        for workload, spec in pod_specs(docs):
            for c in spec.get("initContainers", []) + spec["containers"]:
                assert "KAFKA_GROUP_INSTANCE_ID" not in env_of(c), f"{overlay} {workload}"
    for doc in (REPO / "README.md", REPO / "docs" / "OPERATIONS.md"):
        for line in doc.read_text().splitlines():
            if "KAFKA_GROUP_INSTANCE_ID" in line:
                assert "pod name" not in line or "not" in line, f"{doc.name}: {line.strip()}"
