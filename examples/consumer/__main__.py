"""An app stack consuming a platform stack through a StackReference:

    cd examples/consumer
    pulumi config set mlplatform-consumer:platformStack myorg/mlplatform/prod
    pulumi up

It checks the platform's outputs against the contract (infra/outputs.py), then
writes the endpoint of the model it uses into a ConfigMap of its own namespace,
using the platform's kubeconfig output (a secret) for its Kubernetes provider.
"""

import sys
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # an app would copy it

from mlplatform.outputs import StackOutputs

config = pulumi.Config("mlplatform-consumer")
platform = pulumi.StackReference(config.require("platformStack"))
service = config.get("inferenceService") or "ranking/ranker"


def endpoint(outputs: dict[str, Any]) -> dict[str, str]:
    contract = StackOutputs.model_validate(outputs)
    if service not in contract.inference_endpoints:
        raise pulumi.RunError(
            f"{service!r} is not an inference endpoint of the platform "
            f"({', '.join(sorted(contract.inference_endpoints)) or 'none'})"
        )
    e = contract.inference_endpoints[service]
    return {"url": e.url, "model": e.model, "namespace": e.namespace, "protocol": e.protocol}


chosen = platform.outputs.apply(endpoint)
provider = k8s.Provider("platform", kubeconfig=platform.require_output("kubeconfig"))
k8s.core.v1.ConfigMap(
    "model-endpoint",
    metadata={"name": "model-endpoint", "namespace": chosen["namespace"]},
    data={
        "MODEL_URL": chosen["url"],
        "MODEL_NAME": chosen["model"],
        "MODEL_PROTOCOL": chosen["protocol"],
    },
    opts=pulumi.ResourceOptions(provider=provider),
)
pulumi.export("modelUrl", chosen["url"])
