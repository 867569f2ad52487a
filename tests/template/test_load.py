"""load_documents(): shapes, ARM parameters, --param/--parameters, --set, placeholders, findings."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localbuilder.errors import TemplateError
from localbuilder.template.findings import Finding, Severity
from localbuilder.template.load import load_document, load_documents
from localbuilder.template.overrides import parse_set, set_path
from localbuilder.template.placeholders import find_placeholders

SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
PARAMS_SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#"


def properties(**extra: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "source": {"type": "PlatformImage", "publisher": "Canonical", "offer": "UbuntuServer",
                   "sku": "18.04-LTS", "version": "latest"},
        "customize": [{"type": "Shell", "name": "a", "inline": ["echo hi", "sudo true"]}],
        "distribute": [{"type": "VHD", "runOutputName": "out"}],
    }  # fmt: skip
    props.update(extra)
    return props


def resource(name: str = "[parameters('imageTemplateName')]", **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {
        "type": "Microsoft.VirtualMachineImages/imageTemplates",
        "apiVersion": "2022-02-14",
        "name": name,
        "location": "[parameters('location')]",
        "properties": properties(),
    }
    res.update(extra)
    return res


def arm(*resources: dict[str, Any], parameters: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "$schema": SCHEMA,
        "contentVersion": "1.0.0.0",
        "parameters": parameters
        if parameters is not None
        else {
            "imageTemplateName": {"type": "string", "defaultValue": "tmpl"},
            "location": {"type": "string", "defaultValue": "westus"},
        },
        "resources": list(resources) or [resource()],
    }
    doc.update(extra)
    return doc


def write(tmp_path: Path, doc: Any, name: str = "t.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2), encoding="utf-8")
    return path


def load1(path: Path, **kwargs: Any) -> Any:
    templates = load_documents(path, **kwargs)
    assert len(templates) == 1
    return templates[0]


def findings_at(loaded: Any, where: str, severity: Severity | None = None) -> list[Finding]:
    return [f for f in loaded.result if f.where == where and (severity is None or f.severity == severity)]


def only_error_at(loaded: Any, where: str) -> Finding:
    found = findings_at(loaded, where, Severity.error)
    assert len(found) == 1, [str(f) for f in loaded.result]
    return found[0]


# -- shapes -----------------------------------------------------------------------------------


def test_bare_template(tmp_path: Path) -> None:
    doc = {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-02-14",
           "location": "westus", "properties": properties()}  # fmt: skip
    loaded = load1(write(tmp_path, doc, "hello.json"))
    assert (loaded.shape, loaded.name, loaded.api_version, loaded.jsonc) == (
        "bare",
        "hello",
        "2022-02-14",
        False,
    )
    assert loaded.body == doc
    assert loaded.result.findings == []
    assert loaded.source_file == tmp_path / "hello.json"


def test_bare_template_without_type_or_api_version(tmp_path: Path) -> None:
    loaded = load1(write(tmp_path, {"properties": {"customize": []}}))
    assert loaded.shape == "bare"
    assert loaded.api_version is None


def test_bare_template_with_odd_type_gets_a_note(tmp_path: Path) -> None:
    loaded = load1(write(tmp_path, {"type": "Microsoft.VirtualMachineImages", "properties": properties()}))
    assert loaded.shape == "bare"
    assert "not 'Microsoft.VirtualMachineImages/imageTemplates'" in findings_at(loaded, "type")[0].message


def test_rest_request_example(tmp_path: Path) -> None:
    body = {"location": "westus", "identity": {"type": "None"}, "properties": properties()}
    doc = {"parameters": {"api-version": "2025-10-01", "imageTemplateName": "x", "parameters": body},
           "responses": {"200": {"body": {}}}}  # fmt: skip
    loaded = load1(write(tmp_path, doc, "CreateImageTemplateLinux.json"))
    assert (loaded.shape, loaded.api_version, loaded.name) == (
        "rest",
        "2025-10-01",
        "CreateImageTemplateLinux",
    )
    assert loaded.body == body


def test_arm_template_evaluates_the_resource(tmp_path: Path) -> None:
    loaded = load1(write(tmp_path, arm()))
    assert (loaded.shape, loaded.name, loaded.api_version) == ("arm", "tmpl", "2022-02-14")
    assert loaded.body["location"] == "westus"
    assert loaded.body["name"] == "tmpl"
    assert loaded.result.errors() == []


def test_arm_api_version_from_a_parameter(tmp_path: Path) -> None:
    params = {"imageTemplateName": {"type": "string", "defaultValue": "t"},
              "location": {"type": "string", "defaultValue": "westus"},
              "api-version": {"type": "string"}}  # fmt: skip
    path = write(tmp_path, arm(resource(apiVersion="[parameters('api-version')]"), parameters=params))
    assert load1(path).api_version is None
    assert load1(path, params={"api-version": "2020-02-14"}).api_version == "2020-02-14"


def test_arm_template_keeps_only_image_templates_and_finds_nested_ones(tmp_path: Path) -> None:
    parent = {"type": "Microsoft.Compute/galleries", "name": "g", "resources": [resource("nested")]}
    loaded = load_documents(write(tmp_path, arm(resource("top"), parent)))
    assert [t.name for t in loaded] == ["top", "nested"]


def test_arm_language_version_2_resources_object(tmp_path: Path) -> None:
    doc = arm(languageVersion="2.0")
    doc["resources"] = {"aib": resource("symbolic")}
    assert load1(write(tmp_path, doc)).name == "symbolic"


def test_resource_picks_one_by_name_case_insensitively(tmp_path: Path) -> None:
    path = write(tmp_path, arm(resource("first"), resource("second")))
    assert [t.name for t in load_documents(path, resource="SECOND")] == ["second"]


def test_resource_naming_nothing_lists_the_names(tmp_path: Path) -> None:
    path = write(tmp_path, arm(resource("first"), resource("second")))
    with pytest.raises(TemplateError) as info:
        load_documents(path, resource="third")
    assert "'first', 'second'" in (info.value.hint or "")


def test_load_document_refuses_ambiguity_and_names_the_choices(tmp_path: Path) -> None:
    path = write(tmp_path, arm(resource("first"), resource("second")))
    with pytest.raises(TemplateError, match="'first', 'second'") as info:
        load_document(path)
    assert "--resource" in (info.value.hint or "")
    assert load_document(path, resource="first").name == "first"


def test_resource_on_a_bare_template_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="not ARM"):
        load_documents(write(tmp_path, {"properties": properties()}), resource="x")


def test_arm_without_image_templates(tmp_path: Path) -> None:
    doc = arm({"type": "Microsoft.Storage/storageAccounts", "name": "s"})
    with pytest.raises(TemplateError, match="no Microsoft.VirtualMachineImages/imageTemplates resource"):
        load_documents(write(tmp_path, doc))


def test_arm_nested_deployment_gets_a_specific_hint(tmp_path: Path) -> None:
    doc = arm({"type": "Microsoft.Resources/deployments", "name": "inner", "properties": {"template": {}}})
    with pytest.raises(TemplateError) as info:
        load_documents(write(tmp_path, doc))
    assert "nested deployments" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"name": "x"}, "no image template found"),
        ({"properties": {"vmProfile": {}}}, "no image template found"),
        ([1, 2], "top level is a JSON array"),
        ({"$schema": PARAMS_SCHEMA, "parameters": {}}, "parameters file, not a template"),
    ],
)
def test_whole_document_problems_raise(tmp_path: Path, doc: Any, fragment: str) -> None:
    with pytest.raises(TemplateError, match=fragment) as info:
        load_documents(write(tmp_path, doc))
    assert info.value.hint


def test_not_json_at_all(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="invalid JSON at line 1"):
        load_documents(write(tmp_path, "properties: {source: x}"))


# -- JSONC and duplicates ---------------------------------------------------------------------


def test_jsonc_is_loaded_with_a_note(tmp_path: Path) -> None:
    text = '{\n  // a comment\n  "properties": {"source": {"type": "PlatformImage"}, "customize": [],},\n}\n'
    loaded = load1(write(tmp_path, text))
    assert loaded.jsonc is True
    note = findings_at(loaded, "(top level)", Severity.note)[0]
    assert "1 comment (line 2)" in note.message and "2 trailing commas" in note.message


def test_duplicate_key_inside_the_resource_is_a_warning_at_its_path(tmp_path: Path) -> None:
    text = '{"properties": {"source": {"sku": "a", "sku": "b"}, "customize": []}}'
    loaded = load1(write(tmp_path, text))
    assert loaded.body["properties"]["source"]["sku"] == "b"
    warning = findings_at(loaded, "properties.source.sku", Severity.warning)[0]
    assert "last value wins" in warning.message


def test_duplicate_key_outside_the_resource_is_reported_at_the_top(tmp_path: Path) -> None:
    text = json.dumps(arm()).replace(
        '"contentVersion": "1.0.0.0"', '"contentVersion": "1", "contentVersion": "2"'
    )
    loaded = load1(write(tmp_path, text))
    assert "(at contentVersion)" in findings_at(loaded, "(top level)", Severity.warning)[0].message


# -- parameters -------------------------------------------------------------------------------


def test_missing_parameter_is_an_error_where_it_is_used(tmp_path: Path) -> None:
    loaded = load1(write(tmp_path, arm(parameters={"imageTemplateName": {"type": "string"},
                                                   "location": {"type": "string"}})))  # fmt: skip
    finding = only_error_at(loaded, "location")
    assert "parameter 'location' has no value and no defaultValue" in finding.message
    assert "--param location=VALUE" in (finding.hint or "")
    assert "--set location=VALUE" in (finding.hint or "")
    assert loaded.body["location"] == "[parameters('location')]"  # unevaluated text is kept
    assert loaded.name == "t"  # the name could not be evaluated: the file stem


def test_parameter_names_are_case_insensitive(tmp_path: Path) -> None:
    loaded = load1(write(tmp_path, arm(resource(location="[parameters('LOCATION')]"))))
    assert loaded.body["location"] == "westus"


def test_undeclared_parameter_is_an_error(tmp_path: Path) -> None:
    loaded = load1(write(tmp_path, arm(resource(location="[parameters('nope')]"))))
    assert "not declared" in only_error_at(loaded, "location").message


def test_param_overrides_default(tmp_path: Path) -> None:
    loaded = load1(write(tmp_path, arm()), params={"location": "eastus"})
    assert loaded.body["location"] == "eastus"


def test_param_for_an_undeclared_name_is_an_error(tmp_path: Path) -> None:
    loaded = load1(write(tmp_path, arm()), params={"locaton": "eastus"})
    assert "--param locaton" in only_error_at(loaded, "(top level)").message


def test_param_on_a_bare_template_is_ignored_with_a_warning(tmp_path: Path) -> None:
    loaded = load1(write(tmp_path, {"properties": properties()}), params={"x": "1"})
    assert "ignored" in findings_at(loaded, "(top level)", Severity.warning)[0].message


TYPED = {
    "imageTemplateName": {"type": "string", "defaultValue": "t"},
    "location": {"type": "string", "defaultValue": "westus"},
    "timeout": {"type": "int", "defaultValue": 60},
    "validateOnly": {"type": "bool", "defaultValue": False},
    "regions": {"type": "array", "defaultValue": ["westus"]},
    "tags": {"type": "object", "defaultValue": {}},
    "sku": {"type": "string", "defaultValue": "18.04-LTS", "allowedValues": ["18.04-LTS", "20_04-lts"]},
    "secret": {"type": "secureString", "defaultValue": "s"},
}


def typed_template(tmp_path: Path) -> Path:
    props = properties(
        buildTimeoutInMinutes="[parameters('timeout')]",
        validate={"sourceValidationOnly": "[parameters('validateOnly')]"},
    )
    props["source"]["sku"] = "[parameters('sku')]"
    props["distribute"][0]["replicationRegions"] = "[parameters('regions')]"
    props["distribute"][0]["artifactTags"] = "[parameters('tags')]"
    props["customize"][0]["inline"] = ["[parameters('secret')]"]
    return write(tmp_path, arm(resource("t", properties=props), parameters=TYPED))


@pytest.mark.parametrize(
    ("name", "text", "path", "expected"),
    [
        ("timeout", "120", ("buildTimeoutInMinutes",), 120),
        ("validateOnly", "true", ("validate", "sourceValidationOnly"), True),
        ("validateOnly", "False", ("validate", "sourceValidationOnly"), False),
        ("regions", '["eastus", "westus2"]', ("distribute", 0, "replicationRegions"), ["eastus", "westus2"]),
        ("tags", '{"team": "x"}', ("distribute", 0, "artifactTags"), {"team": "x"}),
        ("sku", "20_04-lts", ("source", "sku"), "20_04-lts"),
        ("secret", "123", ("customize", 0, "inline", 0), "123"),  # a string param keeps the text
        ("secret", '"quoted"', ("customize", 0, "inline", 0), "quoted"),
    ],
)
def test_param_is_coerced_to_the_declared_type(
    tmp_path: Path, name: str, text: str, path: tuple[Any, ...], expected: Any
) -> None:
    loaded = load1(typed_template(tmp_path), params={name: text})
    value: Any = loaded.body["properties"]
    for part in path:
        value = value[part]
    assert value == expected
    assert loaded.result.errors() == []


@pytest.mark.parametrize(
    ("name", "text", "where", "fragment"),
    [
        ("timeout", "abc", "properties.buildTimeoutInMinutes", "is an int"),
        ("validateOnly", "yes", "properties.validate.sourceValidationOnly", "is a bool"),
        ("regions", "eastus", "properties.distribute[0].replicationRegions", "needs a JSON array"),
        ("tags", "[1]", "properties.distribute[0].artifactTags", "needs a JSON object"),
        ("sku", "22_04-lts", "properties.source.sku", "not one of the allowedValues"),
    ],
)
def test_param_type_mismatch_is_an_error_at_the_use(
    tmp_path: Path, name: str, text: str, where: str, fragment: str
) -> None:
    loaded = load1(typed_template(tmp_path), params={name: text})
    finding = only_error_at(loaded, where)
    assert fragment in finding.message
    assert f"--param {name}=" in (finding.hint or "")


def test_parameters_file_in_deployment_parameters_format(tmp_path: Path) -> None:
    pfile = write(tmp_path, {"$schema": PARAMS_SCHEMA, "contentVersion": "1.0.0.0",
                             "parameters": {"location": {"value": "northeurope"}}}, "p.json")  # fmt: skip
    assert load1(write(tmp_path, arm()), parameters_file=pfile).body["location"] == "northeurope"


def test_parameters_file_plain_value_wrappers(tmp_path: Path) -> None:
    pfile = write(tmp_path, {"location": {"value": "northeurope"}}, "p.json")
    assert load1(write(tmp_path, arm()), parameters_file=pfile).body["location"] == "northeurope"


def test_parameters_file_bare_values(tmp_path: Path) -> None:
    pfile = write(tmp_path, {"location": "northeurope", "imageTemplateName": "fromfile"}, "p.json")
    loaded = load1(write(tmp_path, arm()), parameters_file=pfile)
    assert (loaded.body["location"], loaded.name) == ("northeurope", "fromfile")


def test_parameters_file_is_overridden_by_param(tmp_path: Path) -> None:
    pfile = write(tmp_path, {"location": {"value": "northeurope"}}, "p.json")
    loaded = load1(write(tmp_path, arm()), parameters_file=pfile, params={"location": "eastus"})
    assert loaded.body["location"] == "eastus"


def test_parameters_file_with_comments_is_accepted(tmp_path: Path) -> None:
    pfile = write(tmp_path, '{\n // region\n "location": {"value": "uksouth"},\n}', "p.json")
    assert load1(write(tmp_path, arm()), parameters_file=pfile).body["location"] == "uksouth"


def test_parameters_file_value_of_the_wrong_type(tmp_path: Path) -> None:
    pfile = write(tmp_path, {"timeout": {"value": "60"}}, "p.json")
    loaded = load1(typed_template(tmp_path), parameters_file=pfile)
    finding = only_error_at(loaded, "properties.buildTimeoutInMinutes")
    assert "declared int, but parameters file p.json gives the string '60'" in finding.message


def test_parameters_file_key_vault_reference(tmp_path: Path) -> None:
    ref = {"reference": {"keyVault": {"id": "/subscriptions/x/vaults/v"}, "secretName": "s"}}
    pfile = write(tmp_path, {"parameters": {"location": ref}}, "p.json")
    finding = only_error_at(load1(write(tmp_path, arm()), parameters_file=pfile), "location")
    assert "Key Vault reference" in finding.message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("[1]", "top level is a JSON array"),
        ('{"parameters": "x"}', "'parameters' is a JSON string"),
        ("{nope", "invalid JSON"),
        (json.dumps({"$schema": SCHEMA, "resources": []}), "is a deployment template"),
    ],
)
def test_malformed_parameters_file_raises(tmp_path: Path, content: str, fragment: str) -> None:
    pfile = write(tmp_path, content, "p.json")
    with pytest.raises(TemplateError, match=fragment):
        load_documents(write(tmp_path, arm()), parameters_file=pfile)


def test_default_value_referring_to_another_parameter_and_a_variable(tmp_path: Path) -> None:
    params = {"imageTemplateName": {"type": "string",
                                    "defaultValue": "[format('aib-{0}', parameters('env'))]"},
              "env": {"type": "string", "defaultValue": "dev"},
              "location": {"type": "string", "defaultValue": "[resourceGroup().location]"}}  # fmt: skip
    doc = arm(resource(tags={"id": "[variables('imageId')]"}), parameters=params,
              variables={"imageId": "[concat('/images/', parameters('imageTemplateName'))]"})  # fmt: skip
    loaded = load1(write(tmp_path, doc), context={"resource_group_location": "westeurope"})
    assert loaded.name == "aib-dev"
    assert loaded.body["tags"] == {"id": "/images/aib-dev"}
    assert loaded.body["location"] == "westeurope"
    assert any("resourceGroup()" in f.message for f in loaded.result.of(Severity.note))


def test_unknown_context_key_raises(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="unknown deployment context key"):
        load_documents(write(tmp_path, arm()), context={"rg": "x"})


def test_self_referencing_parameter_is_an_error_not_a_recursion(tmp_path: Path) -> None:
    params = {"imageTemplateName": {"type": "string", "defaultValue": "[parameters('imageTemplateName')]"},
              "location": {"type": "string", "defaultValue": "westus"}}  # fmt: skip
    loaded = load1(write(tmp_path, arm(parameters=params)))
    assert "refers to itself" in only_error_at(loaded, "name").message


def test_expression_in_an_object_key_is_evaluated(tmp_path: Path) -> None:
    identity = {"type": "UserAssigned", "userAssignedIdentities": {
        "[resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', 'aib')]": {}}}  # fmt: skip
    loaded = load1(write(tmp_path, arm(resource(identity=identity))))
    (key,) = loaded.body["identity"]["userAssignedIdentities"]
    assert key.endswith(
        "/resourceGroups/localbuilder-rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aib"
    )


def test_unsupported_function_is_an_error_with_path_expression_and_hint(tmp_path: Path) -> None:
    props = properties()
    props["customize"][0]["inline"] = ["[reference('x').value]"]
    loaded = load1(write(tmp_path, arm(resource(properties=props))))
    finding = only_error_at(loaded, "properties.customize[0].inline[0]")
    assert "reference() cannot be evaluated locally" in finding.message
    assert "[reference('x').value]" in finding.message
    assert "--set properties.customize[0].inline[0]=VALUE" in (finding.hint or "")


def test_depends_on_is_not_evaluated(tmp_path: Path) -> None:
    loaded = load1(write(tmp_path, arm(resource(dependsOn=["[reference('x')]"]))))
    assert loaded.body["dependsOn"] == ["[reference('x')]"]
    assert loaded.result.errors() == []


def test_false_condition_is_a_warning(tmp_path: Path) -> None:
    loaded = load1(write(tmp_path, arm(resource(condition="[equals(1, 2)]"))))
    assert "would not deploy" in findings_at(loaded, "condition", Severity.warning)[0].message


def test_copy_loop_is_an_error(tmp_path: Path) -> None:
    loaded = load1(write(tmp_path, arm(resource(copy={"name": "c", "count": 2}))))
    assert "copy loops" in only_error_at(loaded, "copy").message


def test_each_template_gets_its_own_findings(tmp_path: Path) -> None:
    a = resource("a", location="[parameters('missing')]")
    b = resource("b")
    first, second = load_documents(write(tmp_path, arm(a, b)))
    assert first.result.errors() and not second.result.errors()


# -- --set ------------------------------------------------------------------------------------


def test_set_replaces_a_value_and_parses_json(tmp_path: Path) -> None:
    loaded = load1(write(tmp_path, {"properties": properties()}),
                   sets=["properties.source.sku=22_04-lts", "properties.vmProfile.osDiskSizeGB=64",
                         "properties.customize[0].inline[1]=sudo apt-get update"])  # fmt: skip
    props = loaded.body["properties"]
    assert props["source"]["sku"] == "22_04-lts"
    assert props["vmProfile"] == {"osDiskSizeGB": 64}  # missing keys are created
    assert props["customize"][0]["inline"][1] == "sudo apt-get update"
    assert findings_at(loaded, "properties.source.sku", Severity.note)


def test_set_removes_the_error_of_the_value_it_replaces(tmp_path: Path) -> None:
    doc = arm(parameters={"imageTemplateName": {"type": "string"}, "location": {"type": "string"}})
    loaded = load1(write(tmp_path, doc), sets=["location=westus"], params={"imageTemplateName": "n"})
    assert loaded.body["location"] == "westus"
    assert loaded.result.errors() == []


def test_set_api_version_changes_api_version(tmp_path: Path) -> None:
    loaded = load1(write(tmp_path, {"properties": properties()}), sets=["apiVersion=2024-02-01"])
    assert loaded.api_version == "2024-02-01"


def test_set_clears_a_placeholder_warning(tmp_path: Path) -> None:
    path = write(tmp_path, {"location": "<region>", "properties": properties()})
    assert findings_at(load1(path), "location", Severity.warning)
    assert not findings_at(load1(path, sets=["location=westus"]), "location", Severity.warning)


def test_set_with_a_quoted_key(tmp_path: Path) -> None:
    ident = "/subscriptions/x/resourceGroups/y/providers/Microsoft.ManagedIdentity/userAssignedIdentities/z.1"
    loaded = load1(write(tmp_path, {"properties": properties()}),
                   sets=[f"identity.userAssignedIdentities['{ident}']={{}}"])  # fmt: skip
    assert loaded.body["identity"] == {"userAssignedIdentities": {ident: {}}}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("properties.customize[5].name=x", "index [5] is past the end of properties.customize (1 items)"),
        ("properties.source.sku.x=1", "properties.source.sku is a string, not an object"),
        ("properties.source[0]=1", "properties.source is not an array"),
        ("properties.nothing[0]=1", "does not exist"),
    ],
)
def test_bad_set_paths_name_the_problem(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(fragment)):
        load_documents(write(tmp_path, {"properties": properties()}), sets=[text])


@pytest.mark.parametrize("text", ["noequals", "=x", "a..b=1", "a.=1", "a[x]=1", "a[0=1", "a]b=1x"])
def test_set_syntax_errors(text: str) -> None:
    try:
        path, _value, _text = parse_set(text)
    except TemplateError as exc:
        assert exc.hint and "--set" in str(exc)
    else:  # only "a]b=1x" is a (strange but valid) key
        assert path == ("a]b",)


def test_parse_set_values() -> None:
    assert parse_set("a=1")[1] == 1
    assert parse_set("a=true")[1] is True
    assert parse_set('a=["x"]')[1] == ["x"]
    assert parse_set("a=22_04-lts")[1] == "22_04-lts"
    assert parse_set('a="1"')[1] == "1"
    assert parse_set("a=x=y")[1] == "x=y"
    assert parse_set("a.b[2].c=")[0:2] == (("a", "b", 2, "c"), "")


def test_set_path_round_trips_through_parse_set() -> None:
    path = ("identity", "userAssignedIdentities", "/subscriptions/a.b", "x")
    assert parse_set(set_path(path) + "=1")[0] == path
    assert set_path(("properties", "customize", 2, "inline")) == "properties.customize[2].inline"


# -- placeholders -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<region>", ["<region>"]),
        ("  <runOutputName> ", ["<runOutputName>"]),
        ("/subscriptions/<subscriptionID>/resourceGroups/<rgName>/providers/Microsoft.Compute/images/<imageName>",
         ["<subscriptionID>", "<rgName>", "<imageName>"]),
        ("c:\\Apps\\<FileName>", ["<FileName>"]),
        ("https://<storageAccount>.blob.core.windows.net/scripts/x.sh", ["<storageAccount>"]),
        ("<your-AzureAdTenantId>", ["<your-AzureAdTenantId>"]),
    ],
)  # fmt: skip
def test_placeholders_found(text: str, expected: list[str]) -> None:
    assert find_placeholders(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        'echo "<html>" > /tmp/index.html',
        "cat <<EOF > /etc/motd",
        "echo Azure-Image-Builder-Restarted-the-VM  > c:\\buildArtifacts\\azureImageBuilderRestart.txt",
        '#reg add "HKLM\\SOFTWARE" /v "KFMSilentOptIn" /t REG_SZ /d "<your-AzureAdTenantId>" /f',
        "<html><body>hi</body></html>",
        "<br>",
        "a<b>c",
        "x -lt 3 -and y -gt 2",
        "Get-Item <",
        "{subscription-id}",
    ],
)
def test_not_placeholders(text: str) -> None:
    assert find_placeholders(text) == []


def test_placeholder_findings_with_paths_and_hints(tmp_path: Path) -> None:
    distribute = [{"type": "ManagedImage", "location": "<region>",
                   "imageId": "/subscriptions/<sub>/x/<img>", "runOutputName": "o"}]  # fmt: skip
    doc = {"location": "<region>",
           "identity": {"type": "UserAssigned", "userAssignedIdentities": {"<imgBuilderId>": {}}},
           "properties": properties(distribute=distribute)}  # fmt: skip
    doc["properties"]["customize"][0]["inline"] = ['echo "<html>" > /tmp/index.html']
    loaded = load1(write(tmp_path, doc))
    warned = {f.where: f for f in loaded.result.of(Severity.warning)}
    assert set(warned) == {
        "location",
        "identity.userAssignedIdentities.<imgBuilderId>",
        "properties.distribute[0].location",
        "properties.distribute[0].imageId",
    }
    assert warned["location"].message == "placeholder <region> was never replaced"
    assert warned["location"].hint == "replace it in the template, or: --set location=VALUE"
    assert "<sub>, <img> were never replaced" in warned["properties.distribute[0].imageId"].message
    assert "rename the key" in (warned["identity.userAssignedIdentities.<imgBuilderId>"].hint or "")


def test_unclosed_placeholder_is_a_warning(tmp_path: Path) -> None:
    props = properties()
    props["customize"][0] = {"type": "PowerShell", "scriptUri": "<pathToPowerShellFileInAzureStorage"}
    loaded = load1(write(tmp_path, {"properties": props}))
    assert "missing its closing '>'" in findings_at(loaded, "properties.customize[0].scriptUri")[0].message


def test_arm_expression_in_a_bare_template_is_a_warning(tmp_path: Path) -> None:
    loaded = load1(write(tmp_path, {"location": "[parameters('x')]", "properties": properties()}))
    assert "not evaluated" in findings_at(loaded, "location", Severity.warning)[0].message


# -- never a traceback ------------------------------------------------------------------------

_KEYS = st.sampled_from(
    ["properties", "source", "customize", "distribute", "resources", "parameters", "variables", "type",
     "name", "apiVersion", "location", "$schema", "defaultValue", "value", "api-version", "condition",
     "copy", "dependsOn", "identity", "[parameters('a')]", "a", "allowedValues", "reference"]
)  # fmt: skip
_STRINGS = st.sampled_from(
    ["Microsoft.VirtualMachineImages/imageTemplates", SCHEMA, PARAMS_SCHEMA, "[parameters('a')]",
     "[variables('a')]", "[concat(parameters('a'), 1)]", "[resourceGroup().location]", "[utcNow()]",
     "[reference('x')]", "[[x]", "[", "<region>", "/subscriptions/<s>/x", "string", "int", "array", "object",
     "bool", "[if(true, createObject(), createArray())]", "[parameters('a').b[0]]", "[split('a', '')]"]
) | st.text(max_size=12)  # fmt: skip
_DOCS = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | _STRINGS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(
    doc=st.dictionaries(_KEYS, _DOCS, max_size=6),
    params=st.dictionaries(st.sampled_from(["a", "b", "location"]), st.text(max_size=8), max_size=2),
    sets=st.lists(st.text(alphabet="ab.[]0'=x1", max_size=10), max_size=2),
)
def test_any_document_loads_or_raises_a_template_error(
    tmp_path_factory: pytest.TempPathFactory, doc: dict[str, Any], params: dict[str, str], sets: list[str]
) -> None:
    path = write(tmp_path_factory.mktemp("fuzz"), doc)
    try:
        templates = load_documents(path, params=params, sets=sets)
    except TemplateError as exc:
        assert exc.hint, str(exc)
        return
    for loaded in templates:
        json.dumps(loaded.body)  # the body is plain JSON again
        for finding in loaded.result:
            assert finding.message


def test_context_keys_can_be_given_as_params(tmp_path: Path) -> None:
    doc = arm(resource(location="[resourceGroup().location]", tags={"rg": "[resourceGroup().name]"}))
    loaded = load1(
        write(tmp_path, doc), params={"resource_group_location": "westus3", "resource_group_name": "rg1"}
    )
    assert (loaded.body["location"], loaded.body["tags"]["rg"]) == ("westus3", "rg1")
    assert loaded.result.errors() == []


def test_a_declared_parameter_named_like_a_context_key_stays_a_parameter(tmp_path: Path) -> None:
    params = {"imageTemplateName": {"type": "string", "defaultValue": "t"},
              "resource_group_location": {"type": "string"}}  # fmt: skip
    doc = arm(resource(location="[parameters('resource_group_location')]"), parameters=params)
    loaded = load1(write(tmp_path, doc), params={"resource_group_location": "westus3"})
    assert loaded.body["location"] == "westus3"
    assert "resourceGroup()" not in " ".join(f.message for f in loaded.result)
