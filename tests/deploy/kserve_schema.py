"""KServe's API schema, read from KServe's own generated types, and a validator of resources against it.

KServe's CRDs (their OpenAPI schemas) are not reachable offline. The ``kserve`` Python SDK carries the same API as
generated classes (``kserve/models/v1beta1_*.py``, OpenAPI Generator): per class, ``openapi_types`` (attribute ->
type), ``attribute_map`` (attribute -> JSON key) and, for each required field, a setter that raises
``Invalid value for `x`, must not be `None```. The SDK's dependencies conflict with the serving lock, so its
wheel is downloaded, hash-pinned (``requirements/kserve-schema.txt``, ``make kserve-schema``, which ``make test``
runs), and read here as text: never installed, never imported.

Kubernetes types embedded in KServe's (``V1ObjectMeta``, ``V1EnvVar``, ``V1ResourceRequirements``, ...) are
checked against the strict Kubernetes JSON schemas of kubernetes-validate, as the core manifests are.
"""
from __future__ import annotations

import ast
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import kubernetes_validate
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[2]
PINNED = REPO / "requirements" / "kserve-schema.txt"
WHEELS = REPO / "build" / "wheels"
KUBERNETES = "1.37.0"  # as tests/deploy/test_k8s.py
_REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")
_PRIMITIVES = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float), "object": (object,),
               "ResourceQuantity": (str, int, float)}


@dataclass(frozen=True)
class ApiType:
    """One generated class: JSON key -> type name, and the JSON keys that must be present."""

    fields: dict[str, str]
    required: frozenset[str]


def pinned_wheel() -> Path:
    """The downloaded wheel of the version ``requirements/kserve-schema.txt`` pins."""
    version = re.search(r"^kserve==([\w.]+)", PINNED.read_text(), re.M).group(1)
    return WHEELS / f"kserve-{version}-py3-none-any.whl"


def read_types(wheel: Path) -> dict[str, ApiType]:
    """Every generated model class of the wheel, by class name."""
    types = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith("kserve/models/") and name.endswith(".py"):
                source = archive.read(name).decode()
                for node in ast.parse(source).body:
                    if isinstance(node, ast.ClassDef) and (found := _api_type(node, source)):
                        types[node.name] = found
    return types


def _api_type(node: ast.ClassDef, source: str) -> ApiType | None:
    tables = {stmt.targets[0].id: ast.literal_eval(stmt.value) for stmt in node.body
              if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name)
              and stmt.targets[0].id in ("openapi_types", "attribute_map")}
    if len(tables) != 2:
        return None
    keys = tables["attribute_map"]
    required = {keys[attr] for attr in _REQUIRED.findall(ast.get_source_segment(source, node)) if attr in keys}
    return ApiType({keys[attr]: kind for attr, kind in tables["openapi_types"].items()}, frozenset(required))


class KubernetesTypes:
    """``V1Foo`` (the Kubernetes python client's names) checked against kubernetes-validate's strict definitions."""

    def __init__(self, version: str = KUBERNETES) -> None:
        folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{version}-local-strict"
        self.document = json.loads((folder / "_definitions.json").read_text())
        self.registry = Resource.from_contents(self.document) @ Registry()

    def definition(self, type_name: str) -> str | None:
        """``V1EnvVar`` -> ``io.k8s.api.core.v1.EnvVar``; ``K8sIoApiAppsV1DeploymentStrategy`` -> the apps one."""
        if not (match := re.fullmatch(r"(?:K8sIoApi(\w+?))?V1(\w+)", type_name)):
            return None
        group, kind = match.group(1) or "", match.group(2)
        candidates = [k for k in self.document["$defs"] if k.endswith(f".v1.{kind}")
                      and (not group or f".{group.lower()}.v1." in k)]
        preferred = [k for k in candidates if k.startswith(("io.k8s.api.core.", "io.k8s.apimachinery.pkg.apis.meta."))]
        chosen = preferred or candidates
        return chosen[0] if len(chosen) == 1 else None

    def problems(self, value, definition: str, path: str) -> list[str]:
        schema = {"$ref": f"{self.document['$id']}#/$defs/{definition}"}
        validator = jsonschema.Draft202012Validator(schema, registry=self.registry)
        return [f"{path}{''.join(f'.{p}' for p in e.absolute_path)}: {e.message}" for e in validator.iter_errors(value)]


class Schema:
    """KServe's types plus Kubernetes': :meth:`problems` lists what in a resource does not fit them."""

    def __init__(self, wheel: Path) -> None:
        self.types = read_types(wheel)
        self.kubernetes = KubernetesTypes()

    def problems(self, value, type_name: str, path: str = "") -> list[str]:
        """Every mismatch between ``value`` and ``type_name`` as ``path: what``; empty when it fits."""
        if inner := re.fullmatch(r"list\[(.+)\]", type_name):
            if not isinstance(value, list):
                return [f"{path}: expected a list, got {type(value).__name__}"]
            return [p for i, item in enumerate(value) for p in self.problems(item, inner.group(1), f"{path}[{i}]")]
        if inner := re.fullmatch(r"dict\(str, (.+)\)", type_name):
            if not isinstance(value, dict):
                return [f"{path}: expected a mapping, got {type(value).__name__}"]
            return [p for k, item in value.items() for p in self.problems(item, inner.group(1), f"{path}.{k}")]
        if type_name in _PRIMITIVES:
            ok = isinstance(value, _PRIMITIVES[type_name]) and not (type_name in ("int", "float") and isinstance(value, bool))
            return [] if ok else [f"{path}: expected {type_name}, got {type(value).__name__} {value!r}"]
        if type_name in self.types:
            return self._object_problems(value, self.types[type_name], type_name, path)
        if definition := self.kubernetes.definition(type_name):
            return self.kubernetes.problems(value, definition, path)
        return [f"{path}: no schema for type {type_name}"]  # fail closed: nothing passes unchecked

    def _object_problems(self, value, api: ApiType, type_name: str, path: str) -> list[str]:
        if not isinstance(value, dict):
            return [f"{path}: expected an object ({type_name}), got {type(value).__name__}"]
        found = [f"{path}.{key}: not a field of {type_name}" for key in value if key not in api.fields]
        found += [f"{path}.{key}: required by {type_name}, missing" for key in sorted(api.required - set(value))]
        return found + [p for key, item in value.items() if key in api.fields
                        for p in self.problems(item, api.fields[key], f"{path}.{key}")]
