"""Strict offline validation of custom resources against the openAPIV3Schema of their CRD.

The API server does not reject a field that a structural schema does not declare: it prunes it,
silently (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#field-pruning).
A misspelt field, or one that only a newer operator knows, then vanishes on `kubectl apply` and the
object does something else than it says. Here such a field is an error: every object schema that
does not set `x-kubernetes-preserve-unknown-fields: true` and has no `additionalProperties` of its
own gets `additionalProperties: false`, the rest of the OpenAPI v3 schema is checked by jsonschema,
and the Kubernetes extensions are read as the API server reads them:

- `x-kubernetes-int-or-string`: an integer or a string (`pattern` then applies to the string);
- `x-kubernetes-preserve-unknown-fields`: undeclared fields are kept, so allowed;
- `x-kubernetes-embedded-resource`: apiVersion, kind and metadata are allowed and the first two required;
- `x-kubernetes-list-type`: `set` items unique, `map` items unique by `x-kubernetes-list-map-keys`;
- `x-kubernetes-map-type`: merge semantics only, nothing to validate;
- `x-kubernetes-validations` (CEL): transition rules (they name `oldSelf`) never apply to a create; any
  other rule is NOT evaluated offline, so a value under it is reported rather than passed unchecked;
- `nullable`: null allowed only there (elsewhere the API server drops a null, which a manifest should
  not rely on, so it is an error here);
- `format: int32 / int64`: the integer must fit.

Inside `anyOf` / `allOf` / `oneOf` / `not` nothing is injected: there a structural schema may only
restate value checks of fields declared outside. The top-level `metadata` (the API server checks
ObjectMeta itself, the CRD says only `type: object`) is checked against the ObjectMeta fields a
manifest may set.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# ObjectMeta fields a manifest may set; the others (uid, resourceVersion, ...) belong to the server.
_NAME = {"type": "string", "minLength": 1, "maxLength": 253, "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META = {
    "type": "object",
    "properties": {
        "name": _NAME,
        "generateName": {"type": "string"},
        "namespace": _NAME,
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}
# The CRDs are megabytes of YAML: libyaml parses them about ten times faster where it is built in.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_JUNCTORS = ("anyOf", "allOf", "oneOf")
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def to_strict_json_schema(node: dict[str, Any], *, in_junctor: bool = False) -> dict[str, Any]:
    """A jsonschema (draft 4, as OpenAPI 3.0) equivalent of one structural schema node, unknown fields closed."""
    out = {
        key: value
        for key, value in node.items()
        if key not in {"properties", "items", "additionalProperties", "nullable", *_JUNCTORS, "not"}
    }
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node:
        out["properties"] = {
            name: to_strict_json_schema(child, in_junctor=in_junctor) for name, child in node["properties"].items()
        }
    if isinstance(node.get("items"), dict):
        out["items"] = to_strict_json_schema(node["items"], in_junctor=in_junctor)
    for junctor in _JUNCTORS:
        if junctor in node:
            out[junctor] = [to_strict_json_schema(branch, in_junctor=True) for branch in node[junctor]]
    if "not" in node:
        out["not"] = to_strict_json_schema(node["not"], in_junctor=True)
    if node.get("x-kubernetes-embedded-resource"):
        _add_embedded_resource_fields(out)
    _close_unknown_fields(node, out, in_junctor)
    if node.get("nullable"):
        _allow_null(out)
    return out


def _add_embedded_resource_fields(out: dict[str, Any]) -> None:
    """An embedded resource (x-kubernetes-embedded-resource) has apiVersion, kind and metadata, the first two
    required."""
    properties = out.setdefault("properties", {})
    properties.setdefault("apiVersion", {"type": "string"})
    properties.setdefault("kind", {"type": "string"})
    properties.setdefault("metadata", OBJECT_META)
    out["required"] = sorted({*out.get("required", []), "apiVersion", "kind"})


def _close_unknown_fields(node: dict[str, Any], out: dict[str, Any], in_junctor: bool) -> None:
    """additionalProperties as the API server reads it: an object's unknown fields are refused unless the node
    says otherwise (additionalProperties, x-kubernetes-preserve-unknown-fields) or sits in a junctor."""
    preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_strict_json_schema(node["additionalProperties"], in_junctor=in_junctor)
    elif "additionalProperties" in node:
        out["additionalProperties"] = node["additionalProperties"]
    elif not in_junctor and not preserve and (node.get("type") == "object" or "properties" in node):
        out["additionalProperties"] = False


def _allow_null(out: dict[str, Any]) -> None:
    """nullable: true admits null, in the type and as one more anyOf branch."""
    if "type" in out:
        out["type"] = [out["type"], "null"]
    if "anyOf" in out:
        out["anyOf"] = [*out["anyOf"], {"type": "null"}]


def _list_type(validator, list_type, instance, schema) -> Iterator[jsonschema.ValidationError]:
    if not isinstance(instance, list) or list_type == "atomic":
        return
    if list_type == "set":
        seen: list[Any] = []
        for item in instance:
            if item in seen:
                yield jsonschema.ValidationError(f"duplicate item {item!r} in a list of type set")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen_keys: set[tuple[Any, ...]] = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            key = tuple(item.get(name) for name in keys)
            if key in seen_keys:
                yield jsonschema.ValidationError(
                    f"duplicate entry with {dict(zip(keys, key, strict=True))} in a list of type map"
                )
            seen_keys.add(key)


def _cel_rules(validator, rules, instance, schema) -> Iterator[jsonschema.ValidationError]:
    for rule in rules:
        if "oldSelf" not in rule["rule"]:  # transition rules only run on update
            yield jsonschema.ValidationError(
                f"CEL rule {rule['rule']!r} is not evaluated offline: check it by hand or do not set this field"
            )


def _int_format(name: str):
    low, high = _INT_RANGES[name]
    return lambda value: not isinstance(value, int) or isinstance(value, bool) or low <= value <= high


FORMATS = jsonschema.FormatChecker(formats=())
for _name in _INT_RANGES:
    FORMATS.checks(_name)(_int_format(_name))

StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,
    {
        "x-kubernetes-list-type": _list_type,
        "x-kubernetes-validations": _cel_rules,
    },
)


class CrdSchemas:
    """The served versions of every CRD in a folder, by (apiVersion, kind), as strict validators."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
        for path in sorted(directory.glob("*.yaml")):
            for crd in yaml.load_all(path.read_text(), Loader=_LOADER):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    if version.get("served"):
                        schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                        schema.setdefault("properties", {})["metadata"] = OBJECT_META
                        self.validators[(f"{group}/{version['name']}", kind)] = StrictValidator(
                            to_strict_json_schema(schema), format_checker=FORMATS
                        )

    def errors(self, doc: dict[str, Any]) -> list[str]:
        """Every violation as 'path: message'; empty when the object is valid."""
        validator = self.validators.get((doc.get("apiVersion"), doc.get("kind")))
        if validator is None:
            served = sorted(f"{api} {kind}" for api, kind in self.validators)
            return [
                f"no served CRD version for {doc.get('apiVersion')} {doc.get('kind')} in {self.directory} "
                f"(served: {served})"
            ]
        found = sorted(validator.iter_errors(doc), key=lambda error: list(map(str, error.absolute_path)))
        return [f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}" for error in found]


def main(argv: list[str]) -> int:
    """`python tests/crd_schema.py CRD_DIR MANIFEST...`: check manifests against another operator's CRDs.

    e.g. the CRDs of the operator you run: `kubectl get crd rayclusters.ray.io rayjobs.ray.io -o yaml`
    split into one file per CRD, or `ray-operator/config/crd/bases/` of a KubeRay release.
    """
    if len(argv) < 2:
        print("usage: python tests/crd_schema.py CRD_DIR MANIFEST.yaml...", file=sys.stderr)
        return 2
    schemas, failed = CrdSchemas(Path(argv[0])), False
    for manifest in argv[1:]:
        for doc in yaml.safe_load_all(Path(manifest).read_text()):
            if not doc or not str(doc.get("apiVersion", "")).startswith(
                tuple({api.split("/")[0] + "/" for api, _ in schemas.validators})
            ):
                continue
            errors = schemas.errors(doc)
            failed |= bool(errors)
            print(f"{manifest} {doc['kind']}/{doc['metadata']['name']}: " + ("ok" if not errors else "; ".join(errors)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
