"""deploy/Dockerfile and its healthcheck. No Docker engine runs in CI, so the Dockerfile is parsed
and checked for what the image promises (a build stage and a runtime stage on the pinned bases,
the runtime as the default target, no `# syntax=` directive, a separate simulated-Telegram
target, non-root numeric user, tini entrypoint, a healthcheck on the admin port, every copied file
present, the runtime stage installing every shared library the binary links), and the healthcheck
script is run for real against a local HTTP server. deploy/tests/compose-e2e builds it for real.
"""

import http.server
import json
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import IMAGE_UID, REPO, run

DOCKERFILE = REPO / "deploy" / "Dockerfile"
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck"


def instructions():
    """(stage name, INSTRUCTION, argument text) with line continuations joined; a stage without
    `AS name` is named by its index."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stage = None
    index = -1
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            index += 1
            m = re.search(r"\s+AS\s+(\S+)\s*$", rest, re.IGNORECASE)
            stage = m.group(1) if m else str(index)
        out.append((stage, word, rest.strip()))
    return out


def build_args():
    out = {}
    for _, word, rest in instructions():
        if word == "ARG":
            name, _, default = rest.partition("=")
            out[name] = default
    return out


def stages():
    """stage name -> its FROM argument (the base, with build args resolved), in file order."""
    args = build_args()
    out = {}
    for stage, word, rest in instructions():
        if word == "FROM":
            out[stage] = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest).split()[0]
    return out


def chain(name):
    """The instructions a stage runs, its parent stages' first (what ends up in its image)."""
    base = stages()[name]
    inherited = chain(base) if base in stages() else []
    return inherited + [(w, r) for s, w, r in instructions() if s == name]


def test_the_image_is_a_rust_build_stage_and_a_slim_debian_runtime():
    bases = stages()
    assert bases["build"] == "rust:1.95-bookworm"
    root = "runtime"
    while bases[root] in bases:
        root = bases[root]
    assert bases[root] == "debian:bookworm-slim"
    # The runtime is the default target: `docker build` without --target builds the last stage.
    assert list(bases)[-1] == "runtime"
    # Every stage starts from a pinned base or from an earlier stage.
    for stage, base in bases.items():
        assert base in ("rust:1.95-bookworm", "debian:bookworm-slim") or base in bases, (stage, base)


def test_no_syntax_directive_so_the_builtin_frontend_builds_it():
    # A `# syntax=` line makes BuildKit pull a frontend image: an engine that cannot reach a
    # registry (and every air-gapped builder) fails before the first instruction.
    first = DOCKERFILE.read_text().lstrip().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first, re.IGNORECASE), first


def test_the_runtime_runs_as_the_numeric_non_root_user_under_tini():
    final = chain("runtime")
    users = [r for w, r in final if w == "USER"]
    assert users and users[-1] == f"{IMAGE_UID}:{IMAGE_UID}"
    [entrypoint] = [json.loads(r) for w, r in final if w == "ENTRYPOINT"]
    assert entrypoint[:2] == ["/usr/bin/tini", "--"] and entrypoint[2].endswith("/tgingest")
    run_lines = " ".join(r for w, r in final if w == "RUN")
    assert re.search(r"\btini\b", run_lines) and f"--uid {IMAGE_UID}" in run_lines


def test_the_simulated_telegram_target_is_separate_and_unprivileged():
    sim = chain("telegram-sim")
    users = [r for w, r in sim if w == "USER"]
    assert users and users[-1] == f"{IMAGE_UID}:{IMAGE_UID}"
    [entrypoint] = [json.loads(r) for w, r in sim if w == "ENTRYPOINT"]
    assert entrypoint[:2] == ["/usr/bin/tini", "--"] and entrypoint[2].endswith("/botsim")
    # The production image carries nothing of the simulator.
    runtime_copies = " ".join(r for w, r in chain("runtime") if w == "COPY")
    assert "botsim" not in runtime_copies and "telegram-sim" not in runtime_copies


def test_the_healthcheck_is_exec_form_and_uses_the_copied_script():
    final = chain("runtime")
    [health] = [r for w, r in final if w == "HEALTHCHECK"]
    cmd = json.loads(health.split("CMD", 1)[1].strip())
    copies = [r.split() for w, r in final if w == "COPY"]
    destinations = {parts[-1]: parts[-2] for parts in copies}
    assert cmd[0] in destinations
    assert (REPO / destinations[cmd[0]]).is_file()


def test_every_copied_path_exists_and_target_is_kept_out_of_the_context():
    for stage, word, rest in instructions():
        if word == "COPY" and "--from=" not in rest:
            for source in rest.split()[:-1]:
                if not source.startswith("--"):
                    assert (REPO / source).exists(), source
    ignore = (REPO / "deploy" / "Dockerfile.dockerignore").read_text().split()
    assert "target/" in ignore and ".git/" in ignore


def test_the_build_stage_installs_what_librdkafka_needs():
    build = " ".join(r for w, r in chain("build") if w == "RUN")
    for pkg in ("cmake", "libssl-dev", "zlib1g-dev", "pkg-config", "build-essential"):
        assert re.search(rf"\b{re.escape(pkg)}\b", build), pkg
    assert "--locked" in build and "--bin tgingest" in build


# Packages every debian:bookworm-slim image has (Priority: required); anything else the binary
# links must be installed by the runtime stage.
SLIM_BASE = {"libc6", "libgcc-s1", "zlib1g", "libzstd1", "liblzma5", "libselinux1"}


def test_the_runtime_stage_installs_every_shared_library_the_binary_links(tgingest):
    result = run(["ldd", tgingest])
    assert result.returncode == 0, result.stderr
    libs = re.findall(r"=>\s+(\S+)\s+\(", result.stdout)
    assert libs, result.stdout
    packages = set()
    for lib in libs:
        real = str(Path(lib).resolve())
        owner = run(["dpkg", "-S", real])
        if owner.returncode != 0:
            owner = run(["dpkg", "-S", lib])
        assert owner.returncode == 0, f"{lib} belongs to no Debian package (built from source?)"
        packages.add(owner.stdout.split(":", 1)[0].strip())
    runtime_run = " ".join(r for w, r in chain("runtime") if w == "RUN")
    missing = {p for p in packages - SLIM_BASE if not re.search(rf"\b{re.escape(p)}\b", runtime_run)}
    assert not missing, f"the runtime stage does not install {sorted(missing)} (linked by tgingest)"


# ---------------------------------------------------------------- the healthcheck script

class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's naming)
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok\n" if code == 200 else b"no\n")

    def log_message(self, *args):
        pass


@pytest.fixture
def admin_server():
    servers = []

    def start(status):
        handler = type("H", (_Handler,), {"status": status})
        server = http.server.HTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def healthcheck(admin_listen):
    return subprocess.run([str(HEALTHCHECK)], env={"PATH": "/usr/bin:/bin", "ADMIN_LISTEN": admin_listen},
                          capture_output=True, text=True, timeout=20)


def test_the_healthcheck_passes_when_healthz_answers_200(admin_server):
    port = admin_server(200)
    result = healthcheck(f"0.0.0.0:{port}")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_healthcheck_fails_when_healthz_answers_an_error(admin_server):
    port = admin_server(503)
    result = healthcheck(f"0.0.0.0:{port}")
    assert result.returncode == 1
    assert "503" in result.stdout


def test_the_healthcheck_fails_when_nothing_listens():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = healthcheck(f"0.0.0.0:{port}")
    assert result.returncode == 1
    assert "no answer" in result.stdout


def test_the_healthcheck_passes_when_the_admin_server_is_off():
    assert healthcheck("off").returncode == 0
