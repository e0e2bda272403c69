"""The deployment files: systemd units verified by systemd itself, the Containerfile linted
with hadolint, the Kubernetes manifests validated against the API schemas, all offline."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "deploy" / "systemd"
KUBE = ROOT / "deploy" / "kubernetes"
VENV_BIN = Path(sys.executable).parent
INSTALLED_PYTHON = "/opt/worker/.venv/bin/python"


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Key -> values of a unit file (keys may repeat)."""
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


systemd_analyze = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(systemd_analyze is None, reason="systemd-analyze is not installed")


def staged_units(tmp_path: Path) -> Path:
    """The units with ExecStart's interpreter pointed at this venv's Python: verify checks the
    executable exists, and /opt/worker is where an install puts it, not where tests run."""
    out = tmp_path / "units"
    out.mkdir()
    for unit in SYSTEMD.glob("*.service"):
        text = unit.read_text()
        assert INSTALLED_PYTHON in text
        (out / unit.name).write_text(text.replace(INSTALLED_PYTHON, sys.executable))
    (out / "worker@3.service").symlink_to("worker@.service")
    return out


@needs_systemd
@pytest.mark.parametrize("unit", ["worker.service", "worker@3.service"])
def test_systemd_verify_is_clean(tmp_path, unit):
    staged = staged_units(tmp_path)
    proc = subprocess.run(
        [systemd_analyze, "verify", "--man=no", str(staged / unit)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 on unknown keys and bad values, and only says so: demand silence.
    assert proc.returncode == 0 and proc.stderr.strip() == "" and proc.stdout.strip() == "", proc.stderr


@needs_systemd
def test_systemd_verify_catches_a_mistake(tmp_path):
    """The check above is not vacuous: a misspelt value is reported."""
    staged = staged_units(tmp_path)
    broken = staged / "worker.service"
    broken.write_text(broken.read_text().replace("KillMode=mixed", "KillMode=mixd"))
    args = [systemd_analyze, "verify", "--man=no", str(broken)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert "mixd" in proc.stderr


@needs_systemd
def test_systemd_security_exposure_is_low(tmp_path):
    staged = staged_units(tmp_path)
    args = [systemd_analyze, "security", "--offline=yes", "--no-pager", str(staged / "worker.service")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    if proc.returncode != 0 and not found:
        pytest.skip(f"systemd-analyze security --offline unsupported here: {proc.stderr.strip()[:200]}")
    assert found and float(found.group(1)) <= 4.0, proc.stdout[-2000:]


@pytest.mark.parametrize("name", ["worker.service", "worker@.service"])
def test_unit_contract(name):
    unit = unit_settings(SYSTEMD / name)
    one = {k: v[-1] for k, v in unit.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert one["KillMode"] == "mixed"
    assert one["Restart"] == "on-failure"
    assert seconds(one["TimeoutStopSec"]) > Settings().shutdown_timeout + 5
    assert seconds(one["WatchdogSec"]) >= 2 * Settings().poll_interval + 10
    assert one["ExecStart"].split()[:4] == [INSTALLED_PYTHON, "-m", "worker", "run"]
    assert unit["EnvironmentFile"][0] == "-/etc/worker/worker.env"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "DynamicUser"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert one["StateDirectory"] and one["RuntimeDirectory"]
    # The store lives in the state directory, the only writable place under ProtectSystem=strict.
    env = dict(e.split("=", 1) for e in unit["Environment"])
    assert env["STORE_URL"].startswith("sqlite:////var/lib/" + one["StateDirectory"] + "/")
    if name == "worker@.service":
        assert env["HEALTH_PORT"] == "8000+%i"  # instance 10 on 8010, not 80010
        for instance, port in (("1", 8001), ("10", 8010)):
            health_port = env["HEALTH_PORT"].replace("%i", instance)
            assert Settings.from_env({"HEALTH_PORT": health_port}).health_port == port
        assert "WORKER_NAME" not in env


# -- the container ---------------------------------------------------------------------------

CONTAINERFILE = ROOT / "Containerfile"


def tool(name: str) -> str:
    found = VENV_BIN / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    assert path, f"{name} is missing: it comes with the dev extra (make venv)"
    return path


def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n\s*",
        " ",
        "\n".join(line for line in CONTAINERFILE.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_containerfile_lints_clean():
    args = [tool("hadolint"), "--format", "json", "--failure-threshold", "info", str(CONTAINERFILE)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() in ("", "[]"), proc.stdout + proc.stderr


def final_stage() -> list[tuple[str, str]]:
    steps = containerfile_instructions()
    return steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]


def test_containerfile_contract():
    steps = containerfile_instructions()
    final = final_stage()
    assert sum(word == "FROM" for word, _ in steps) >= 3  # multi-stage: build, model, final
    assert "slim" in next(args for word, args in steps if word == "ARG" and args.startswith("PYTHON_IMAGE"))
    final_words = dict(final)
    assert final_words["USER"].split(":")[0] not in ("0", "root")
    assert final_words["STOPSIGNAL"] == "SIGTERM"
    # Exec form: JSON arrays, so no shell stands between the runtime and the worker (PID 1).
    assert json.loads(final_words["ENTRYPOINT"]) == ["python", "-m", "worker"]
    assert json.loads(final_words["CMD"]) == ["run"]
    health = final_words["HEALTHCHECK"]
    assert json.loads(health.split("CMD", 1)[1]) == ["python", "-m", "worker", "healthcheck"]
    # The model is built into the image, by the command `make model` runs.
    assert any(word == "RUN" and "tools/build_model.py" in args for word, args in steps)
    assert any(word == "COPY" and "--from=model" in args and "/opt/worker/var/model" in args for word, args in final)


def container_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in containerfile_instructions():
        if word == "FROM":
            env = {}
        elif word == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    return env


def test_container_settings_are_valid_and_listen_beyond_the_container():
    env = container_env()
    settings = Settings.from_env(env)
    assert settings.health_host == "0.0.0.0"
    assert str(settings.embed_model_dir) == "/opt/worker/var/model"
    assert settings.store_path == Path("/var/lib/worker/worker.db")
    # Below Kubernetes' default 30 s grace. Docker and Podman stop after 10 s unless told more:
    # the README says to pass --stop-timeout 40.
    assert settings.shutdown_timeout < 30


def test_the_image_healthcheck_command_against_a_worker_on_all_interfaces(start_worker):
    """HEALTHCHECK runs `python -m worker healthcheck` with the image's HEALTH_HOST=0.0.0.0."""
    w = start_worker(extra_env={"HEALTH_HOST": "0.0.0.0"})
    env = {**w.env, "HEALTH_HOST": "0.0.0.0"}

    def healthcheck() -> int:
        return subprocess.run(
            [sys.executable, "-m", "worker", "healthcheck"], env=env, cwd=w.tmp, capture_output=True, timeout=30
        ).returncode

    assert healthcheck() == 0
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0
    assert healthcheck() != 0


# -- Kubernetes ------------------------------------------------------------------------------


def manifests() -> dict[str, dict]:
    import yaml  # PyYAML comes with kubernetes-validate

    found = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                found[doc["kind"]] = doc
    return found


def test_kubernetes_manifests_validate_offline():
    import kubernetes_validate

    docs = manifests()
    assert set(docs) >= {"Deployment", "ConfigMap", "Secret"}
    for doc in docs.values():
        # strict: unknown fields (a typo such as `readinesProbe`) fail too.
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_validation_is_not_vacuous():
    import kubernetes_validate

    deployment = manifests()["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_deployment_contract():
    docs = manifests()
    config = docs["ConfigMap"]["data"]
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # Settings from the ConfigMap, REDIS_URL from the Secret; together they are valid settings.
    assert container["envFrom"] == [{"configMapRef": {"name": docs["ConfigMap"]["metadata"]["name"]}}]
    redis = next(e for e in container["env"] if e["name"] == "REDIS_URL")["valueFrom"]["secretKeyRef"]
    assert redis["name"] == docs["Secret"]["metadata"]["name"]
    assert "REDIS_URL" not in config
    settings = Settings.from_env({**config, "REDIS_URL": docs["Secret"]["stringData"][redis["key"]]})
    assert settings.health_host == "0.0.0.0"
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_timeout + 5
    port = next(p for p in container["ports"] if p["name"] == "health")
    assert port["containerPort"] == settings.health_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Liveness and start-up never depend on Redis: only /readyz checks it.
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomization_renders_every_manifest():
    import yaml

    proc = subprocess.run(["kubectl", "kustomize", str(KUBE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(proc.stdout) if doc}
    assert kinds == set(manifests())


def stage(name: str) -> list[tuple[str, str]]:
    steps, current = [], None
    for word, args in containerfile_instructions():
        if word == "FROM":
            current = args.split()[-1] if " AS " in args.upper() else None
        elif current == name:
            steps.append((word, args))
    return steps


@pytest.mark.slow
def test_image_simulated_without_an_engine(redis_conn, redis_url, tmp_path):
    """No container engine here, so play the image's parts by hand: the `build` stage's COPY
    and RUN steps in a scratch directory (a fresh virtualenv, a non-editable install: no
    access to the source tree), then the final stage's ENV, ENTRYPOINT + CMD and HEALTHCHECK.
    The model stage needs the model build (make model); its output is used from var/model."""
    from tests.conftest import MODEL_DIR, queue, wait_for
    from worker.devredis import free_port

    context, venv, home = tmp_path / "src", tmp_path / "venv", tmp_path / "home"
    context.mkdir()
    home.mkdir()
    for word, args in stage("build"):
        if word == "COPY":
            *sources, _dest = args.split()
            for src in sources:
                (shutil.copytree if (ROOT / src).is_dir() else shutil.copy)(ROOT / src, context / src)
        elif word == "RUN":
            cmd = args.replace("/opt/worker/.venv", str(venv))
            cmd = cmd.replace("python -m venv", f"{sys.executable} -m venv")
            subprocess.run(["sh", "-c", cmd], cwd=context, check=True, timeout=600, capture_output=True)
    env = {
        **container_env(),
        "PATH": f"{venv}/bin:/usr/bin:/bin",
        "REDIS_URL": redis_url,
        "HEALTH_PORT": str(free_port()),
        "EMBED_MODEL_DIR": str(MODEL_DIR),
        "STORE_URL": f"sqlite:///{home}/worker.db",
        "INPUT_ROOTS": str(home),
    }
    final = dict(final_stage())
    command = json.loads(final["ENTRYPOINT"]) + json.loads(final["CMD"])
    healthcheck = json.loads(final["HEALTHCHECK"].split("CMD", 1)[1])
    log = open(tmp_path / "image.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(command, env=env, cwd=home, stdout=log, stderr=log)
    try:

        def health_ok() -> bool:
            assert proc.poll() is None, (tmp_path / "image.log").read_text()
            return subprocess.run(healthcheck, env=env, cwd=home, capture_output=True).returncode == 0

        wait_for(health_ok, timeout=30, interval=0.3, message="the image's HEALTHCHECK to pass")
        job = queue(redis_conn).enqueue("worker.jobs.ping", "from the image")
        wait_for(lambda: job.get_status(refresh=True) == "finished", message="a job done")
        proc.send_signal(signal.SIGTERM)  # STOPSIGNAL
        assert proc.wait(30) == 0
        lines = [json.loads(line) for line in (tmp_path / "image.log").read_text().splitlines() if line]
        # LOG_FORMAT=json from the image's ENV
        assert any(rec.get("job_id") == job.id and rec.get("outcome") == "ok" for rec in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_shared_store_overlay_runs_several_pods_on_postgresql():
    """deploy/kubernetes-postgres: the base with replicas >= 2 rolled one at a time, a
    PodDisruptionBudget, no SQLite volume, and STORE_URL (a PostgreSQL DSN) from a Secret."""
    import kubernetes_validate
    import yaml

    overlay = KUBE.parent / "kubernetes-postgres"
    proc = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    kinds = [doc["kind"] for doc in docs]
    assert "PersistentVolumeClaim" not in kinds and "PodDisruptionBudget" in kinds
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    assert not any("persistentVolumeClaim" in volume for volume in pod["volumes"])
    (container,) = pod["containers"]
    store = next(e for e in container["env"] if e["name"] == "STORE_URL")["valueFrom"]["secretKeyRef"]
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == store["name"])
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert "STORE_URL" not in config  # one place for it: the Secret
    redis_secret = next(d for d in docs if d["kind"] == "Secret" and "REDIS_URL" in d["stringData"])
    settings = Settings.from_env(
        {
            **config,
            "REDIS_URL": redis_secret["stringData"]["REDIS_URL"],
            "STORE_URL": secret["stringData"][store["key"]],
        }
    )
    assert settings.store_url.startswith("postgresql://")
    pdb = next(doc for doc in docs if doc["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


# -- Compose ---------------------------------------------------------------------------------

COMPOSE = ROOT / "deploy" / "compose.yaml"


def compose_env(service: dict, variables: dict[str, str] | None = None) -> dict[str, str]:
    """A service's environment with `${NAME:-default}` resolved as Compose does (variables, else the default)."""
    variables = variables or {}

    def resolve(value: object) -> str:
        return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: variables.get(m.group(1)) or m.group(2), str(value))

    return {key: resolve(value) for key, value in service["environment"].items()}


def test_compose_file_contract():
    """deploy/compose.yaml checked offline (no container engine here): worker + Redis, PostgreSQL
    behind a profile, the worker's settings valid and named as worker/settings.py names them."""
    import yaml

    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"worker", "redis", "postgres"}
    assert "profiles" not in services["worker"] and "profiles" not in services["redis"]
    assert services["postgres"]["profiles"] == ["postgres"]
    worker, postgres = services["worker"], services["postgres"]
    # Built from the project's Containerfile, the context being the repository root.
    assert (COMPOSE.parent / worker["build"]["context"]).resolve() == ROOT
    assert worker["build"]["dockerfile"] == CONTAINERFILE.name
    # Every variable it sets is a setting (a typo would be silently ignored by the worker).
    known = {f.metadata["env"] for f in dataclasses.fields(Settings)}
    assert set(worker["environment"]) <= known, set(worker["environment"]) - known
    settings = Settings.from_env({**container_env(), **compose_env(worker)})
    assert settings.redis_url.startswith("redis://redis:6379/")  # the service's name on the compose network
    assert settings.store_path == Path("/var/lib/worker/worker.db")
    assert any(v.split(":")[-1] == "/var/lib/worker" for v in worker["volumes"])
    assert settings.health_host == "0.0.0.0"
    assert f"127.0.0.1:{settings.health_port}:{settings.health_port}" in worker["ports"]
    assert worker["healthcheck"]["test"] == ["CMD", "python", "-m", "worker", "healthcheck"]
    assert worker["stop_signal"] == "SIGTERM"
    assert seconds(worker["stop_grace_period"]) > settings.shutdown_timeout + 5
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["depends_on"]["postgres"] == {"condition": "service_healthy", "required": False}
    for service in services.values():  # published on loopback only
        assert all(port.startswith("127.0.0.1:") for port in service.get("ports", []))
        assert service["healthcheck"]["test"][0] == "CMD"
    # With the profile: the STORE_URL the file and docs/deployment.md give reaches the postgres service.
    pg_env = postgres["environment"]
    url = f"postgresql://{pg_env['POSTGRES_USER']}:{pg_env['POSTGRES_PASSWORD']}@postgres:5432/{pg_env['POSTGRES_DB']}"
    assert f"STORE_URL={url}" in COMPOSE.read_text()
    assert f"STORE_URL={url}" in (ROOT / "docs" / "deployment.md").read_text()
    settings = Settings.from_env({**container_env(), **compose_env(worker, {"STORE_URL": url})})
    assert settings.store_url == url
    assert "pgvector" in postgres["image"] and postgres["image"].endswith("pg18")
    assert set(compose["volumes"]) == {
        v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith(("/", "."))
    }
