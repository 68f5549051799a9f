"""NvidiaDevicePlugin: the NVIDIA k8s-device-plugin DaemonSet and its config file.

Version: v0.20.1 (September 2026), the newest release and the one NVIDIA's GPU
Operator v26.7.1 ships; pinned by the digest that operator's bundle records
(DEVICE_PLUGIN_IMAGE below). Its config file format (`version: v1`,
`flags`, `sharing.timeSlicing`) is unchanged since v0.12.

Why these choices:
- A plain DaemonSet rendered here instead of the Helm chart: the offline
  preview then shows and schema-validates every field, and the pod spec comes
  from the platform's one pod builder. The chart would add NFD/GFD, which a
  node group that labels its own nodes does not need.
- In kube-system: the plugin needs a hostPath (the kubelet's device-plugin
  socket directory), which Pod Security "baseline" and "restricted" forbid.
- Only on GPU nodes (`nvidia.com/gpu.present=true`, set by the node groups),
  tolerating the GPU and spot taints, `system-node-critical`.
- Bottlerocket NVIDIA nodes run the plugin as a host service; the DaemonSet
  skips nodes labelled `mlplatform.io/nvidia-device-plugin=host` (set by
  Bottlerocket node groups) so the two never both register `nvidia.com/gpu`.
- Hardened as far as it still runs: it must run as root to create its socket
  in the root-owned kubelet directory, but without privilege escalation, with
  every capability dropped (SYS_ADMIN is added back only when MIG is on, as
  NVML needs it to enumerate MIG devices), RuntimeDefault seccomp and a
  read-only root filesystem. The NVIDIA container runtime (the default runtime on AL2023
  NVIDIA AMIs) gives it the GPU devices, so it is not privileged.
- The config file (MIG strategy, time-slicing) is read at start only, so the
  pod template carries its checksum: a config change rolls the DaemonSet.
- Per-pool settings: a node group with its own `devicePlugin` gets its own
  ConfigMap and DaemonSet, selected by the node label the group sets
  (`mlplatform.io/nvidia-device-plugin=daemonset-<group>`); the default
  DaemonSet skips those nodes. One static config per DaemonSet keeps the
  plugin's config-manager sidecar (which would need to read Node objects and
  signal the plugin across containers) out of the picture.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s
import yaml
from pydantic import Field

from infra import catalog, meta, pod
from infra.config_types import _Model


class TimeSlicingSettings(_Model):
    """GPU time-slicing: several pods share one GPU in turns (no memory or fault isolation)."""

    replicas: int = Field(
        1,
        ge=1,
        le=48,
        description="Pods per physical GPU. 1 (default) turns time-slicing off.",
    )
    rename_by_default: bool = Field(
        False,
        description="Advertise shared GPUs as `nvidia.com/gpu.shared` so pods opt in "
        "explicitly instead of getting a slice where they asked for a GPU.",
    )
    fail_requests_greater_than_one: bool = Field(
        True,
        description="Reject pods asking for more than one shared GPU (more slices "
        "give no more compute).",
    )


# NVIDIA k8s-device-plugin v0.20.1 (September 2026, the newest release: v0.20.0
# plus fixes), tag and digest as NVIDIA's GPU Operator v26.7.1 pins it in its
# certified OLM bundle: redhat-openshift-ecosystem/certified-operators,
# operators/gpu-operator-certified/26.7.1/manifests/, the ClusterServiceVersion's
# relatedImages (device-plugin-image).
DEVICE_PLUGIN_IMAGE = (
    "nvcr.io/nvidia/k8s-device-plugin:v0.20.1"
    "@sha256:27c1b2553a690ca3d29889dcd61df97525d46f58272c0be8dc63c2b18f120075"
)


class DevicePluginSettings(_Model):
    """NVIDIA k8s-device-plugin (kube-system DaemonSet on GPU nodes)."""

    enabled: bool = Field(
        True,
        description="Deploy the DaemonSet. Turn off only when something else (the GPU "
        "Operator, Bottlerocket) advertises `nvidia.com/gpu` on every GPU node.",
    )
    image: str = Field(
        DEVICE_PLUGIN_IMAGE,
        description="Device plugin image, pinned by tag and digest (v0.20.1: the newest "
        "release, the one NVIDIA's GPU Operator v26.7.1 ships).",
    )
    mig_strategy: Literal["none", "single", "mixed"] = Field(
        "none",
        description="How MIG devices are advertised: `none`, `single` (all "
        "`nvidia.com/gpu`), `mixed` (`nvidia.com/mig-<profile>`). Needs MIG-capable "
        "GPUs (A100, H100, H200) partitioned by an operator.",
    )
    time_slicing: TimeSlicingSettings = Field(
        default_factory=TimeSlicingSettings, description="GPU time-slicing."
    )

    @property
    def sharing_enabled(self) -> bool:
        return self.time_slicing.replicas > 1


class PoolDevicePluginSettings(_Model):
    """A node group's own device plugin settings, instead of the stack-wide
    `devicePlugin` ones: its nodes get their own DaemonSet and config (selected by
    the node label `mlplatform.io/nvidia-device-plugin=daemonset-<group>`)."""

    mig_strategy: Literal["none", "single", "mixed"] | None = Field(
        None, description="MIG strategy on this group's nodes. Default: the stack's."
    )
    time_slicing: TimeSlicingSettings | None = Field(
        None, description="Time-slicing on this group's nodes. Default: the stack's."
    )

    def apply_to(self, stack: DevicePluginSettings) -> DevicePluginSettings:
        """The stack-wide settings with this group's overrides."""
        return stack.model_copy(
            update={
                "mig_strategy": self.mig_strategy or stack.mig_strategy,
                "time_slicing": self.time_slicing or stack.time_slicing,
            }
        )


def pool_label_value(pool: str) -> str:
    """`mlplatform.io/nvidia-device-plugin` value of a pool with its own config."""
    return f"daemonset-{pool}"


NAMESPACE = "kube-system"
NAME = "nvidia-device-plugin"
CONFIG_DIR = "/etc/nvidia-device-plugin"
CONFIG_FILE = "config.yaml"
KUBELET_DEVICE_PLUGINS = "/var/lib/kubelet/device-plugins"


def plugin_config(settings: DevicePluginSettings) -> dict[str, Any]:
    """The plugin's config file (`version: v1`), from the stack settings."""
    config: dict[str, Any] = {
        "version": "v1",
        "flags": {
            "migStrategy": settings.mig_strategy,
            # Crash (and show CrashLoopBackOff) when the driver is broken instead of
            # idling: the DaemonSet only lands on GPU nodes, so failure is real.
            "failOnInitError": True,
            # Never hand containers the host's /dev/infiniband/uverbs* devices: on
            # EFA nodes those belong to the AWS EFA device plugin. v0.19.0 turned
            # MOFED on by default and took them (k8s-device-plugin#1692, fixed in
            # v0.19.3); pinned off here so no default can change it again.
            "mofedEnabled": False,
            "plugin": {
                "passDeviceSpecs": False,
                "deviceListStrategy": ["envvar"],
                "deviceIDStrategy": "uuid",
            },
        },
    }
    ts = settings.time_slicing
    if settings.sharing_enabled:
        config["sharing"] = {
            "timeSlicing": {
                "renameByDefault": ts.rename_by_default,
                "failRequestsGreaterThanOne": ts.fail_requests_greater_than_one,
                "resources": [{"name": catalog.GPU_RESOURCE, "replicas": ts.replicas}],
            }
        }
    return config


def security_exceptions(mig: bool) -> dict[str, str]:
    """Why the plugin fails some generic container checks (checkov annotations)."""
    root = "runs as root to create its socket in the kubelet's root-owned device-plugins directory"
    no_http = "the plugin serves no HTTP endpoint; the kubelet tracks it over its gRPC socket"
    reasons = {
        "CKV_K8S_8": no_http,
        "CKV_K8S_9": no_http,
        "CKV_K8S_11": "no CPU limit: a throttled plugin delays GPU allocation on the node",
        "CKV_K8S_23": root,
        "CKV_K8S_40": root,
    }
    if mig:
        sys_admin = "SYS_ADMIN only with MIG on: NVML needs it to enumerate MIG devices"
        reasons |= {"CKV_K8S_25": sys_admin, "CKV_K8S_39": sys_admin}
    return meta.checkov_skips(reasons)


@dataclass(frozen=True)
class NvidiaDevicePluginArgs:
    settings: DevicePluginSettings
    # Node groups with their own settings (group name -> its effective settings):
    # each gets its own ConfigMap and DaemonSet; the default DaemonSet skips them.
    pools: Mapping[str, DevicePluginSettings] = field(default_factory=dict)


class NvidiaDevicePlugin(pulumi.ComponentResource):
    """The device plugin DaemonSet and ConfigMap in kube-system, and one more of
    each per node group with its own settings (`nvidia-device-plugin-<group>`).

    Outputs: `daemonset_name`, `config_map_name`, `namespace`, `pool_daemonsets`.
    """

    def __init__(
        self, name: str, args: NvidiaDevicePluginArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:infra:NvidiaDevicePlugin", name, None, opts)
        skip = [pool_label_value(pool) for pool in sorted(args.pools)]
        self.config_map, self.daemonset = self._plugin(name, NAME, args.settings, skip=skip)
        self.pool_daemonsets: dict[str, str] = {}
        for pool, settings in sorted(args.pools.items()):
            self._plugin(
                f"{name}-{pool}",
                f"{NAME}-{pool}",
                settings,
                node_selector={catalog.DEVICE_PLUGIN_LABEL: pool_label_value(pool)},
            )
            self.pool_daemonsets[pool] = f"{NAME}-{pool}"
        self.namespace = NAMESPACE
        self.daemonset_name = NAME
        self.config_map_name = f"{NAME}-config"
        self.register_outputs(
            {
                "daemonset_name": self.daemonset_name,
                "config_map_name": self.config_map_name,
                "namespace": self.namespace,
                "pool_daemonsets": self.pool_daemonsets,
            }
        )

    def _plugin(
        self,
        name: str,
        object_name: str,
        settings: DevicePluginSettings,
        *,
        skip: Sequence[str] = (),
        node_selector: Mapping[str, str] | None = None,
    ) -> tuple[k8s.core.v1.ConfigMap, k8s.apps.v1.DaemonSet]:
        child = pulumi.ResourceOptions(parent=self)
        labels = meta.labels(object_name, object_name, "device-plugin")
        config_text = yaml.safe_dump(plugin_config(settings), sort_keys=False)
        config_map = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata=meta.metadata(f"{object_name}-config", labels, NAMESPACE),
            data={CONFIG_FILE: config_text},
            opts=child,
        )
        mig = settings.mig_strategy != "none"
        container = pod.Container(
            name="nvidia-device-plugin",
            image=settings.image,
            args=[f"--config-file={CONFIG_DIR}/{CONFIG_FILE}"],
            # With MIG, NVML must see the MIG devices to enumerate them: the
            # upstream chart adds SYS_ADMIN in that case only, and so do we.
            env={"NVIDIA_MIG_MONITOR_DEVICES": "all"} if mig else {},
            add_capabilities=["SYS_ADMIN"] if mig else [],
            resources=pod.Resources(cpu="50m", memory="64Mi", memory_limit="256Mi"),
            mounts=[
                pod.Mount("device-plugins", KUBELET_DEVICE_PLUGINS),
                pod.Mount("config", CONFIG_DIR, read_only=True),
            ],
            run_as_root=True,
        )
        template = pod.pod_template(
            pod.PodSpec(
                labels=labels,
                annotations={
                    f"{catalog.LABEL_PREFIX}/config-sha256": hashlib.sha256(
                        config_text.encode()
                    ).hexdigest()
                },
                containers=[container],
                priority_class="system-node-critical",
                profile="node-daemon",
                gpu_daemon=True,
                skip_host_device_plugin=True,
                skip_device_plugin_values=tuple(skip),
                node_selector=dict(node_selector or {}),
                volumes=[
                    pod.Volume("device-plugins", host_path=KUBELET_DEVICE_PLUGINS),
                    pod.Volume("config", config_map=f"{object_name}-config"),
                ],
                scratch_size="64Mi",
            )
        )
        daemonset = k8s.apps.v1.DaemonSet(
            f"{name}-daemonset",
            metadata=meta.metadata(object_name, labels, NAMESPACE, security_exceptions(mig)),
            spec={
                "selector": {"matchLabels": meta.selector(labels)},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                "template": template,
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[config_map]),
        )
        return config_map, daemonset
