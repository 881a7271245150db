"""Shared fixtures for the deployment tests: paths, tools, rendered manifests, the real binary.

Every fixture renders or runs the real thing (kubectl kustomize, docker-compose config, the
tgingest binary); nothing here re-implements a tool. A missing tool fails the run with the
command that installs it, never skips silently.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
TOOLS = Path(os.environ.get("DEPLOY_TOOLS_ROOT", "/opt/tgingest-deploy-tools"))
INSTALL_HINT = "run scripts/install-deploy-tools"

# What the image and every manifest must agree on.
IMAGE_UID = 10001
ADMIN_PORT = 9464
DEFAULT_PARTITIONS = 12
SUBCOMMANDS = ["producer", "consumer", "migrate", "replay", "dlq", "status", "demo"]


def tool(path_or_name: str) -> str:
    """Absolute path of a required tool, or a test failure saying how to install it."""
    candidate = TOOLS / path_or_name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(path_or_name)
    if not found:
        pytest.fail(f"{path_or_name} not found: {INSTALL_HINT}")
    return found


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 120)
    return subprocess.run(cmd, **kwargs)


@pytest.fixture(scope="session")
def rendered() -> dict:
    """overlay name -> list of rendered Kubernetes objects (kubectl kustomize)."""
    kubectl = tool("kubectl")
    out = {}
    for overlay in OVERLAYS:
        result = run([kubectl, "kustomize", str(K8S / "overlays" / overlay)])
        assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return out


@pytest.fixture(scope="session")
def rendered_dir(rendered, tmp_path_factory) -> Path:
    """The rendered overlays as files, one per overlay (for file-based validators)."""
    root = tmp_path_factory.mktemp("rendered")
    for overlay, docs in rendered.items():
        (root / f"{overlay}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return root


@pytest.fixture(scope="session")
def compose() -> dict:
    """docker-compose.yml as Compose resolves it (interpolation, `<<` merges), all profiles."""
    docker_compose = tool("docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "TGINGEST_", "POSTGRES_", "RUST_LOG"))}
    result = run([docker_compose, "--project-directory", str(REPO), "-f", str(REPO / "docker-compose.yml"),
                  "--profile", "observability", "config"], cwd=REPO, env=env)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="session")
def compose_source() -> dict:
    """docker-compose.yml as written (YAML merges resolved by the loader, no interpolation)."""
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="session")
def tgingest() -> str:
    """The tgingest binary: $TGINGEST_BIN, or target/debug/tgingest built by deploy/tests/run."""
    candidates = [os.environ.get("TGINGEST_BIN")]
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        candidates.append(str(Path(target) / "debug" / "tgingest"))
    candidates.append(str(REPO / "target" / "debug" / "tgingest"))
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    pytest.fail("tgingest binary not found: run `cargo build --bin tgingest` or set TGINGEST_BIN")


# `[env: NAME]`: the binary hides every variable's value from --help.
ENV_IN_HELP = re.compile(r"\[env:\s+([A-Z0-9_]+)[=\]]")
# Help text is wrapped to the terminal width; a wide one keeps each entry on one line.
HELP_ENV = {**os.environ, "COLUMNS": "1000"}


@pytest.fixture(scope="session")
def known_env(tgingest) -> dict:
    """subcommand -> the environment variables it reads, from its own --help (clap `env`) plus
    the secrets listed in the top-level help (NAME and NAME_FILE) and RUST_LOG."""
    top = run([tgingest, "--help"], env=HELP_ENV).stdout
    secrets = set()
    in_secrets = False
    for line in top.splitlines():
        if line.startswith("Secrets are read"):
            in_secrets = True
            continue
        if in_secrets:
            m = re.match(r"  ([A-Z][A-Z0-9_]+)\s", line)
            if m:
                secrets.add(m.group(1))
    assert {"DATABASE_URL", "TELEGRAM_BOT_TOKENS"} <= secrets, f"secrets list not found in --help:\n{top}"
    out = {}
    for sub in SUBCOMMANDS:
        help_text = run([tgingest, sub, "--help"], env=HELP_ENV).stdout
        names = set(ENV_IN_HELP.findall(help_text)) | {"RUST_LOG"}
        names |= secrets | {f"{s}_FILE" for s in secrets}
        out[sub] = names
    return out


def pod_specs(docs):
    """(kind/name, pod spec) for every workload in a rendered overlay."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f'{d["kind"]}/{d["metadata"]["name"]}', d["spec"]["template"]["spec"]


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name):
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]
