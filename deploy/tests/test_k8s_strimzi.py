"""The optional Strimzi component (overlay `strimzi`): the KafkaTopic and KafkaUsers are valid
against Strimzi's own CRDs (vendored from Strimzi 1.2.0 in deploy/strimzi/crds, their `v1`
openAPIV3Schema made strict as kubeconform does), carry the durability settings the guarantees
depend on, and grant each role exactly what it needs, under the names its pods use.
"""

import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO, by_kind, one, run, tool

CRDS = REPO / "deploy" / "strimzi" / "crds"
CRD_FILE_OF = {"KafkaTopic": CRDS / "043-Crd-kafkatopic.yaml", "KafkaUser": CRDS / "044-Crd-kafkauser.yaml"}


def strimzi_docs(rendered):
    return [d for d in rendered["strimzi"] if d["kind"] in CRD_FILE_OF]


def validate(schema: Path, doc: dict, tmp_path: Path, name: str):
    f = tmp_path / f"{name}.json"
    f.write_text(json.dumps(doc))
    return run([tool("venv/bin/check-jsonschema"), "--schemafile", str(schema), str(f)])


def strict_from_crd(crd_file: Path, version: str) -> dict:
    """A Strimzi CRD's openAPIV3Schema as a strict JSON schema (what kubeconform's
    openapi2jsonschema does): objects with properties reject unknown fields unless the CRD says
    `x-kubernetes-preserve-unknown-fields`; CEL rules are left to the API server."""
    def strict(s):
        if isinstance(s, dict):
            s = {k: strict(v) for k, v in s.items() if k != "x-kubernetes-validations"}
            if s.get("type") == "object" and "properties" in s and not s.get("x-kubernetes-preserve-unknown-fields"):
                s.setdefault("additionalProperties", False)
            if s.pop("x-kubernetes-int-or-string", False):
                s.pop("type", None)
                s["oneOf"] = [{"type": "string"}, {"type": "integer"}]
            return s
        if isinstance(s, list):
            return [strict(x) for x in s]
        return s
    crd = yaml.safe_load(crd_file.read_text())
    [v] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return strict(v["schema"]["openAPIV3Schema"])


@pytest.fixture(scope="module")
def schema_of(tmp_path_factory):
    """Each kind's strict JSON schema, converted from the vendored CRD."""
    out = tmp_path_factory.mktemp("strimzi-schemas")
    schemas = {}
    for kind, crd in CRD_FILE_OF.items():
        schema = strict_from_crd(crd, "v1")
        # The resource itself, as a manifest states it (the CRD's schema leaves them out).
        schema["properties"]["apiVersion"] = {"const": "kafka.strimzi.io/v1"}
        schema["properties"]["kind"] = {"const": kind}
        schema["properties"]["metadata"] = {"type": "object"}
        schema["additionalProperties"] = False
        schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
        schemas[kind] = out / f"{kind}.json"
        schemas[kind].write_text(json.dumps(schema))
    return schemas


def test_the_strimzi_resources_are_valid_against_the_strimzi_crds(rendered, tmp_path, schema_of):
    docs = strimzi_docs(rendered)
    assert sorted(d["kind"] for d in docs) == ["KafkaTopic", "KafkaUser", "KafkaUser"]
    for n, doc in enumerate(docs):
        assert doc["apiVersion"] == "kafka.strimzi.io/v1", doc["apiVersion"]
        result = validate(schema_of[doc["kind"]], doc, tmp_path, f"doc{n}")
        assert result.returncode == 0, f"{doc['kind']}/{doc['metadata']['name']}:\n" \
            f"{result.stdout}{result.stderr}"


@pytest.mark.parametrize("break_it, expect", [
    (lambda d: d["spec"].__setitem__("replica", 3), "replica"),
    (lambda d: d["spec"].__setitem__("partitions", 0), "partitions"),
])
def test_the_topic_schema_rejects_what_strimzi_rejects(rendered, tmp_path, schema_of, break_it, expect):
    topic = one(rendered["strimzi"], "KafkaTopic", "tgingest-updates")
    bad = json.loads(json.dumps(topic))
    break_it(bad)
    result = validate(schema_of["KafkaTopic"], bad, tmp_path, "bad")
    assert result.returncode != 0 and expect in result.stdout + result.stderr


def test_the_user_schema_rejects_an_unknown_acl_operation(rendered, tmp_path, schema_of):
    user = one(rendered["strimzi"], "KafkaUser", "tgingest-producer")
    bad = json.loads(json.dumps(user))
    bad["spec"]["authorization"]["acls"][0]["operations"] = ["Writes"]
    result = validate(schema_of["KafkaUser"], bad, tmp_path, "bad")
    assert result.returncode != 0 and "Writes" in result.stdout + result.stderr


def test_the_topic_has_the_durability_the_guarantees_depend_on(rendered):
    topic = one(rendered["strimzi"], "KafkaTopic", "tgingest-updates")
    spec = topic["spec"]
    assert spec["replicas"] >= 3
    config = spec["config"]
    assert int(config["min.insync.replicas"]) >= 2
    assert int(config["min.insync.replicas"]) < spec["replicas"], "one broker down must not stop writes"
    assert str(config["unclean.leader.election.enable"]).lower() == "false"
    assert config["cleanup.policy"] == "delete"
    # The operator's guide states the same broker settings for any Kafka, not only Strimzi's.
    guide = (REPO / "docs" / "OPERATIONS.md").read_text()
    for setting in ("min.insync.replicas", "unclean.leader.election.enable", "default.replication.factor"):
        assert setting in guide, f"docs/OPERATIONS.md does not document {setting}"


def _acls(user):
    return {(a["resource"]["type"], a["resource"].get("name")): set(a["operations"])
            for a in user["spec"]["authorization"]["acls"]}


def test_each_role_gets_exactly_the_acls_it_needs_on_the_names_it_uses(rendered):
    docs = rendered["strimzi"]
    consumer_pod = one(docs, "Deployment", "tgingest-consumer")["spec"]["template"]["spec"]
    [cm_name] = [s["configMapRef"]["name"] for s in consumer_pod["containers"][0]["envFrom"]]
    config = one(docs, "ConfigMap", cm_name)["data"]
    topic, group = config["KAFKA_TOPIC"], config["KAFKA_GROUP_ID"]
    assert one(docs, "KafkaTopic", "tgingest-updates")["spec"]["topicName"] == topic
    users = {u["metadata"]["name"]: u for u in by_kind(docs, "KafkaUser")}
    for role in ("producer", "consumer"):
        pod = one(docs, "Deployment", f"tgingest-{role}")["spec"]["template"]["spec"]
        [container] = [c for c in pod["containers"] if c["name"] == role]
        env = {e["name"]: e.get("value") for e in container["env"]}
        user = users[env["KAFKA_SASL_USERNAME"]]
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        assert config["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        # Strimzi writes the password into a Secret named after the user, key `password`.
        [sasl] = [v for v in pod["volumes"] if v["name"] == "kafka-sasl"]
        assert sasl["secret"]["secretName"] == user["metadata"]["name"]
        assert [i["key"] for i in sasl["secret"]["items"]] == ["password"]
        assert all(a.get("type", "allow") == "allow" for a in user["spec"]["authorization"]["acls"])
        assert all(a["resource"].get("patternType", "literal") == "literal"
                   for a in user["spec"]["authorization"]["acls"])
        acls = _acls(user)
        if role == "producer":
            assert acls == {("topic", topic): {"Write", "Describe", "DescribeConfigs"},
                            ("cluster", None): {"IdempotentWrite"}}
        else:
            assert acls == {("topic", topic): {"Read", "Describe", "DescribeConfigs"},
                            ("group", group): {"Read", "Describe"}}


def test_every_strimzi_resource_names_its_cluster_and_lives_with_the_pods(rendered):
    docs = rendered["strimzi"]
    [namespace] = [d["metadata"]["name"] for d in by_kind(docs, "Namespace")]
    clusters = {d["metadata"]["labels"]["strimzi.io/cluster"] for d in strimzi_docs(rendered)}
    assert len(clusters) == 1 and "SET-BY" not in clusters.pop()
    # The User Operator writes each user's Secret beside the KafkaUser: the pods can mount it only
    # in their own namespace.
    assert {d["metadata"]["namespace"] for d in strimzi_docs(rendered)} == {namespace}
