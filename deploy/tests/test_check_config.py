"""Runs `tgingest <sub> --check-config` with exactly the arguments and environment each deployment
file gives a container, so a manifest the binary would refuse at startup fails here instead.

Secret files are written as dummies at the paths the manifests name (re-rooted under a temporary
directory, since /etc and /run are not ours): a Kubernetes path must come from a mounted Secret key,
a Compose path from a declared secret. The CA certificates are real self-signed PEM files because
librdkafka loads `ssl.ca.location` when the client is created.
"""

import os
import subprocess
from pathlib import Path

import pytest

from conftest import DEFAULT_PARTITIONS, OVERLAYS, pod_specs, by_kind, run

DUMMY_SECRETS = {
    "tokens": "123456789:AAHdummy-token_for_check\n987654321:BBHsecond_dummy\n",
    "webhook-secret": "dummy-webhook-secret-0123456789",
    "url": "postgres://tgingest:dummy@postgres.example.internal:5432/tgingest",
    "uri": "postgresql://tgingest:dummy@tgingest-db-rw.tgingest:5432/tgingest",
    "sasl-password": "dummy-sasl-password",
    "password": "dummy-sasl-password",
    "sasl-username": "tgingest",
    "telegram_bot_tokens": "123456789:AAHdummy-token_for_check\n",
}


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("ca")
    key, crt = d / "ca.key", d / "ca.crt"
    result = run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                  "-out", str(crt), "-days", "2", "-subj", "/CN=tgingest-test-ca"])
    assert result.returncode == 0, result.stderr
    return crt.read_text()


def dummy_content(key: str, ca_pem: str) -> str:
    if key.endswith(".crt"):
        return ca_pem
    assert key in DUMMY_SECRETS, f"no dummy content for secret key {key!r}: add one to DUMMY_SECRETS"
    return DUMMY_SECRETS[key]


def base_env() -> dict:
    # Only what a container would have without the manifest: no inherited KAFKA_*, DATABASE_*...
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}


def check(tgingest, args, env):
    return subprocess.run([tgingest, *args, "--check-config"], env=env, capture_output=True,
                          text=True, timeout=60)


# ---------------------------------------------------------------- Kubernetes

def k8s_cases(rendered):
    """(overlay, workload, container, args, env-with-mount-paths, mounts, secret-items)."""
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind(docs, "ConfigMap")}
        for workload, spec in pod_specs(docs):
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            # Init containers too: the consumers' migration runs as one.
            for c in spec.get("initContainers", []) + spec["containers"]:
                env = {}
                for source in c.get("envFrom", []):
                    ref = source.get("configMapRef")
                    assert ref, f"{overlay} {workload}: only configMapRef envFrom is supported here"
                    assert ref["name"] in configmaps, f"{overlay} {workload}: ConfigMap {ref['name']} not rendered"
                    env.update(configmaps[ref["name"]])
                for e in c.get("env", []):
                    assert "value" in e, f"{overlay} {workload}: env {e['name']} has no literal value"
                    env[e["name"]] = e["value"]
                # mount path -> {file name in the mount: secret key}
                mounts = {}
                for m in c.get("volumeMounts", []):
                    vol = volumes[m["name"]]
                    if "secret" in vol:
                        items = vol["secret"].get("items")
                        assert items, f"{overlay} {workload}: mount {m['name']} should list its keys"
                        mounts[m["mountPath"]] = {i["path"]: i["key"] for i in items}
                    else:
                        mounts[m["mountPath"]] = None
                yield overlay, workload, c["name"], c.get("args", []), env, mounts


def materialise(env, mounts, root: Path, ca_pem: str, where: str, reads: set) -> dict:
    """Writes every mounted secret file under root and re-roots env values that point into mounts.
    A file setting the subcommand reads (`reads`) that is not inside a mounted Secret fails: the
    pod would not have the file. Settings the subcommand ignores (the shared ConfigMap) pass as-is."""
    for mount, files in mounts.items():
        target = root / mount.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        for name, key in (files or {}).items():
            (target / name).write_text(dummy_content(key, ca_pem))
    out = {}
    for name, value in env.items():
        is_path = name.endswith(("_FILE", "_LOCATION", "_ROOT_CERT")) and value and name in reads
        if is_path:
            mount = next((m for m in mounts if value.startswith(m.rstrip("/") + "/")), None)
            assert mount is not None and mounts[mount] is not None, \
                f"{where}: {name}={value} is not a file from a mounted Secret"
            relative = value[len(mount.rstrip("/")) + 1:]
            assert relative in mounts[mount], \
                f"{where}: {name}={value}: the Secret mounted at {mount} has no item {relative!r}"
            value = str(root / value.lstrip("/"))
        out[name] = value
    return out


def test_every_kubernetes_container_passes_check_config_with_its_manifest(rendered, tgingest, known_env,
                                                                          ca_pem, tmp_path):
    seen = set()
    for n, (overlay, workload, container, args, env, mounts) in enumerate(k8s_cases(rendered)):
        where = f"{overlay} {workload} container {container}"
        assert args, f"{where}: no subcommand in args"
        sub = args[0]
        unknown = {k for k in env if k not in known_env[sub]}
        # The shared ConfigMap carries settings of every role; the role's own env must be known.
        own = {e for e in unknown if e not in set().union(*known_env.values())}
        assert not own, f"{where}: tgingest {sub} reads no {sorted(own)}"
        full_env = {**base_env(), **materialise(env, mounts, tmp_path / f"c{n}", ca_pem, where,
                                                  known_env[sub])}
        result = check(tgingest, args, full_env)
        assert result.returncode == 0, f"{where}: tgingest {' '.join(args)} --check-config exited " \
            f"{result.returncode}:\n{result.stdout}{result.stderr}"
        assert f"configuration OK for `tgingest {sub}`" in result.stdout
        seen.add((overlay, sub))
    for overlay in OVERLAYS:
        for sub in ("producer", "consumer", "migrate"):
            assert (overlay, sub) in seen, f"{overlay}: no {sub} container was checked"


def test_each_kubernetes_container_sets_only_variables_its_subcommand_reads(rendered, known_env):
    for overlay, workload, container, args, _env, _mounts in k8s_cases(rendered):
        sub = args[0]
        spec = next(s for w, s in pod_specs(rendered[overlay]) if w == workload)
        c = next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == container)
        own = {e["name"] for e in c.get("env", [])} - known_env[sub]
        assert not own, f"{overlay} {workload}: tgingest {sub} ignores {sorted(own)} (misspelt or wrong role?)"


def test_a_missing_secret_file_makes_check_config_fail_naming_it(rendered, tgingest, known_env, ca_pem,
                                                                 tmp_path):
    """The harness is not vacuous: the same producer environment without its token file fails."""
    overlay, workload, container, args, env, mounts = next(
        case for case in k8s_cases(rendered) if case[3][:1] == ["producer"])
    full_env = {**base_env(), **materialise(env, mounts, tmp_path, ca_pem, workload, known_env["producer"])}
    Path(full_env["TELEGRAM_BOT_TOKENS_FILE"]).unlink()
    result = check(tgingest, args, full_env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "TELEGRAM_BOT_TOKENS_FILE" in result.stderr
    assert "dummy-token" not in result.stderr + result.stdout


# ---------------------------------------------------------------- Compose

def tgingest_services(compose):
    """Services running the tgingest image (the Dockerfile's default target; its telegram-sim
    target is the simulator, not tgingest)."""
    for name, svc in compose["services"].items():
        build = svc.get("build", {})
        if build.get("dockerfile") == "deploy/Dockerfile" and build.get("target", "runtime") == "runtime":
            yield name, svc


def test_every_compose_tgingest_service_passes_check_config(compose, tgingest, known_env, ca_pem, tmp_path):
    services = dict(tgingest_services(compose))
    assert {"producer", "consumer", "migrate"} <= set(services)
    for name, svc in services.items():
        args = svc["command"]
        sub = args[0]
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        unknown = set(env) - known_env[sub]
        assert not unknown, f"compose {name}: tgingest {sub} reads no {sorted(unknown)}"
        secrets = {}
        for s in svc.get("secrets", []):
            source = s if isinstance(s, str) else s["source"]
            target = s.get("target", source) if isinstance(s, dict) else source
            path = target if target.startswith("/") else f"/run/secrets/{target}"
            secrets[path] = source
        for key, value in list(env.items()):
            if key.endswith("_FILE"):
                assert value in secrets, f"compose {name}: {key}={value} is not a declared secret"
                f = tmp_path / name / value.lstrip("/")
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text(dummy_content(secrets[value], ca_pem))
                env[key] = str(f)
        result = check(tgingest, args, {**base_env(), **env})
        assert result.returncode == 0, f"compose {name}: tgingest {' '.join(args)} --check-config exited " \
            f"{result.returncode}:\n{result.stdout}{result.stderr}"


def test_compose_topic_defaults_match_the_binary_and_the_autoscalers(compose):
    init = compose["services"]["kafka-init"]["environment"]
    assert int(init["PARTITIONS"]) == DEFAULT_PARTITIONS
    assert init["TOPIC"] == "tg.updates"
    assert int(init["RETENTION_MS"]) == 7 * 24 * 3600 * 1000
