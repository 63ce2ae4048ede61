"""The strict CRD validator (tests/crd_schema.py) on small schemas.

Each Kubernetes extension is read as the API server reads it.
"""

from __future__ import annotations

from typing import Any

import pytest

from crd_schema import FORMATS, OBJECT_META, StrictValidator, to_strict_json_schema  # tests/ is on sys.path


def errors(schema: dict[str, Any], instance: Any) -> list[str]:
    validator = StrictValidator(to_strict_json_schema(schema), format_checker=FORMATS)
    return [error.message for error in validator.iter_errors(instance)]


OBJECT = {"type": "object", "properties": {"a": {"type": "string"}}}


def test_declared_fields_pass_and_undeclared_ones_fail_at_every_depth() -> None:
    nested = {"type": "object", "properties": {"inner": OBJECT, "items": {"type": "array", "items": OBJECT}}}
    assert errors(nested, {"inner": {"a": "x"}, "items": [{"a": "y"}]}) == []
    assert len(errors(nested, {"inner": {"a": "x", "b": 1}})) == 1
    assert len(errors(nested, {"items": [{"a": "y"}, {"c": 1}]})) == 1
    assert len(errors(nested, {"z": 1})) == 1


def test_an_object_without_properties_keeps_nothing_unless_it_preserves_unknown_fields() -> None:
    assert errors({"type": "object"}, {}) == []
    assert errors({"type": "object"}, {"anything": 1}), (
        "the API server prunes every field of an empty structural object"
    )
    preserved = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {"a": {"type": "string"}},
    }
    assert errors(preserved, {"a": "x", "anything": {"deep": [1]}}) == []
    assert errors(preserved, {"a": 1}), "declared fields are still checked under preserve-unknown-fields"


def test_maps_keep_their_value_schema() -> None:
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    assert errors(string_map, {"k": "v"}) == []
    assert errors(string_map, {"k": 1})


def test_int_or_string_takes_either_and_nothing_else() -> None:
    schema = {"x-kubernetes-int-or-string": True}
    assert errors(schema, 3) == [] and errors(schema, "50%") == []
    assert errors(schema, 1.5) and errors(schema, [1]) and errors(schema, {"a": 1})


def test_nullable_and_formats() -> None:
    assert errors({"type": "integer"}, None)
    assert errors({"type": "integer", "nullable": True}, None) == []
    assert errors({"type": "integer", "format": "int32"}, 2**31 - 1) == []
    assert errors({"type": "integer", "format": "int32"}, 2**31)
    assert errors({"type": "integer", "format": "int64"}, 2**63)


def test_list_types_set_and_map() -> None:
    set_list = {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"}
    assert errors(set_list, ["a", "b"]) == [] and errors(set_list, ["a", "a"])
    map_list = {
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name", "port"],
        "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}},
    }
    assert errors(map_list, [{"name": "a", "port": 1}, {"name": "a", "port": 2}]) == []
    assert errors(map_list, [{"name": "a", "port": 1}, {"name": "a", "port": 1}])
    atomic = {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "atomic"}
    assert errors(atomic, ["a", "a"]) == []


def test_junctors_restate_value_checks_without_closing_the_object() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}, "c": {"type": "string"}},
        "anyOf": [{"required": ["c"]}, {"properties": {"b": {"minLength": 2}}, "required": ["b"]}],
    }
    assert errors(schema, {"a": "x", "b": "yy"}) == [], "`a` is declared outside; the branch must not refuse it"
    assert errors(schema, {"a": "x", "b": "y"}), "the branch's value check still applies"
    assert errors(schema, {"b": "yy", "d": "x"}), "the object itself stays closed"


def test_embedded_resources_carry_apiversion_kind_and_metadata() -> None:
    embedded = {"type": "object", "x-kubernetes-embedded-resource": True, "properties": {"spec": OBJECT}}
    assert (
        errors(embedded, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "spec": {"a": "y"}}) == []
    )
    assert errors(embedded, {"spec": {}}), "apiVersion and kind are required"
    assert errors(embedded, {"apiVersion": "v1", "kind": "X", "metadata": {"nam": "x"}})


@pytest.mark.parametrize("rule", ["self.size() > 1", "has(self.a) || has(self.b)"])
def test_cel_rules_are_reported_not_passed_and_transition_rules_skipped(rule: str) -> None:
    schema = {"type": "string", "x-kubernetes-validations": [{"rule": rule}, {"rule": "self == oldSelf"}]}
    found = errors(schema, "value")
    assert len(found) == 1 and rule in found[0]


def test_object_meta_is_checked_too() -> None:
    assert errors(OBJECT_META, {"name": "vaegen", "namespace": "vaegen", "labels": {"a": "b"}}) == []
    assert errors(OBJECT_META, {"name": "Not_A_Name"})
    assert errors(OBJECT_META, {"name": "x", "uid": "123"}), "server-owned fields do not belong in a manifest"
