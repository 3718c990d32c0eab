"""JSON schemas of the custom resources that manifests/ and the chart ship, for the fields they use.

kubernetes-validate bundles the built-in APIs only, and no CRD can be fetched here. These are our
reading of the API references (Prometheus Operator monitoring.coreos.com/v1, Kueue
kueue.x-k8s.io/v1beta2), as strict as `kubernetes-validate --strict`: an unknown or misspelt
field fails. Using a new field means adding it here first, from the API reference.
"""

from __future__ import annotations

from typing import Any

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
STRING = {"type": "string"}
STRINGS = {"type": "array", "items": STRING}
STRING_MAP = {"type": "object", "additionalProperties": STRING}
QUANTITY = {"type": ["string", "integer"], "pattern": r"^[0-9]+(\.[0-9]+)?([mkMGTPE]|[KMGTPE]i)?$"}
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
                                         r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}


def strict(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "required": list(required)}


def array_of(item: dict[str, Any], min_items: int = 0) -> dict[str, Any]:
    return {"type": "array", "items": item, "minItems": min_items}


def resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    metadata = strict({"name": {"type": "string", "pattern": DNS_SUBDOMAIN, "maxLength": 253},
                       "namespace": STRING, "labels": STRING_MAP, "annotations": STRING_MAP},
                      ("name",))
    return strict({"apiVersion": {"const": api_version}, "kind": {"const": kind},
                   "metadata": metadata, "spec": spec}, ("apiVersion", "kind", "metadata", "spec"))


LABEL_SELECTOR = strict({
    "matchLabels": STRING_MAP,
    "matchExpressions": array_of(strict({
        "key": STRING, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
        "values": STRINGS}, ("key", "operator"))),
})
TOLERATION = strict({
    "key": STRING, "operator": {"enum": ["Exists", "Equal"]}, "value": STRING,
    "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
    "tolerationSeconds": {"type": "integer"}})

SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "PodMonitor"): resource(
        "monitoring.coreos.com/v1", "PodMonitor", strict({
            "selector": LABEL_SELECTOR,
            "podMetricsEndpoints": array_of(strict({
                "port": STRING, "path": STRING, "interval": DURATION, "scrapeTimeout": DURATION,
                "honorLabels": {"type": "boolean"}}), min_items=1),
        }, ("selector",))),
    ("kueue.x-k8s.io/v1beta2", "ResourceFlavor"): resource(
        "kueue.x-k8s.io/v1beta2", "ResourceFlavor", strict({
            "nodeLabels": {**STRING_MAP, "maxProperties": 8},
            "tolerations": {**array_of(TOLERATION), "maxItems": 8},
        })),
    ("kueue.x-k8s.io/v1beta2", "ClusterQueue"): resource(
        "kueue.x-k8s.io/v1beta2", "ClusterQueue", strict({
            "namespaceSelector": LABEL_SELECTOR,
            "queueingStrategy": {"enum": ["StrictFIFO", "BestEffortFIFO"]},
            "preemption": strict({
                "withinClusterQueue": {"enum": ["Never", "LowerPriority",
                                                "LowerOrNewerEqualPriority"]},
                "reclaimWithinCohort": {"enum": ["Never", "LowerPriority", "Any"]}}),
            "resourceGroups": array_of(strict({
                "coveredResources": array_of(STRING, min_items=1),
                "flavors": array_of(strict({
                    "name": STRING,
                    "resources": array_of(strict({"name": STRING, "nominalQuota": QUANTITY},
                                                 ("name", "nominalQuota")), min_items=1),
                }, ("name", "resources")), min_items=1),
            }, ("coveredResources", "flavors"))),
        })),
    ("kueue.x-k8s.io/v1beta2", "LocalQueue"): resource(
        "kueue.x-k8s.io/v1beta2", "LocalQueue", strict({"clusterQueue": STRING}, ("clusterQueue",))),
}
