"""The Kubernetes manifests, as `kubectl kustomize` renders each overlay: validated against the
Kubernetes OpenAPI schemas, and asserted for what operators rely on — a restricted security
context, probes on the admin server, resources, a grace period longer than a drain, scrape
annotations, the polling/webhook producer shapes, and KEDA/HPA objects that match the consumers.
"""

import re

import pytest
import yaml

from conftest import (ADMIN_PORT, DEFAULT_PARTITIONS, IMAGE_UID, OVERLAYS, REPO, by_kind, one,
                      pod_specs, run, tool)

KUBERNETES_VERSION = "1.32.0"
# Longest drain of any role, in seconds: the producer flushes in-flight deliveries, bounded by its
# delivery timeout (30 s by default); a consumer finishes or rolls back one batch.
LONGEST_DRAIN_SECONDS = 30
EXPECTED_OVERLAYS = {"polling", "polling-hpa", "webhook", "prometheus-operator", "strimzi"}
# Custom resources: KEDA's and the Prometheus Operator's are checked field by field below; Strimzi's
# against their schemas in test_k8s_strimzi.py.
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule", "KafkaTopic",
             "KafkaUser"}


def test_every_expected_overlay_exists_and_renders(rendered):
    assert EXPECTED_OVERLAYS <= set(OVERLAYS)
    for overlay, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        assert {"Namespace", "Deployment", "ConfigMap", "PodDisruptionBudget", "Service",
                "NetworkPolicy"} <= kinds, overlay


def test_every_rendered_overlay_is_valid_against_the_kubernetes_schemas(rendered_dir):
    validator = tool("venv/bin/kubernetes-validate")
    for f in sorted(rendered_dir.iterdir()):
        result = run([validator, "--strict", "-k", KUBERNETES_VERSION, str(f)])
        assert result.returncode == 0, f"{f.name}:\n{result.stdout}{result.stderr}"
        # Every object of a built-in kind must have been checked, not skipped.
        for line in result.stdout.splitlines() + result.stderr.splitlines():
            if "Couldn't find schema" in line:
                assert any(f"kind {k} " in line for k in CRD_KINDS), f"{f.name}: {line}"


def test_the_schema_validator_rejects_a_misspelt_field(tmp_path):
    """The validation above is not vacuous: strict mode refuses an unknown field."""
    bad = tmp_path / "bad.yaml"
    doc = yaml.safe_load((REPO / "deploy/k8s/base/consumer-pdb.yaml").read_text())
    doc["spec"]["maxUnavailabel"] = 1
    bad.write_text(yaml.safe_dump(doc))
    result = run([tool("venv/bin/kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(bad)])
    assert result.returncode != 0
    assert "maxUnavailabel" in result.stdout + result.stderr


@pytest.mark.parametrize("overlay", sorted(EXPECTED_OVERLAYS))
def test_every_pod_runs_with_a_restricted_security_context(rendered, overlay):
    for workload, spec in pod_specs(rendered[overlay]):
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, workload
        assert pod.get("runAsUser") == IMAGE_UID, workload
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", workload
        assert spec.get("automountServiceAccountToken") is False, workload
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), workload
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c.get("securityContext", {})
            where = f"{workload}/{c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert not sc.get("privileged"), where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), f"{where}: {kind}"


@pytest.mark.parametrize("overlay", sorted(EXPECTED_OVERLAYS))
def test_long_running_pods_have_probes_on_the_admin_server(rendered, overlay):
    for d in by_kind(rendered[overlay], "Deployment"):
        spec = d["spec"]["template"]["spec"]
        name = d["metadata"]["name"]
        for c in spec["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("ADMIN_LISTEN", f"0.0.0.0:{ADMIN_PORT}").endswith(f":{ADMIN_PORT}"), name
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            assert ports.get("admin") == ADMIN_PORT, name
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                                ("startupProbe", "/healthz")):
                get = c.get(probe, {}).get("httpGet")
                assert get, f"{name}: no {probe}"
                assert get["path"] == path and get["port"] in ("admin", ADMIN_PORT), f"{name}: {probe} {get}"
            # Liveness must tolerate a slow dependency: readiness reports it, liveness restarts.
            live = c["livenessProbe"]
            assert live.get("failureThreshold", 3) * live.get("periodSeconds", 10) >= 30, name
        annotations = d["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", name
        assert annotations.get("prometheus.io/port") == str(ADMIN_PORT), name
        assert annotations.get("prometheus.io/path") == "/metrics", name
        grace = spec.get("terminationGracePeriodSeconds", 30)
        assert grace > LONGEST_DRAIN_SECONDS + 10, f"{name}: grace {grace}s does not cover a drain"


def test_the_polling_producer_is_a_recreated_singleton(rendered):
    for overlay in ("polling", "polling-hpa", "prometheus-operator", "strimzi"):
        producer = one(rendered[overlay], "Deployment", "tgingest-producer")
        assert producer["spec"]["replicas"] == 1, overlay
        assert producer["spec"]["strategy"]["type"] == "Recreate", overlay
        assert not any(p["metadata"]["name"] == "tgingest-producer"
                       for p in by_kind(rendered[overlay], "HorizontalPodAutoscaler")), overlay


def test_the_webhook_producer_scales_out_behind_a_service_and_an_ingress(rendered):
    docs = rendered["webhook"]
    producer = one(docs, "Deployment", "tgingest-producer")
    assert producer["spec"]["replicas"] >= 2
    assert producer["spec"]["strategy"]["type"] == "RollingUpdate"
    assert producer["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = producer["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    listen_port = int(env["WEBHOOK_LISTEN"].rsplit(":", 1)[1])
    assert ports["webhook"] == listen_port
    service = one(docs, "Service", "tgingest-producer")
    selector = service["spec"]["selector"]
    labels = producer["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in selector.items())
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert service_ports["webhook"]["targetPort"] == "webhook"
    ingress = one(docs, "Ingress", "tgingest-producer")
    backends = [p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends and all(b["name"] == "tgingest-producer" and b["port"]["name"] == "webhook"
                            for b in backends)
    assert all(p["path"].startswith("/webhook") for r in ingress["spec"]["rules"] for p in r["http"]["paths"])
    assert ingress["spec"].get("tls"), "Telegram only calls HTTPS webhooks"
    pdb = one(docs, "PodDisruptionBudget", "tgingest-producer")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("overlay", sorted(EXPECTED_OVERLAYS))
def test_services_and_disruption_budgets_select_the_pods_they_name(rendered, overlay):
    docs = rendered[overlay]
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    for kind in ("Service", "PodDisruptionBudget"):
        for obj in by_kind(docs, kind):
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            target = deployments[obj["metadata"]["name"]]
            labels = target["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), f"{overlay} {kind}/{obj['metadata']['name']}"
            if kind == "PodDisruptionBudget":
                assert obj["spec"].get("maxUnavailable") == 1, "a budget must still allow node drains"


def _configmap(docs):
    """The settings ConfigMap the consumers read (generated: its name carries a content hash)."""
    consumer = one(docs, "Deployment", "tgingest-consumer")
    [ref] = [s["configMapRef"]["name"] for s in consumer["spec"]["template"]["spec"]["containers"][0]["envFrom"]]
    return one(docs, "ConfigMap", ref)["data"]


def test_kafka_and_postgresql_use_tls_with_credentials_from_secrets(rendered):
    for overlay, docs in rendered.items():
        data = _configmap(docs)
        assert data["KAFKA_SECURITY_PROTOCOL"] == "sasl_ssl", overlay
        assert data["KAFKA_SASL_MECHANISM"].startswith("SCRAM-"), overlay
        assert data["DATABASE_SSL_MODE"] in ("verify-full", "verify-ca"), overlay
        # No secret value in the ConfigMap; passwords only ever as *_FILE from a Secret mount.
        for key in data:
            assert not re.search(r"PASSWORD$|TOKENS$|^DATABASE_URL$|SECRET$", key), f"{overlay}: {key}"
        for workload, spec in pod_specs(docs):
            for c in spec["containers"]:
                for e in c.get("env", []):
                    assert not re.search(r"PASSWORD$|TOKENS$|^DATABASE_URL$|SECRET$", e["name"]), \
                        f"{overlay} {workload}: {e['name']} must come from a *_FILE"


AUTOSCALED = {"polling": "ScaledObject", "webhook": "ScaledObject", "prometheus-operator": "ScaledObject",
              "strimzi": "ScaledObject", "polling-hpa": "HorizontalPodAutoscaler"}
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
KEDA_AUTH_PARAMETERS = {"sasl", "username", "password", "tls", "ca", "cert", "key", "keyPassword"}


@pytest.mark.parametrize("overlay", sorted(AUTOSCALED))
def test_the_consumer_autoscaler_is_bounded_by_the_partition_count(rendered, overlay):
    docs = rendered[overlay]
    consumer = one(docs, "Deployment", "tgingest-consumer")
    assert "replicas" not in consumer["spec"], "the autoscaler owns replicas; a fixed value fights it"
    kind = AUTOSCALED[overlay]
    scalers = by_kind(docs, kind)
    assert len(scalers) == 1, f"{overlay}: expected one {kind}"
    other = {"ScaledObject": "HorizontalPodAutoscaler", "HorizontalPodAutoscaler": "ScaledObject"}[kind]
    assert not by_kind(docs, other), f"{overlay}: KEDA and an HPA would fight over the consumer"
    spec = scalers[0]["spec"]
    target = spec["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == ("Deployment", "tgingest-consumer")
    if kind == "HorizontalPodAutoscaler":
        assert spec["maxReplicas"] == DEFAULT_PARTITIONS
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
        assert spec["metrics"][0]["resource"]["name"] == "cpu"


@pytest.mark.parametrize("overlay", sorted(o for o, k in AUTOSCALED.items() if k == "ScaledObject"))
def test_the_keda_scaled_object_has_every_required_field_and_matches_the_consumers(rendered, overlay):
    docs = rendered[overlay]
    so = one(docs, "ScaledObject", "tgingest-consumer")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert spec["scaleTargetRef"]["name"] in {d["metadata"]["name"] for d in by_kind(docs, "Deployment")}
    assert isinstance(spec["maxReplicaCount"], int) and spec["maxReplicaCount"] == DEFAULT_PARTITIONS
    assert isinstance(spec["minReplicaCount"], int) and 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    # KEDA's trigger metadata is map[string]string: a bare number or boolean is rejected.
    assert all(isinstance(v, str) for v in meta.values()), meta
    for field in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold", "offsetResetPolicy"):
        assert meta.get(field), f"{overlay}: trigger metadata lacks {field}"
    assert meta["offsetResetPolicy"] == "earliest"
    assert int(meta["lagThreshold"]) > 0
    config = _configmap(docs)
    assert meta["bootstrapServers"] == config["KAFKA_BROKERS"]
    assert meta["consumerGroup"] == config["KAFKA_GROUP_ID"]
    assert meta["topic"] == config["KAFKA_TOPIC"]
    assert meta.get("sasl") == KEDA_SASL[config["KAFKA_SASL_MECHANISM"]]
    assert (meta.get("tls") == "enable") == config["KAFKA_SECURITY_PROTOCOL"].endswith("ssl")
    ref = trigger["authenticationRef"]["name"]
    auth = one(docs, "TriggerAuthentication", ref)
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    params = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    from_env = {r["parameter"]: r for r in auth["spec"].get("env", [])}
    assert {"username", "password"} <= set(params) | set(from_env)
    for p, r in params.items():
        assert p in KEDA_AUTH_PARAMETERS, p
        assert r.get("name") and r.get("key"), r
    consumer = one(docs, "Deployment", "tgingest-consumer")["spec"]["template"]["spec"]
    for p, r in from_env.items():
        assert p in KEDA_AUTH_PARAMETERS, p
        # KEDA reads the variable from the scale target's container: it must be set there.
        [container] = [c for c in consumer["containers"] if c["name"] == r["containerName"]]
        assert r["name"] in {e["name"] for e in container.get("env", [])}, r
    # The password and CA are the very Secret keys the consumers mount.
    mounted = {(v["secret"]["secretName"], i["key"]) for v in consumer["volumes"] if "secret" in v
               for i in v["secret"]["items"]}
    assert (params["password"]["name"], params["password"]["key"]) in mounted
    if meta["tls"] == "enable":
        assert "ca" in params
        assert (params["ca"]["name"], params["ca"]["key"]) in mounted
