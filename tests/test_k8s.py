"""deploy/k8s/: every manifest validated against the Kubernetes schemas, no password in
any of them, and every command in them checked against this CLI.

`kubernetes-validate` checks each resource strictly (unknown fields are errors) against
the oldest and the newest Kubernetes versions it knows. Shell commands in the pods are
run with sh and a stand-in autosearch that records its arguments, with the environment
the pod would have.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from autosearch.search.cli import app

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
# The oldest Kubernetes with podFailurePolicy on by default, and the newest known.
VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
IMAGE = "autosearch:latest"
SECRET_NAME = "autosearch-db"
# user:password@ in a URL, or a password= parameter.
LITERAL_PASSWORD = re.compile(r"://[^/\s:@]+:[^@\s/]+@|password=[^&\s]", re.I)
SENSITIVE_ENV = re.compile(r"PASSWORD|STORAGE|SECRET|TOKEN|URL", re.I)


def resources() -> list[tuple[str, dict]]:
    found = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((path.name, doc))
    return found


def by_name(kind: str, name: str) -> dict:
    return next(d for _, d in resources() if d["kind"] == kind and d["metadata"]["name"] == name)


def pod_spec(resource: dict) -> dict:
    return resource["spec"]["template"]["spec"]


def containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def study_settings() -> dict[str, str]:
    return by_name("ConfigMap", "autosearch-study")["data"]


def parses(argv: list[str]) -> dict:
    """The parameters the CLI gets from `argv`; raises as the container would fail."""
    import typer

    command = typer.main.get_command(app).commands[argv[0]]
    return command.make_context(argv[0], argv[1:], resilient_parsing=False).params


def run_in_shell(container: dict, tmp_path: Path, **env: str) -> list[str]:
    """Run the container's `sh -c` line with a stand-in autosearch; the arguments it got."""
    record = tmp_path / "argv"
    record.unlink(missing_ok=True)
    fake = tmp_path / "bin" / "autosearch"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    fake.chmod(0o755)
    line = [*container.get("command", []), *container.get("args", [])]
    assert line[:2] == ["sh", "-c"], line
    path = f"{fake.parent}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(
        ["sh", "-c", line[2]], env={"PATH": path, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return record.read_text().splitlines()


# ------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates(path: Path, version: str) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        # Raises ValidationError naming the field.
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]
    assert [i["name"] for i in kustomization["images"]] == ["autosearch"]


# ------------------------------------------------------------------------- secrets


def literal_secrets(docs: list[tuple[str, dict]]) -> list[str]:
    """Every place in `docs` that holds a password in plain text."""
    found = []

    def walk(where: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{where}.{key}", value)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(f"{where}[{i}]", value)
        elif isinstance(node, str) and LITERAL_PASSWORD.search(node):
            found.append(f"{where}: a URL or DSN with a password")

    for file, doc in docs:
        where = f"{file}:{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Secret" and (doc.get("data") or doc.get("stringData")):
            found.append(f"{where}: a Secret with values (create it with create-secret.sh)")
        if doc["kind"] == "ConfigMap":
            found += [f"{where}.data.{k}" for k in doc.get("data", {}) if SENSITIVE_ENV.search(k)]
        if "template" in doc.get("spec", {}):
            for c in containers(pod_spec(doc)):
                for var in c.get("env", []):
                    if SENSITIVE_ENV.search(var["name"]) and "value" in var:
                        found.append(f"{where}/{c['name']}: env {var['name']} has a value")
        walk(where, doc)
    return found


def test_no_manifest_holds_a_password() -> None:
    assert literal_secrets(resources()) == []


@pytest.mark.parametrize(
    "leak",
    [
        {"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"password": "hunter2"}},
        {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"DB_PASSWORD": "hunter2"}},
        {
            "kind": "Deployment",
            "metadata": {"name": "d"},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "c", "env": [{"name": "AUTOSEARCH_STORAGE", "value": "x"}]}
                        ]
                    }
                }
            },
        },
        {
            "kind": "Job",
            "metadata": {"name": "j"},
            "spec": {"args": ["--storage", "postgresql://u:hunter2@db/x"]},
        },
    ],
)
def test_the_password_check_catches_literals(leak: dict) -> None:
    assert literal_secrets([("leak.yaml", leak)])


def test_storage_and_password_come_from_the_secret() -> None:
    refs = []
    for _, doc in resources():
        if "template" not in doc.get("spec", {}):
            continue
        for c in containers(pod_spec(doc)):
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == SECRET_NAME
                    refs.append((doc["metadata"]["name"], c["name"], var["name"], ref["key"]))
    for name in ("autosearch-queue", "autosearch-worker", "autosearch-dashboard"):
        assert (name, "AUTOSEARCH_STORAGE", "storage-url") in {(r[0], r[2], r[3]) for r in refs}
    assert ("postgres", "postgres", "POSTGRES_PASSWORD", "password") in refs


def test_create_secret_keeps_the_password_off_command_lines(tmp_path: Path) -> None:
    got = tmp_path / "got"
    fake = tmp_path / "kubectl"
    # Records its arguments, and the files it was given with their modes.
    fake.write_text(
        "#!/bin/bash\n"
        f'printf "%s\\n" "$@" > {got}/argv\n'
        'for a in "$@"; do case $a in --from-file=*) f=${a#*=}; k=${f%%=*}; p=${f#*=}; '
        f'cat "$p" > {got}/$k; stat -c %a "$p" > {got}/$k.mode;; esac; done\n'
    )
    fake.chmod(0o755)
    got.mkdir()
    done = subprocess.run(
        ["bash", str(K8S / "create-secret.sh"), "search"],
        env={"PATH": os.environ["PATH"], "KUBECTL": str(fake), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    argv = (got / "argv").read_text().splitlines()
    assert argv[:6] == ["--namespace", "search", "create", "secret", "generic", SECRET_NAME]
    password = (got / "password").read_text()
    assert re.fullmatch(r"[0-9a-f]{48}", password)
    url = (got / "storage-url").read_text()
    assert url == f"postgresql+psycopg://autosearch:{password}@postgres:5432/autosearch"
    assert (got / "password.mode").read_text().strip() == "600"
    assert not any(password in a for a in argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["got", "kubectl"]  # cleaned up


# ----------------------------------------------------------------------- workloads


def test_postgres_keeps_its_data_on_a_volume() -> None:
    pg = by_name("StatefulSet", "postgres")
    (claim,) = pg["spec"]["volumeClaimTemplates"]
    (mount,) = pod_spec(pg)["containers"][0]["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"]
    assert by_name("Service", "postgres")["spec"]["clusterIP"] == "None"


def test_autosearch_containers_use_the_repository_image() -> None:
    for _, doc in resources():
        if "template" not in doc.get("spec", {}):
            continue
        for c in containers(pod_spec(doc)):
            if "postgres" not in c["image"]:
                assert c["image"] == IMAGE and c["imagePullPolicy"] == "IfNotPresent"


def test_nothing_is_exposed_outside_the_cluster() -> None:
    kinds = {d["kind"] for _, d in resources()}
    assert "Ingress" not in kinds
    for _, doc in resources():
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", doc["metadata"]["name"]
            assert all("nodePort" not in p for p in doc["spec"]["ports"])


def test_queue_job_enqueues_the_study(tmp_path: Path, cifar_dir: Path) -> None:
    pod = pod_spec(by_name("Job", "autosearch-queue"))
    (queue,) = pod["containers"]
    # Kubernetes expands $(NAME) in args from the container's environment.
    settings = study_settings()
    args = [re.sub(r"\$\((\w+)\)", lambda m: settings[m.group(1)], a) for a in queue["args"]]
    params = parses(args)
    assert params["enqueue_only"] and params["study"] == settings["STUDY"]
    assert params["trials"] == int(settings["TRIALS"]) and params["storage"] is None
    # The data step reads the copy it finds (here a small one) instead of downloading.
    fetch = next(c for c in pod["initContainers"] if c["name"] == "fetch-data")
    code = fetch["command"][2].replace('"/data"', repr(str(cifar_dir)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_workers_are_an_indexed_gpu_job_on_the_shared_volume(tmp_path: Path) -> None:
    job = by_name("Job", "autosearch-worker")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"]
    pod = pod_spec(job)
    (worker,) = pod["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    assert claims[mounts["/checkpoints"]["name"]] == "autosearch-shared"
    pvc = by_name("PersistentVolumeClaim", "autosearch-shared")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # Evictions and preemptions restart the index instead of counting as failures.
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "Ignore"
    assert rules[0]["onPodConditions"][0]["type"] == "DisruptionTarget"

    settings = study_settings()
    argv = run_in_shell(worker, tmp_path, JOB_COMPLETION_INDEX="3", **settings)
    params = parses(argv)
    assert params["study"] == settings["STUDY"] and params["gpus"] == "all"
    assert params["workers_per_gpu"] == settings["WORKERS_PER_GPU"]
    assert params["worker_index"] == 3 * int(settings["WORKERS_PER_GPU"])
    assert params["checkpoint_dir"] == "/checkpoints" and params["storage"] is None

    (wait,) = pod["initContainers"]
    params = parses(run_in_shell(wait, tmp_path, **settings))
    assert params["study"] == settings["STUDY"]


def test_dashboard_reads_the_storage_from_its_environment() -> None:
    pod = pod_spec(by_name("Deployment", "autosearch-dashboard"))
    (dashboard,) = pod["containers"]
    params = parses(dashboard["args"])
    assert params["storage"] is None and params["port"] == 8080
    service = by_name("Service", "autosearch-dashboard")
    assert service["spec"]["ports"][0]["port"] == params["port"]
