"""docker-compose.yml's producer profiles: `demo` (simulated Telegram, no bot token) and `telegram`
(the producer for real bots, tokens from a Docker secret), and the override with which
deploy/tests/compose-e2e runs the stack for real. The stack itself is exercised by compose-e2e
(by hand; it needs a Docker engine); these tests keep the files shaped the way it relies on.
"""

import os
import re

import yaml

from conftest import REPO, run, tool

DOCKERFILE = REPO / "deploy" / "Dockerfile"
E2E_OVERRIDE = REPO / "deploy" / "tests" / "compose-e2e.yml"


def resolve(*profiles, files=("docker-compose.yml",), extra_env=None):
    """`docker-compose config` for the given profiles and files, with no bot token file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "TGINGEST_", "POSTGRES_", "E2E_"))}
    env["TGINGEST_BOT_TOKENS_FILE"] = "/nonexistent/telegram_bot_tokens"
    env.update(extra_env or {})
    cmd = [tool("docker-compose"), "--project-directory", str(REPO)]
    for f in files:
        cmd += ["-f", str(REPO / f)]
    for p in profiles:
        cmd += ["--profile", p]
    result = run(cmd + ["config"], cwd=REPO, env=env)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout), result.stderr


def enabled(services, *profiles):
    """The services `up` starts with these profiles (no dependency pulls one in: checked below)."""
    return {n: s for n, s in services.items() if not s.get("profiles") or set(s["profiles"]) & set(profiles)}


def test_each_producer_belongs_to_exactly_one_producer_profile(compose):
    s = compose["services"]
    assert s["producer"]["profiles"] == ["telegram"]
    assert s["producer-demo"]["profiles"] == ["demo"]
    assert s["telegram-sim"]["profiles"] == ["demo"]
    producers = [n for n, svc in s.items() if svc.get("command", [None])[0] == "producer"]
    assert sorted(producers) == ["producer", "producer-demo"]


def test_the_demo_profile_runs_without_a_bot_token():
    config, _ = resolve("demo")
    services = enabled(config["services"], "demo")
    assert {"telegram-sim", "producer-demo", "consumer", "migrate", "kafka", "postgres"} <= set(services)
    assert "producer" not in services, "the real producer would start and need a token"
    for name, svc in services.items():
        assert not svc.get("secrets"), f"{name} needs a secret under --profile demo"
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{name} depends on {dep}, which --profile demo does not start"


def test_the_demo_producer_polls_the_simulator_with_the_simulated_tokens(compose):
    s = compose["services"]
    producer, sim = s["producer-demo"], s["telegram-sim"]
    env, sim_env = producer["environment"], sim["environment"]
    port = sim_env["BOTSIM_LISTEN"].rsplit(":", 1)[1]
    assert env["TELEGRAM_API_URL"] == f"http://telegram-sim:{port}"
    assert env["TELEGRAM_BOT_TOKENS"] == sim_env["BOTSIM_TOKENS"]
    tokens = env["TELEGRAM_BOT_TOKENS"].split(",")
    assert len(tokens) >= 2 and all(re.fullmatch(r"\d+:DEMO-[A-Za-z0-9_-]+", t) for t in tokens), tokens
    assert "TELEGRAM_BOT_TOKENS_FILE" not in env and not producer.get("secrets")
    assert producer["depends_on"]["telegram-sim"]["condition"] == "service_healthy"
    assert "test" in sim["healthcheck"]
    assert producer["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    # Prometheus scrapes `producer:9464` in either profile.
    assert "producer" in producer["networks"]["default"]["aliases"]


def test_the_simulator_is_the_dockerfiles_telegram_sim_target_and_locked_down(compose):
    sim = compose["services"]["telegram-sim"]
    assert sim["build"]["dockerfile"] == "deploy/Dockerfile"
    assert sim["build"]["target"] == "telegram-sim"
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", DOCKERFILE.read_text(), re.MULTILINE | re.IGNORECASE)
    assert "telegram-sim" in stages
    assert sim["read_only"] is True and sim["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in sim["security_opt"]
    assert "ports" not in sim, "the simulator stays inside the compose network"


def test_the_e2e_override_replaces_only_the_broker_and_adds_the_checker():
    base, _ = resolve("demo")
    config, _ = resolve("demo", "e2e-check", files=("docker-compose.yml", str(E2E_OVERRIDE)),
                        extra_env={"E2E_DIR": "/tmp/compose-e2e-render"})
    override = yaml.safe_load(E2E_OVERRIDE.read_text())["services"]
    assert set(override) == {"kafka", "kafka-init", "telegram-sim", "checker"}
    s = config["services"]
    assert s["kafka"]["image"] == "tgingest-e2e-tansu:local"
    assert s["kafka"]["command"][:1] == ["broker"]
    assert "tcp://kafka:9092" in s["kafka"]["command"], "Tansu must advertise the name clients use"
    assert s["kafka-init"]["image"] == "tgingest-e2e-tansu:local"
    # Everything tgingest runs is docker-compose.yml's, unchanged.
    for name in ("migrate", "consumer", "producer-demo", "postgres"):
        assert s[name] == base["services"][name], name
    assert s["telegram-sim"]["environment"]["BOTSIM_SENT_LOG"].startswith("/e2e/")
    assert s["checker"]["profiles"] == ["e2e-check"]
    script = (REPO / "deploy" / "tests" / "compose-e2e").read_text()
    assert "--scale consumer=3" in script and "--profile demo" in script
    assert "docker kill --signal KILL" in script
    assert run(["bash", "-n", str(REPO / "deploy" / "tests" / "compose-e2e")]).returncode == 0
