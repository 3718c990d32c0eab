"""What Kueue's own install (the CRDs and webhook configurations of its config/components, as
`kubectl apply -k config/default` makes them) and the project's manifests/kueue put on the cluster,
rewritten for a Kueue that runs as a local process.

Kueue runs outside the cluster, so nothing can reach it by Service: every webhook clientConfig (the
admission webhooks and the CRDs' conversion webhook) becomes `url: https://127.0.0.1:<port><path>` with
the webhook server's self-signed certificate as caBundle, where upstream has
`service: {name: webhook-service, namespace: system}`. Kueue's RBAC (it runs as the cluster admin here),
Deployment, Services and visibility APIService are not applied.
"""

from __future__ import annotations

import base64
import copy
import datetime
import ipaddress
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PROJECT_QUEUES = Path(__file__).resolve().parents[2] / "manifests" / "kueue" / "base" / "kueue.yaml"
# kustomize's namePrefix in Kueue's config/default, so the objects carry the names a real install gives.
NAME_PREFIX = "kueue-"
GPU_RESOURCE = "nvidia.com/gpu"


def kueue_config_dir(bin_dir: Path) -> Path:
    """Kueue's config/components of the built release: scripts/build-cluster.sh copies it from the Go
    module cache to <bin>/../kueue-config, so that the tests need no module cache."""
    folder = Path(bin_dir).parent / "kueue-config"
    if not (folder / "crd" / "bases").is_dir():
        raise FileNotFoundError(f"{folder}: Kueue's config/components, copied by scripts/build-cluster.sh")
    return folder


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def _client_config(url: str, ca_bundle: bytes) -> dict[str, str]:
    return {"url": url, "caBundle": base64.b64encode(ca_bundle).decode()}


def crds(config_dir: Path, webhook_url: str, ca_bundle: bytes) -> list[dict[str, Any]]:
    """Kueue's CRDs as config/components/crd's kustomization lists them, with the conversion webhook
    patches it applies (v1beta1 <-> v1beta2) pointed at the local webhook server."""
    folder = config_dir / "crd"
    kustomization = _kustomization(folder)
    by_name = {doc["metadata"]["name"]: doc for path in kustomization["resources"]
               for doc in _documents(folder / path)}
    for patch in kustomization.get("patches", []):
        for doc in _documents(folder / patch["path"]):
            conversion = copy.deepcopy(doc["spec"]["conversion"])
            path = conversion["webhook"]["clientConfig"]["service"]["path"]
            conversion["webhook"]["clientConfig"] = _client_config(webhook_url + path, ca_bundle)
            by_name[doc["metadata"]["name"]]["spec"]["conversion"] = conversion
    return list(by_name.values())


def webhook_configurations(config_dir: Path, webhook_url: str, ca_bundle: bytes) -> list[dict[str, Any]]:
    """Kueue's Mutating- and ValidatingWebhookConfiguration, with config/components/webhook's patches
    (pods, deployments and statefulsets of kube-system and kueue-system left alone)."""
    folder = config_dir / "webhook"
    configurations = _documents(folder / "manifests.yaml")
    for patch in _kustomization(folder).get("patches", []):
        for doc in yaml.safe_load_all(patch["patch"]):
            _merge_webhooks(configurations, doc)
    for configuration in configurations:
        configuration["metadata"]["name"] = NAME_PREFIX + configuration["metadata"]["name"]
        for webhook in configuration["webhooks"]:
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = _client_config(webhook_url + path, ca_bundle)
    return configurations


def _merge_webhooks(configurations: list[dict[str, Any]], patch: dict[str, Any]) -> None:
    """A strategic-merge patch of webhooks (merged by name), as kustomize applies it."""
    target = next(c for c in configurations
                  if (c["kind"], c["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"]))
    webhooks = {webhook["name"]: webhook for webhook in target["webhooks"]}
    for change in patch["webhooks"]:
        webhooks[change["name"]].update(change)


def project_queues(namespace: str, gpu_quota: int | None = None) -> list[dict[str, Any]]:
    """manifests/kueue/base: the ResourceFlavor and ClusterQueue, and the LocalQueue in `namespace`
    (where `kubectl apply -k` would put it); `gpu_quota` replaces the ClusterQueue's GPU quota."""
    docs = _documents(PROJECT_QUEUES)
    for doc in docs:
        if doc["kind"] == "LocalQueue":
            doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "ClusterQueue" and gpu_quota is not None:
            quotas = [resource for group in doc["spec"]["resourceGroups"] for flavor in group["flavors"]
                      for resource in flavor["resources"] if resource["name"] == GPU_RESOURCE]
            assert quotas, f"{PROJECT_QUEUES} has no {GPU_RESOURCE} quota to replace"
            for quota in quotas:
                quota["nominalQuota"] = gpu_quota
    return docs


WEEK = datetime.timedelta(days=7)


def write_self_signed(crt: Path, key: Path, valid_for: datetime.timedelta = WEEK) -> bytes:
    """A self-signed serving certificate for 127.0.0.1 and its key (PEM); returns the certificate, which
    is its own caBundle (Go accepts a trusted certificate that is the leaf itself)."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dreambooth-job test kueue")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + valid_for)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(private_key, hashes.SHA256())
    )
    key.write_bytes(private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    key.chmod(0o600)
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    crt.write_bytes(pem)
    return pem
