"""How the stand-in kubelet (kubelet.py) turns one container of a pod into a local process: its
argv, env, working directory, folders standing in for its mounts, and, once it exited, its
termination message. Each rule follows the kubelet of Kubernetes v1.36 (pkg/kubelet/
kubelet_pods.go makeEnvironmentVariables, kuberuntime_container.go getTerminationMessage,
third_party/forked/golang/expansion); where this module departs from it, kubelet.py's docstring
says so.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The kubelet reads at most this much of the termination-log file (its tail), and with
# FallbackToLogsOnError at most this many of the log's last lines and bytes.
MAX_TERMINATION_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
# The env variable through which the project's job finds its termination log (termination.py).
TERMINATION_LOG_ENV = "DREAMBOOTH_TERMINATION_LOG"

# fieldRef paths the downward API allows in env, that have a value on this node.
_LABEL_OR_ANNOTATION = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class ContainerConfigError(Exception):
    """The container cannot start: the kubelet reports it waiting with CreateContainerConfigError
    and retries, the pod staying Pending."""


@dataclass(frozen=True)
class Launch:
    """A container ready to run as a process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    termination_log: Path
    message_policy: str


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' `$(NAME)` expansion: a defined NAME is replaced, an undefined one kept as it is,
    `$$` is a literal `$`, any other `$` stays."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        following = text[i + 1]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "(":
            closer = text.find(")", i + 2)
            if closer == -1:  # an unterminated reference is kept, from its "$("
                out.append("$(")
                i += 2
            else:
                name = text[i + 2:closer]
                out.append(variables.get(name, f"$({name})"))
                i = closer + 1
        else:
            out.append("$" + following)
            i += 2
    return "".join(out)


class MountMap:
    """Container paths (mountPaths, the termination-message path) and the host paths backing
    them. A value equal to a mountPath, or starting with it followed by "/", is rewritten to the
    backing path; the longest mountPath wins."""

    def __init__(self, mounts: Mapping[str, Path]):
        self._mounts = sorted(((p.rstrip("/") or "/", b) for p, b in mounts.items()),
                              key=lambda row: len(row[0]), reverse=True)

    def rewrite(self, value: str) -> str:
        for mount_path, backing in self._mounts:
            if mount_path != "/" and (value == mount_path or value.startswith(mount_path + "/")):
                return str(backing) + value[len(mount_path):]
        return value

    def backing(self, mount_path: str) -> Path | None:
        return next((b for p, b in self._mounts if p == mount_path.rstrip("/")), None)


def field_value(pod: Mapping[str, Any], field_path: str) -> str:
    """A downward-API fieldRef's value; a missing label or annotation is "" as in the kubelet."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"), "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs") or []),
        "status.hostIPs": ",".join(ip["ip"] for ip in status.get("hostIPs") or []),
    }
    if field_path in simple:
        return simple[field_path] or ""
    match = _LABEL_OR_ANNOTATION.match(field_path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    raise ContainerConfigError(f"unsupported fieldRef fieldPath {field_path!r}")


class Sources:
    """Secrets and ConfigMaps of the pod's namespace, each read once per container start."""

    def __init__(self, namespace: str, read: Callable[[str, str, str], dict | None]):
        self._namespace, self._read, self._cache = namespace, read, {}

    def data(self, kind: str, name: str, optional: bool) -> dict[str, str] | None:
        """The object's data (a Secret's decoded); None for a missing optional one."""
        if (kind, name) not in self._cache:
            obj = self._read(kind, self._namespace, name)
            if obj is None:
                if optional:
                    return None
                raise ContainerConfigError(f'{kind.lower()} "{name}" not found')
            raw = obj.get("data") or {}
            self._cache[kind, name] = ({k: base64.b64decode(v).decode(errors="replace")
                                        for k, v in raw.items()} if kind == "Secret" else dict(raw))
        return self._cache[kind, name]

    def key(self, kind: str, ref: Mapping[str, Any]) -> str | None:
        optional = bool(ref.get("optional"))
        data = self.data(kind, ref["name"], optional)
        if data is None:
            return None
        if ref["key"] not in data:
            if optional:
                return None
            raise ContainerConfigError(
                f"couldn't find key {ref['key']} in {kind} {self._namespace}/{ref['name']}")
        return data[ref["key"]]


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any],
                  sources: Sources) -> dict[str, str]:
    """The container's env as the kubelet resolves it (envFrom first, then env in order, each
    value expanding the variables defined before it), before any path rewriting."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        kind, ref = (("ConfigMap", source["configMapRef"]) if "configMapRef" in source
                     else ("Secret", source["secretRef"]))
        data = sources.data(kind, ref["name"], bool(ref.get("optional")))
        for key, value in (data or {}).items():
            env[source.get("prefix", "") + key] = value
    for var in container.get("env") or []:
        value_from = var.get("valueFrom")
        if var.get("value") or not value_from:
            env[var["name"]] = expand(var.get("value") or "", env)
            continue
        if "fieldRef" in value_from:
            value = field_value(pod, value_from["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in value_from:
            value = sources.key("Secret", value_from["secretKeyRef"])
        elif "configMapKeyRef" in value_from:
            value = sources.key("ConfigMap", value_from["configMapKeyRef"])
        else:
            raise ContainerConfigError(f"env {var['name']}: {sorted(value_from)} is not emulated")
        if value is not None:
            env[var["name"]] = value
    return env


def argv_of(container: Mapping[str, Any], entrypoint: list[str], env: Mapping[str, str]) -> list[str]:
    """command (or the image's entrypoint) then args, `$(NAME)` expanded with the container env."""
    command = container.get("command") or []
    expanded = [expand(a, env) for a in (*command, *(container.get("args") or []))]
    return expanded if command else [*entrypoint, *expanded]


def volume_folders(pod: Mapping[str, Any], pod_dir: Path, claims_dir: Path) -> dict[str, Path]:
    """A folder for each volume of the pod: a persistentVolumeClaim's is shared by every pod of
    the namespace naming that claim (and outlives them), any other volume's is the pod's own,
    created empty (emptyDir semantics, whatever the volume's kind)."""
    folders = {}
    for volume in pod["spec"].get("volumes") or []:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        folder = (claims_dir / pod["metadata"]["namespace"] / claim if claim
                  else pod_dir / "volumes" / volume["name"])
        folder.mkdir(parents=True, exist_ok=True)
        folders[volume["name"]] = folder
    return folders


def plan_launch(pod: Mapping[str, Any], container: Mapping[str, Any], *, folders: Mapping[str, Path],
                container_dir: Path, entrypoint: list[str], base_env: Mapping[str, str],
                sources: Sources, image_workdir: str) -> Launch:
    """The process standing in for `container`: see kubelet.py's docstring for the rewriting of
    paths under mountPaths, TMPDIR, HOSTNAME and the termination log."""
    container_dir.mkdir(parents=True, exist_ok=True)
    termination_log = container_dir / "termination-log"
    termination_log.write_bytes(b"")
    message_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
    mounts = {message_path: termination_log}
    for mount in container.get("volumeMounts") or []:
        backing = folders[mount["name"]] / mount.get("subPath", "")
        backing.mkdir(parents=True, exist_ok=True)
        mounts[mount["mountPath"]] = backing
    paths = MountMap(mounts)
    resolved = container_env(pod, container, sources)
    env = {**base_env, "HOSTNAME": pod["spec"].get("hostname") or pod["metadata"]["name"]}
    if paths.backing("/tmp") is not None:
        env["TMPDIR"] = str(paths.backing("/tmp"))
    env.update({name: paths.rewrite(value) for name, value in resolved.items()})
    env[TERMINATION_LOG_ENV] = str(termination_log)
    workdir = container.get("workingDir") or image_workdir
    # The working directory exists only where a mount backs it; elsewhere the container's folder.
    cwd = Path(paths.rewrite(workdir)) if paths.rewrite(workdir) != workdir else container_dir
    argv = [paths.rewrite(a) for a in argv_of(container, [], resolved)]
    return Launch(name=container["name"], argv=argv if container.get("command") else [*entrypoint, *argv],
                  env=env, cwd=cwd, log_path=container_dir / "0.log", termination_log=termination_log,
                  message_policy=container.get("terminationMessagePolicy") or "File")


def termination_message(termination_log: Path, log_path: Path, policy: str, exit_code: int) -> str:
    """The terminated state's message: the termination log's last 4096 bytes; with
    FallbackToLogsOnError, a non-zero exit and an empty (or missing) file, the log's last 80
    lines, at most their last 2048 bytes."""
    try:
        data = _tail_bytes(termination_log, MAX_TERMINATION_MESSAGE_BYTES)
    except FileNotFoundError:
        data = b""
    if data or policy != "FallbackToLogsOnError" or exit_code == 0:
        return data.decode(errors="replace")
    try:
        lines = _tail_bytes(log_path, 1 << 20).splitlines(keepends=True)
    except FileNotFoundError:
        return ""
    return b"".join(lines[-FALLBACK_LOG_LINES:])[-FALLBACK_LOG_BYTES:].decode(errors="replace")


def _tail_bytes(path: Path, limit: int) -> bytes:
    with path.open("rb") as file:
        size = file.seek(0, 2)
        file.seek(max(0, size - limit))
        return file.read()
