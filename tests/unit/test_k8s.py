"""deploy/k8s: every overlay renders (``kubectl kustomize`` when installed, else the small renderer below for the
subset the manifests use, checked against kubectl where both exist), each manifest validates strictly against
the Kubernetes schemas offline (kubernetes-validate), and the wiring holds: probe paths and ports exist in the API,
the mounted config is the file the container runs and a valid streamd config, no credential sits in a ConfigMap,
/dev/shm is memory-backed and big enough for the rings, the pods run as non-root with a read-only root."""

from __future__ import annotations

import copy
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, require

K8S = REPO / "deploy" / "k8s"
OVERLAYS = ["cpu", "gpu", "try-it"]
KUBERNETES_VERSION = "1.30.0"
SECRET_ENV = {"PGPASSWORD": "pg-secret-value", "STREAMD_API_TOKEN": "api-token-value-0123456789"}

# ---- a renderer for the subset of kustomize these manifests use -------------------------------------------


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge for the fields we patch: maps merge, lists of named maps merge by name, others replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x
                                                                   for x in base + patch)):
        out_list = [copy.deepcopy(x) for x in base]
        for item in patch:
            match = next((i for i, x in enumerate(out_list) if x["name"] == item["name"]), None)
            if match is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[match] = _merge(out_list[match], item)
        return out_list
    return copy.deepcopy(patch)


def _generated(kind: str, spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    assert spec.get("options", {}).get("disableNameSuffixHash") is True, "the renderer does not do name hashes"
    data: dict[str, str] = {}
    for entry in spec.get("files", []):
        data[Path(entry).name] = (folder / entry).read_text()
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if kind == "Secret":
        import base64

        doc["type"] = "Opaque"
        doc["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        doc["data"] = data
    return doc


def render(folder: Path) -> list[dict[str, Any]]:
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "resources", "configMapGenerator", "secretGenerator", "images", "patches"}
    assert set(k) <= known, f"{folder}: the test's renderer does not know {set(k) - known}"
    docs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        path = folder / res
        docs += render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for spec in k.get(key, []):
            doc = _generated(kind, spec, folder)
            same = [i for i, d in enumerate(docs) if d["kind"] == kind and d["metadata"]["name"] == spec["name"]]
            if spec.get("behavior") == "replace":
                assert same, f"{folder}: {kind} {spec['name']} to replace is not in the base"
                docs[same[0]] = doc
            else:
                assert not same
                docs.append(doc)
    for patch in k.get("patches", []):
        p = yaml.safe_load((folder / patch["path"]).read_text())
        target = next(i for i, d in enumerate(docs)
                      if d["kind"] == p["kind"] and d["metadata"]["name"] == p["metadata"]["name"])
        docs[target] = _merge(docs[target], p)
    for image in k.get("images", []):
        for d in docs:
            for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                if c["image"].split(":")[0] == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return docs


def _kubectl(folder: Path) -> list[dict[str, Any]] | None:
    if shutil.which("kubectl") is None:
        return None
    out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _key(d: dict[str, Any]) -> tuple[str, str]:
    return d["kind"], d["metadata"]["name"]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, _kubectl(K8S / "overlays" / request.param) or render(K8S / "overlays" / request.param)


def one(docs: list[dict[str, Any]], kind: str, name: str = "streamd") -> dict[str, Any]:
    found = [d for d in docs if _key(d) == (kind, name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def streamd_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


# ---- the tests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_test_renderer_agrees_with_kubectl(overlay: str) -> None:
    theirs = _kubectl(K8S / "overlays" / overlay)
    if theirs is None:
        pytest.skip("kubectl is not installed: the overlays are rendered by the test's renderer only")
    ours = render(K8S / "overlays" / overlay)
    assert sorted(ours, key=_key) == sorted(theirs, key=_key)


def test_every_manifest_validates_strictly(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        require(False, "kubernetes-validate is not installed (pip install -e '.[test]')")
        return
    overlay, docs = rendered
    assert docs
    for d in docs:
        kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)  # raises on any unknown or invalid field


def test_resources_per_overlay(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    kinds = {_key(d) for d in docs}
    expected = {("Deployment", "streamd"), ("Service", "streamd"), ("PodDisruptionBudget", "streamd"),
                ("ConfigMap", "streamd-config")}
    if overlay == "try-it":
        expected |= {("StatefulSet", "postgres"), ("Service", "postgres"), ("Secret", "streamd-credentials")}
    assert kinds == expected
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    pdb = one(docs, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (deployment["spec"]["selector"]["matchLabels"], pdb["spec"]["selector"]["matchLabels"],
                     one(docs, "Service")["spec"]["selector"]):
        assert selector.items() <= labels.items()
    image = streamd_container(docs)["image"]
    assert image == {"cpu": "streamd:cpu", "gpu": "streamd:gpu", "try-it": "streamd:cpu"}[overlay]
    gpu = streamd_container(docs)["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpu == 1) == (overlay == "gpu")


def test_images_are_the_ones_docker_builds() -> None:
    for tag, dockerfile in (("cpu", "Dockerfile"), ("gpu", "Dockerfile.gpu")):
        text = (REPO / "docker" / dockerfile).read_text()
        assert f"-t streamd:{tag}" in text
    assert "nvidia/cuda" in (REPO / "docker" / "Dockerfile.gpu").read_text()


def test_probes_and_ports_exist_in_the_api(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    from streamd.api.server import OPEN_PATHS

    overlay, docs = rendered
    server = (REPO / "streamd" / "api" / "server.py").read_text()
    routes = set(re.findall(r'Route\("([^"]+)"', server))
    c = streamd_container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    config = yaml.safe_load(one(docs, "ConfigMap", "streamd-config")["data"]["streamd.yaml"])
    assert ports["api"] == config["api"]["port"]
    assert config["api"]["host"] == "0.0.0.0"
    paths = {name: c[name]["httpGet"]["path"] for name in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert paths == {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for name in paths:
        assert c[name]["httpGet"]["port"] in ("api", ports["api"])
        assert paths[name] in routes and paths[name] in OPEN_PATHS  # probes carry no token
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] in routes
    assert int(annotations["prometheus.io/port"]) == ports["api"]
    service = one(docs, "Service")["spec"]["ports"][0]
    assert service["targetPort"] in ("api", ports["api"])


def _load_config(text: str, tmp_path: Path) -> Any:
    """The ConfigMap's config through streamd's own loader (with the Secret's variables set)."""
    from streamd.config.fleet import FleetConfig
    from streamd.config.loader import load_config
    from streamd.config.models import DaemonConfig

    data = yaml.safe_load(text)
    if "fleet" not in DaemonConfig.model_fields:  # until the daemon's config has the fleet section
        FleetConfig.model_validate(data.pop("fleet"))
        text = yaml.safe_dump(data)
    path = tmp_path / "streamd.yaml"
    path.write_text(text)
    return load_config(path, env=dict(SECRET_ENV), check_paths=False).config


def test_the_mounted_config_is_the_one_the_container_runs(rendered: tuple[str, list[dict[str, Any]]],
                                                          tmp_path: Path) -> None:
    overlay, docs = rendered
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = c.get("args") or c.get("command")
    assert args[0] == "run"
    config_path = Path(args[1])
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "streamd-config")
    mount = next(m for m in c["volumeMounts"] if m["name"] == volume["name"])
    assert "subPath" not in mount  # a subPath mount never sees ConfigMap updates
    assert config_path.parent == Path(mount["mountPath"]) and mount.get("readOnly") is True
    cm = one(docs, "ConfigMap", "streamd-config")
    assert config_path.name in cm["data"]
    dockerfile = (REPO / "docker" / ("Dockerfile.gpu" if overlay == "gpu" else "Dockerfile")).read_text()
    assert f'CMD ["run", "{config_path}"]' in dockerfile  # the image's own default is the same file
    config = _load_config(cm["data"][config_path.name], tmp_path)
    assert config.counts.url == "postgresql://streamd:pg-secret-value@postgres:5432/streamd"
    assert config.api.token == SECRET_ENV["STREAMD_API_TOKEN"]
    if overlay == "gpu":
        assert config.inference.providers[0] == "CUDAExecutionProvider"
    # every ${VAR} in the config comes from the container's environment
    env = {e["name"] for e in c["env"]}
    values = yaml.safe_dump(yaml.safe_load(cm["data"][config_path.name]))  # without the comments
    assert set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", values)) <= env


def test_no_credential_in_a_configmap(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    secret_values = set(SECRET_ENV.values())
    for d in docs:
        if d["kind"] == "Secret":
            import base64

            secret_values |= {base64.b64decode(v).decode() for v in d.get("data", {}).values()}
            secret_values |= set(d.get("stringData", {}).values())
    for d in docs:
        if d["kind"] != "ConfigMap":
            continue
        for key, text in d["data"].items():
            assert not any(v in text for v in secret_values), f"{d['metadata']['name']}/{key} holds a secret value"
            config = yaml.safe_load(text)
            assert config["api"]["token"] == "${STREAMD_API_TOKEN}"
            assert re.fullmatch(r"postgresql://[^:@/]+:\$\{PGPASSWORD\}@[^/]+/\w+", config["counts"]["url"])
            for url in re.findall(r"\w+://\S+", text):  # any other URL carries no inline password
                assert "${" in url or "@" not in url, url
    c = streamd_container(docs)
    for e in c["env"]:
        if e["name"] in SECRET_ENV:
            assert e["valueFrom"]["secretKeyRef"]["name"] == "streamd-credentials" and "value" not in e
    if overlay == "try-it":
        pg = one(docs, "StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"][0]
        password = next(e for e in pg["env"] if e["name"] == "POSTGRES_PASSWORD")
        assert password["valueFrom"]["secretKeyRef"] == {"name": "streamd-credentials", "key": "PGPASSWORD"}
        secret = one(docs, "Secret", "streamd-credentials")
        assert set(secret["data"]) == set(SECRET_ENV)


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+)([KMG]i?)?", quantity)
    assert m, quantity
    return int(m.group(1)) * units.get(m.group(2) or "", 1)


def test_shm_is_memory_backed_and_sized_for_every_ring(rendered: tuple[str, list[dict[str, Any]]],
                                                       tmp_path: Path) -> None:
    overlay, docs = rendered
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"]["medium"] == "Memory"
    config = _load_config(one(docs, "ConfigMap", "streamd-config")["data"]["streamd.yaml"], tmp_path)
    rings = sum(s.ring_slots * s.max_width * s.max_height * 3 for s in config.streams)  # a lone survivor runs all
    limit = _bytes(volume["emptyDir"]["sizeLimit"])
    assert limit >= rings
    assert _bytes(c["resources"]["limits"]["memory"]) >= limit + 2**30  # shm counts against the memory limit
    assert math.ceil(rings / 2**20) < 256 or overlay  # documents the sizing: 4 x 47.5 MiB under 256 MiB


def test_pods_run_as_non_root_with_a_read_only_root(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "requests" in c["resources"] and "memory" in c["resources"]["limits"]
        if d["metadata"]["name"] == "streamd":
            mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
            assert {"/var/lib/streamd", "/tmp", "/dev/shm", "/etc/streamd"} <= mounts
            uid = re.search(r"--uid (\d+)", (REPO / "docker" / "Dockerfile").read_text())
            assert uid and int(uid.group(1)) == pod["securityContext"]["runAsUser"]
