"""The one builder of pod templates. Everything the platform runs gets its pod
spec here: workloads (training, serving, batch) and node daemons alike.

What it guarantees, so no caller has to remember:

- resources: CPU and memory requests, a memory limit, GPUs in `limits` only
  (the API server copies extended-resource limits into requests);
- GPU pods get their toleration and node affinity from `infra.scheduling`;
- security: non-root (uid 10001 unless the image says otherwise), no privilege
  escalation, all capabilities dropped, RuntimeDefault seccomp, read-only root
  filesystem with a sized writable emptyDir at /tmp, no service-account token
  unless asked for, no service-link environment variables;
- /dev/shm as a sized memory emptyDir when `shm_size` is given (PyTorch
  DataLoader workers pass tensors through it; the container runtime's 64 MiB
  default makes them crash);
- the recommended labels on the pod template.

What a caller may loosen, one field at a time and never below Pod Security
`restricted`: another non-zero uid/gid (`run_as_user`), a writable root
filesystem for one container (`writable_root_filesystem`), a CPU limit or a
memory limit above the request (`Resources`). Native sidecars are init
containers with `sidecar=True` (rendered with `restartPolicy: Always`).

Node daemons that must touch the host (device plugin, DCGM exporter) use
`profile="node-daemon"`, which alone may mount hostPath volumes or run as root,
still without privilege escalation and with capabilities dropped unless added
by name. The Pod Security level `restricted` forbids both, which is why such
daemons live in kube-system (privileged level).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from infra import catalog, scheduling

Profile = Literal["restricted", "node-daemon"]

# The identity and scratch directory of a `restricted` pod unless the caller
# says otherwise. The runtime image (workloads/runtime/contract.py) is built to
# run as this user with HOME under SCRATCH_DIR; a test keeps the two in step.
NON_ROOT_UID = 10001
NON_ROOT_GID = 10001
SCRATCH_DIR = "/tmp"


@dataclass(frozen=True)
class SecretRef:
    """Environment variable taken from a Secret key."""

    secret: str
    key: str


@dataclass(frozen=True)
class FieldRef:
    """Environment variable taken from the pod itself (downward API)."""

    path: str  # e.g. "spec.nodeName", "metadata.namespace"


EnvValue = str | SecretRef | FieldRef


@dataclass(frozen=True)
class Resources:
    cpu: str  # request; no CPU limit unless `cpu_limit` (CFS throttling hurts data loading)
    memory: str  # request, and the limit unless `memory_limit` says otherwise
    memory_limit: str | None = None
    cpu_limit: str | None = None
    gpus: int = 0
    gpu_resource: str = catalog.GPU_RESOURCE  # or nvidia.com/mig-<profile>, nvidia.com/gpu.shared
    # Other extended resources (vpc.amazonaws.com/efa, hugepages-2Mi): requests = limits.
    extended: Mapping[str, str] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        requests: dict[str, Any] = {"cpu": self.cpu, "memory": self.memory}
        limits: dict[str, Any] = {"memory": self.memory_limit or self.memory}
        for name, amount in self.extended.items():
            if catalog.is_gpu_resource(name) or name in ("cpu", "memory"):
                raise ValueError(f"{name!r} is not an extra extended resource")
            requests[name] = amount
            limits[name] = amount
        if self.cpu_limit:
            limits["cpu"] = self.cpu_limit
        if self.gpus:
            if not catalog.is_gpu_resource(self.gpu_resource):
                raise ValueError(f"{self.gpu_resource!r} is not an NVIDIA GPU resource")
            limits[self.gpu_resource] = str(self.gpus)
        return {"requests": requests, "limits": limits}


@dataclass(frozen=True)
class HttpProbe:
    path: str
    port: int | str
    period_seconds: int = 10
    timeout_seconds: int = 2
    failure_threshold: int = 3
    initial_delay_seconds: int = 0

    def manifest(self) -> dict[str, Any]:
        probe: dict[str, Any] = {
            "httpGet": {"path": self.path, "port": self.port},
            "periodSeconds": self.period_seconds,
            "timeoutSeconds": self.timeout_seconds,
            "failureThreshold": self.failure_threshold,
        }
        if self.initial_delay_seconds:
            probe["initialDelaySeconds"] = self.initial_delay_seconds
        return probe


@dataclass(frozen=True)
class GrpcProbe:
    """gRPC health checking (grpc.health.v1) on a port number (Kubernetes takes
    no port name here)."""

    port: int
    service: str | None = None
    period_seconds: int = 10
    timeout_seconds: int = 2
    failure_threshold: int = 3
    initial_delay_seconds: int = 0

    def manifest(self) -> dict[str, Any]:
        grpc: dict[str, Any] = {"port": self.port}
        if self.service:
            grpc["service"] = self.service
        return _timing(self, {"grpc": grpc})


@dataclass(frozen=True)
class TcpProbe:
    """A TCP connect on a port."""

    port: int | str
    period_seconds: int = 10
    timeout_seconds: int = 2
    failure_threshold: int = 3
    initial_delay_seconds: int = 0

    def manifest(self) -> dict[str, Any]:
        return _timing(self, {"tcpSocket": {"port": self.port}})


def _timing(probe: GrpcProbe | TcpProbe, out: dict[str, Any]) -> dict[str, Any]:
    out |= {
        "periodSeconds": probe.period_seconds,
        "timeoutSeconds": probe.timeout_seconds,
        "failureThreshold": probe.failure_threshold,
    }
    if probe.initial_delay_seconds:
        out["initialDelaySeconds"] = probe.initial_delay_seconds
    return out


Probe = HttpProbe | GrpcProbe | TcpProbe


@dataclass(frozen=True)
class Probes:
    startup: Probe | None = None
    readiness: Probe | None = None
    liveness: Probe | None = None


@dataclass(frozen=True)
class Mount:
    volume: str
    path: str
    read_only: bool = False
    sub_path: str | None = None


@dataclass(frozen=True)
class Volume:
    """A pod volume. Exactly one source: `claim`, `empty_dir`, `config_map`,
    `secret` or (node daemons only) `host_path`."""

    name: str
    claim: str | None = None
    claim_read_only: bool = False
    empty_dir: str | None = None  # size limit
    memory: bool = False  # emptyDir in RAM (counts against the memory limit)
    config_map: str | None = None
    secret: str | None = None
    host_path: str | None = None
    host_path_type: str = "Directory"

    def manifest(self) -> dict[str, Any]:
        sources = [self.claim, self.empty_dir, self.config_map, self.secret, self.host_path]
        if sum(s is not None for s in sources) != 1:
            raise ValueError(f"volume {self.name!r} needs exactly one source")
        if self.claim is not None:
            return {
                "name": self.name,
                "persistentVolumeClaim": {
                    "claimName": self.claim,
                    "readOnly": self.claim_read_only,
                },
            }
        if self.empty_dir is not None:
            empty: dict[str, Any] = {"sizeLimit": self.empty_dir}
            if self.memory:
                empty["medium"] = "Memory"
            return {"name": self.name, "emptyDir": empty}
        if self.config_map is not None:
            return {"name": self.name, "configMap": {"name": self.config_map}}
        if self.secret is not None:
            return {"name": self.name, "secret": {"secretName": self.secret}}
        return {
            "name": self.name,
            "hostPath": {"path": self.host_path, "type": self.host_path_type},
        }


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    resources: Resources
    command: Sequence[str] | None = None
    args: Sequence[str] = ()
    env: Mapping[str, EnvValue] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)  # name -> containerPort (TCP)
    probes: Probes = Probes()
    mounts: Sequence[Mount] = ()
    # Keep serving while endpoints drop the terminating pod (kubelet sleep action).
    pre_stop_sleep_seconds: int = 0
    working_dir: str | None = None
    # Opt-in for images that write outside their volumes; still Pod Security
    # `restricted` (which does not require a read-only root).
    writable_root_filesystem: bool = False
    # An init container with restartPolicy Always is a native sidecar: it starts
    # before the main containers, runs beside them and does not keep a Job alive.
    sidecar: bool = False
    # node-daemon profile only:
    run_as_root: bool = False
    add_capabilities: Sequence[str] = ()


@dataclass(frozen=True)
class PodSpec:
    """Everything a pod template needs; `pod_template()` renders it."""

    labels: Mapping[str, str]
    containers: Sequence[Container]
    priority_class: str
    init_containers: Sequence[Container] = ()  # sidecars (`sidecar=True`) among them
    volumes: Sequence[Volume] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    profile: Profile = "restricted"
    # GPU placement (used when a container asks for GPUs):
    spot_priority_classes: Sequence[str] = ()
    accelerators: Sequence[str] = ()
    # Node daemons on GPU nodes:
    gpu_daemon: bool = False
    skip_host_device_plugin: bool = False
    skip_device_plugin_values: Sequence[str] = ()
    service_account: str | None = None
    automount_service_account_token: bool = False
    shm_size: str | None = None
    scratch_size: str = "1Gi"
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"
    termination_grace_period_seconds: int = 30
    subdomain: str | None = None
    pod_affinity: Mapping[str, Any] | None = None  # e.g. scheduling.same_zone_affinity(...)
    run_as_user: int = NON_ROOT_UID
    run_as_group: int = NON_ROOT_GID
    # Only nodes with these labels (the caller checks that some pool has them).
    node_selector: Mapping[str, str] = field(default_factory=dict)

    @property
    def gpus(self) -> int:
        """GPUs per pod: init containers run before the main ones, so the pod needs
        the larger of the biggest init container and the sum of main containers
        (sidecars run beside the main containers and count with them)."""
        sidecars = [c for c in self.init_containers if c.sidecar]
        main = sum(c.resources.gpus for c in [*self.containers, *sidecars])
        init = max((c.resources.gpus for c in self.init_containers if not c.sidecar), default=0)
        return max(main, init)


SHM_VOLUME = "dshm"
SCRATCH_VOLUME = "tmp"


def pod_template(spec: PodSpec) -> dict[str, Any]:
    """Render a pod template (`{"metadata", "spec"}`) for a Deployment, Job, DaemonSet..."""
    _check(spec)
    volumes = [Volume(SCRATCH_VOLUME, empty_dir=spec.scratch_size)]
    implicit_mounts = [Mount(SCRATCH_VOLUME, SCRATCH_DIR)]
    if spec.shm_size:
        volumes.append(Volume(SHM_VOLUME, empty_dir=spec.shm_size, memory=True))
    volumes.extend(spec.volumes)

    pod: dict[str, Any] = {
        "priorityClassName": spec.priority_class,
        "restartPolicy": spec.restart_policy,
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "automountServiceAccountToken": spec.automount_service_account_token,
        "enableServiceLinks": False,
        "securityContext": _pod_security(spec),
        "containers": [
            _container(
                c,
                spec,
                implicit_mounts + ([Mount(SHM_VOLUME, "/dev/shm")] if spec.shm_size else []),
            )
            for c in spec.containers
        ],
        "volumes": [v.manifest() for v in volumes],
    }
    if spec.init_containers:
        pod["initContainers"] = [_container(c, spec, implicit_mounts) for c in spec.init_containers]
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    if spec.subdomain:
        pod["subdomain"] = spec.subdomain
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)

    placement: dict[str, Any] = {}
    if spec.gpu_daemon:
        placement = scheduling.gpu_daemon_placement(
            skip_host_device_plugin=spec.skip_host_device_plugin,
            skip_device_plugin_values=spec.skip_device_plugin_values,
        )
    elif spec.gpus:
        placement = scheduling.gpu_placement(
            priority_class=spec.priority_class,
            spot_priority_classes=spec.spot_priority_classes,
            accelerators=spec.accelerators,
        )
    affinity = dict(placement.get("affinity", {}))
    if spec.pod_affinity:
        affinity.update(spec.pod_affinity)
    if placement.get("tolerations"):
        pod["tolerations"] = placement["tolerations"]
    if affinity:
        pod["affinity"] = affinity

    metadata: dict[str, Any] = {"labels": dict(spec.labels)}
    if spec.annotations:
        metadata["annotations"] = dict(spec.annotations)
    return {"metadata": metadata, "spec": pod}


def _check(spec: PodSpec) -> None:
    names = [c.name for c in [*spec.init_containers, *spec.containers]]
    if len(set(names)) != len(names):
        raise ValueError(f"container names must be unique, got {names}")
    volume_names = [v.name for v in spec.volumes]
    if {SHM_VOLUME, SCRATCH_VOLUME} & set(volume_names) or len(set(volume_names)) != len(
        volume_names
    ):
        raise ValueError(f"volume names must be unique and not {SHM_VOLUME}/{SCRATCH_VOLUME}")
    if spec.profile == "restricted":
        if any(v.host_path for v in spec.volumes):
            raise ValueError("hostPath volumes are only for the node-daemon profile")
        if any(
            c.run_as_root or c.add_capabilities for c in [*spec.containers, *spec.init_containers]
        ):
            raise ValueError("root and added capabilities are only for the node-daemon profile")
        if spec.run_as_user == 0 or spec.run_as_group == 0:
            raise ValueError("a restricted pod runs as a non-zero user and group")
    if any(c.sidecar for c in spec.containers):
        raise ValueError("sidecars go in init_containers (native sidecars)")


def _pod_security(spec: PodSpec) -> dict[str, Any]:
    security: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if spec.profile == "restricted":
        security.update(
            runAsNonRoot=True,
            runAsUser=spec.run_as_user,
            runAsGroup=spec.run_as_group,
            fsGroup=spec.run_as_group,
            # Only chown a volume when its root is not already ours: a large
            # checkpoint PVC would otherwise be walked on every pod start.
            fsGroupChangePolicy="OnRootMismatch",
        )
    return security


def _container(c: Container, spec: PodSpec, implicit: list[Mount]) -> dict[str, Any]:
    security: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": not c.writable_root_filesystem,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if c.add_capabilities:
        security["capabilities"]["add"] = list(c.add_capabilities)
    if c.run_as_root:
        security["runAsNonRoot"] = False
        security["runAsUser"] = 0
    else:
        security["runAsNonRoot"] = True
        security["runAsUser"] = spec.run_as_user

    out: dict[str, Any] = {
        "name": c.name,
        "image": c.image,
        "imagePullPolicy": "IfNotPresent",
        "resources": c.resources.manifest(),
        "securityContext": security,
    }
    if c.sidecar:
        out["restartPolicy"] = "Always"
    if c.command is not None:
        out["command"] = list(c.command)
    if c.args:
        out["args"] = list(c.args)
    if c.working_dir:
        out["workingDir"] = c.working_dir
    env = [_env(name, value) for name, value in c.env.items()]
    if env:
        out["env"] = env
    if c.ports:
        out["ports"] = [
            {"name": name, "containerPort": port, "protocol": "TCP"}
            for name, port in c.ports.items()
        ]
    for kind in ("startup", "readiness", "liveness"):
        probe = getattr(c.probes, kind)
        if probe is not None:
            out[f"{kind}Probe"] = probe.manifest()
    if c.pre_stop_sleep_seconds:
        out["lifecycle"] = {"preStop": {"sleep": {"seconds": c.pre_stop_sleep_seconds}}}
    mounts = [*implicit, *c.mounts]
    out["volumeMounts"] = [_mount(m) for m in mounts]
    return out


def _mount(m: Mount) -> dict[str, Any]:
    """A volumeMount."""
    out: dict[str, Any] = {"name": m.volume, "mountPath": m.path}
    if m.read_only:
        out["readOnly"] = True
    if m.sub_path:
        out["subPath"] = m.sub_path
    return out


def _env(name: str, value: EnvValue) -> dict[str, Any]:
    if isinstance(value, SecretRef):
        return {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": value.secret, "key": value.key}},
        }
    if isinstance(value, FieldRef):
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": value.path}}}
    return {"name": name, "value": value}
