"""ARM expressions: tokenizer, parser, and each supported function (examples taken from the corpus)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localbuilder.template.arm import DeploymentContext, Scope
from localbuilder.template.arm_syntax import ExpressionError
from localbuilder.template.arm_values import dotnet_format

NOW = dt.datetime(2025, 11, 26, 10, 38, 7, 123456, tzinfo=dt.UTC)

# Parameters and variables shaped like the corpus templates that use them.
PARAMS: dict[str, Any] = {
    "imagetemplatename": "myTemplate",
    "managedimageresgroupid": "/subscriptions/1111/resourceGroups/img/providers/Microsoft.Compute/images/",
    "managedimagename": "golden",
    "imagegalleryname": "myGallery",
    "imagedefinitionproperties": {"name": "Win2019_Def", "publisher": "AzureWindowsBaseline"},
    "azurecomputinggallery": "sig_windows_jpimages",
    "gallaryimagename": "sigrgws2022",
    "date": "2025.11.261038",
    "_artifactslocation": "https://example.org/artifacts/",
    "customizerscriptname": "scripts/runScript.ps1",
    "_artifactslocationsastoken": "",
    "templateidentityname": "ImageGallery_1234567",
    "templateidentityroledefinitionname": "4f3a9a3c-0000-0000-0000-000000000000",
    "replicationregions": ["centralus", "eastus2"],
}
VARIABLES: dict[str, Any] = {"imagefolder": "c:\\images"}
# Each replace() doubles the string: 2 * 2**21 characters, over the evaluator's 1 M limit.
BLOWUP = "[" + "replace(" * 21 + "'aa'" + ", 'a', 'aa')" * 21 + "]"


def make_scope(ctx: DeploymentContext | None = None) -> Scope:
    def parameter(name: str) -> Any:
        try:
            return PARAMS[name.lower()]
        except KeyError:
            raise ExpressionError(f"parameter {name!r} has no value") from None

    def variable(name: str) -> Any:
        return VARIABLES[name.lower()]

    return Scope(
        context=ctx or DeploymentContext(now=NOW),
        resolve_parameter=parameter,
        resolve_variable=variable,
        template={"contentVersion": "1.0.0.0"},
    )


def ev(text: str, scope: Scope | None = None) -> Any:
    return (scope or make_scope()).evaluate_string(text)


def err(text: str, scope: Scope | None = None) -> str:
    with pytest.raises(ExpressionError) as info:
        ev(text, scope)
    return info.value.message


# -- what is an expression --------------------------------------------------------------------


def test_plain_strings_are_not_expressions() -> None:
    assert ev("Standard_D2_v2") == "Standard_D2_v2"


def test_double_bracket_escapes_a_literal() -> None:
    assert ev("[[parameters('x')]") == "[parameters('x')]"


def test_bracket_without_closing_is_a_literal_powershell_line() -> None:
    # From lenvolk's inline PowerShell: starts with '[' but does not end with ']'.
    line = "[System.Net.ServicePointManager]::SecurityProtocol = [System.Net.ServicePointManager]::Tls12"
    assert ev(line) == line


# -- syntax -----------------------------------------------------------------------------------


def test_string_literal_with_doubled_quote() -> None:
    assert ev("[concat('it''s', ' ok')]") == "it's ok"


def test_integer_literals_including_negative() -> None:
    assert ev("[add(-2, 5)]") == 3


def test_true_false_null_as_words_and_functions() -> None:
    assert ev("[createArray(true, false, null, true(), false(), null())]") == [
        True,
        False,
        None,
        True,
        False,
        None,
    ]


def test_property_access_and_indexing() -> None:
    assert ev("[parameters('imageDefinitionProperties').name]") == "Win2019_Def"
    assert ev("[parameters('imageDefinitionProperties')['publisher']]") == "AzureWindowsBaseline"
    assert ev("[parameters('replicationRegions')[1]]") == "eastus2"


def test_property_access_is_case_insensitive() -> None:
    assert ev("[resourceGroup().LOCATION]") == "local"


def test_function_names_are_case_insensitive() -> None:
    assert ev("[CONCAT('a', ToLower('B'))]") == "ab"


def test_whitespace_between_tokens_is_ignored() -> None:
    assert ev("[ concat ( 'a' , 'b' ) ]") == "ab"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[concat('a']", "expected ')'"),
        ("[concat('a)]", "unterminated string literal"),
        ("[]", "empty expression"),
        ("[concat('a') 'b']", "unexpected 'b'"),
        ("[foo]", "not a function call"),
        ("[concat(#)]", "unexpected character '#'"),
        ("[parameters('x').]", "expected 'ident'"),
    ],
)
def test_syntax_errors_name_the_problem(text: str, fragment: str) -> None:
    assert fragment in err(text)


def test_deep_nesting_is_an_expression_error_not_a_recursion_error() -> None:
    text = "[" + "concat(" * 500 + "'a'" + ")" * 500 + "]"
    assert "nested deeper" in err(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_expressions_give_a_value_or_an_expression_error(body: str) -> None:
    try:
        ev(f"[{body}]")
    except ExpressionError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="()[],.'abc01 -", max_size=40))
def test_expression_shaped_noise_gives_a_value_or_an_expression_error(body: str) -> None:
    try:
        ev(f"[concat({body})]")
    except ExpressionError:
        pass


# -- functions, with expressions from the corpus ----------------------------------------------


def test_parameters() -> None:  # every needs-inputs corpus template
    assert ev("[parameters('imageTemplateName')]") == "myTemplate"


def test_variables() -> None:  # kkamegawa windows2022image.json
    assert ev("[format('remove-item -path {0} -recurse -force', variables('imageFolder'))]") == (
        "remove-item -path c:\\images -recurse -force"
    )


def test_concat_strings() -> None:  # solutions/4_Using_ENV_Variables/devOpsEnvTemplate.json
    assert ev("[concat(parameters('managedImageResGroupId'),parameters('managedImageName'))]") == (
        "/subscriptions/1111/resourceGroups/img/providers/Microsoft.Compute/images/golden"
    )


def test_concat_arrays() -> None:
    assert ev("[concat(parameters('replicationRegions'), createArray('westus'))]") == [
        "centralus", "eastus2", "westus",
    ]  # fmt: skip


def test_concat_renders_ints_and_bools_like_dotnet() -> None:
    assert ev("[concat('n=', 3, ' ', true)]") == "n=3 True"


def test_concat_refuses_mixing_arrays_and_strings() -> None:
    assert "cannot mix" in err("[concat('a', createArray('b'))]")


def test_format_with_resource_group_name() -> None:  # kkamegawa: aibName default
    assert ev("[format('aib-{0}', resourceGroup().name)]") == "aib-localbuilder-rg"


def test_format_split_index_resource_id() -> None:  # kkamegawa: galleyImageVersion
    text = (
        "[format('{0}/versions/{1}', resourceId('Microsoft.Compute/galleries/images', "
        "split(format('{0}/{1}', parameters('AzureComputingGallery'), "
        "parameters('gallaryImageName')), '/')[0], "
        "split(format('{0}/{1}', parameters('AzureComputingGallery'), "
        "parameters('gallaryImageName')), '/')[1]), "
        "parameters('date'))]"
    )
    assert ev(text) == (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/localbuilder-rg/providers/"
        "Microsoft.Compute/galleries/sig_windows_jpimages/images/sigrgws2022/versions/2025.11.261038"
    )


@pytest.mark.parametrize(
    ("fmt", "args", "expected"),
    [
        ("{0}-{1}-{0}", ["a", "b"], "a-b-a"),
        ("{{literal}} {0}", ["x"], "{literal} x"),
        ("[{0,5}]", ["ab"], "[   ab]"),
        ("[{0,-5}]", ["ab"], "[ab   ]"),
        ("{0:D3}", [7], "007"),
        ("{0:X}", [255], "FF"),
        ("{0:N0}", [1234567], "1,234,567"),
        ("{0:N}", [1234], "1,234.00"),
        ("{0}", [True], "True"),
    ],
)
def test_dotnet_format(fmt: str, args: list[Any], expected: str) -> None:
    assert dotnet_format(fmt, args) == expected


@pytest.mark.parametrize(
    ("fmt", "fragment"), [("{1}", "only 1 given"), ("{0", "unclosed"), ("}", "unmatched")]
)
def test_dotnet_format_errors(fmt: str, fragment: str) -> None:
    with pytest.raises(ExpressionError, match=fragment):
        dotnet_format(fmt, ["a"])


def test_guid_substring_format() -> None:  # nataliakon: templateIdentityName default
    rg_id = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/localbuilder-rg"
    expected = ("ImageGallery_" + str(uuid.uuid5(uuid.UUID("11fb06fb-712d-4ddd-98c7-e71bbd588830"), rg_id)))[
        :21
    ]
    assert ev("[substring(format('ImageGallery_{0}', guid(resourceGroup().id)), 0, 21)]") == expected


def test_guid_joins_arguments_with_hyphens() -> None:  # nataliakon: templateIdentityRoleAssignmentName
    namespace = uuid.UUID("11fb06fb-712d-4ddd-98c7-e71bbd588830")
    assert ev("[guid('a', 'b', 'c')]") == str(uuid.uuid5(namespace, "a-b-c"))
    assert ev("[guid('a', 'b')]") != ev("[guid('ab')]")


def test_guid_is_deterministic() -> None:
    assert ev("[guid(resourceGroup().id)]") == ev("[guid(resourceGroup().id)]")


def test_substring_out_of_range() -> None:
    assert "outside the 3-character string" in err("[substring('abc', 2, 5)]")


def test_resource_id_type_and_names() -> None:  # nataliakon: galleryImageId
    text = (
        "[resourceId('Microsoft.Compute/galleries/images', parameters('imageGalleryName'), "
        "parameters('imageDefinitionProperties').name)]"
    )
    assert ev(text) == (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/localbuilder-rg/providers/"
        "Microsoft.Compute/galleries/myGallery/images/Win2019_Def"
    )


def test_resource_id_with_resource_group() -> None:
    assert ev("[resourceId('otherRg', 'Microsoft.ManagedIdentity/userAssignedIdentities', 'id1')]") == (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/otherRg/providers/"
        "Microsoft.ManagedIdentity/userAssignedIdentities/id1"
    )


def test_resource_id_with_subscription_and_resource_group() -> None:
    assert ev("[resourceId('1234', 'rg', 'Microsoft.Compute/images', 'img')]") == (
        "/subscriptions/1234/resourceGroups/rg/providers/Microsoft.Compute/images/img"
    )


def test_resource_id_wrong_number_of_names() -> None:
    assert "needs 2 name(s)" in err("[resourceId('Microsoft.Compute/galleries/images', 'onlyGallery')]")


def test_uri_combines_base_and_relative() -> None:  # nataliakon: customizerScriptUri
    text = (
        "[uri(parameters('_artifactsLocation'), format('{0}{1}', parameters('customizerScriptName'), "
        "parameters('_artifactsLocationSasToken')))]"
    )
    assert ev(text) == "https://example.org/artifacts/scripts/runScript.ps1"


def test_uri_without_trailing_slash_replaces_the_last_segment() -> None:
    assert ev("[uri('https://example.org/a/b', 'c.sh')]") == "https://example.org/a/c.sh"


def test_uri_needs_an_absolute_base() -> None:
    assert "not an absolute URI" in err("[uri('relative/path', 'c.sh')]")


def test_resource_group_object_and_context() -> None:  # nataliakon/kkamegawa: location default
    scope = make_scope(DeploymentContext(resource_group_location="westeurope", now=NOW))
    assert ev("[resourceGroup().location]", scope) == "westeurope"
    assert ev("[resourceGroup().id]") == (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/localbuilder-rg"
    )
    assert ev("[resourceGroup().name]") == "localbuilder-rg"
    assert "resourceGroup()" in scope.used


def test_subscription_object() -> None:
    assert ev("[subscription().subscriptionId]") == "00000000-0000-0000-0000-000000000000"
    assert ev("[subscription().id]") == "/subscriptions/00000000-0000-0000-0000-000000000000"
    assert set(ev("[subscription()]")) >= {"id", "subscriptionId", "tenantId", "displayName"}


def test_utc_now_with_dotnet_format_in_a_parameter_default() -> None:  # kkamegawa: date default
    scope = make_scope()
    scope.in_parameter_default = 1
    assert ev("[utcNow('yyyy.MM.ddHHmm')]", scope) == "2025.11.261038"
    assert ev("[utcNow()]", scope) == "20251126T103807Z"
    assert ev("[utcNow('u')]", scope) == "2025-11-26 10:38:07Z"


def test_utc_now_outside_a_parameter_default_is_refused_like_arm() -> None:
    assert "only allowed in a parameter's defaultValue" in err("[utcNow()]")


def test_new_guid_only_in_parameter_defaults() -> None:  # nataliakon: forceUpdateTag default
    assert "only allowed" in err("[newGuid()]")
    scope = make_scope()
    scope.in_parameter_default = 1
    assert uuid.UUID(ev("[newGuid()]", scope)).version == 4


def test_deployment_has_no_template_link_for_a_local_file() -> None:  # nataliakon: _artifactsLocation
    message = err("[deployment().properties.templateLink.uri]")
    assert "no property 'templateLink'" in message
    assert ev("[deployment().name]") == "localbuilder"


def test_reference_needs_azure_and_says_so() -> None:  # nataliakon: roleAssignments principalId
    message = err(
        "[reference(resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', 'x')).principalId]"
    )
    assert "reference() cannot be evaluated locally" in message


def test_unknown_function_is_named() -> None:
    assert "unknown or unsupported ARM function frobnicate()" in err("[frobnicate(1)]")


def test_user_defined_function_is_refused() -> None:
    assert "user-defined function ns.f()" in err("[ns.f('a')]")


def test_union_objects_merge_nested_objects_and_replace_arrays() -> None:
    scope = make_scope()
    PARAMS["first"] = {"property": {"one": "a", "three": "c1"}, "nestedArray": [1, 2]}
    PARAMS["second"] = {"property": {"three": "c2", "four": "d"}, "nestedArray": [3, 4]}
    try:
        assert ev("[union(parameters('first'), parameters('second'))]", scope) == {
            "property": {"one": "a", "three": "c2", "four": "d"},
            "nestedArray": [3, 4],
        }
    finally:
        del PARAMS["first"], PARAMS["second"]


def test_union_arrays_keeps_order_and_drops_duplicates() -> None:
    assert ev("[union(createArray('a', 'b'), createArray('b', 'c'))]") == ["a", "b", "c"]


def test_if_is_lazy() -> None:
    assert ev("[if(equals(1, 1), 'yes', parameters('missing'))]") == "yes"
    assert "has no value" in err("[if(equals(1, 2), 'yes', parameters('missing'))]")


def test_equals_is_type_aware() -> None:
    assert ev("[equals('a', 'a')]") is True
    assert ev("[equals('a', 'A')]") is False
    assert ev("[equals(1, true)]") is False
    assert ev("[equals(createArray(1, 2), createArray(1, 2))]") is True


def test_create_object_and_create_array() -> None:
    assert ev("[createObject('a', 1, 'b', createArray('x'))]") == {"a": 1, "b": ["x"]}
    assert "even number" in err("[createObject('a')]")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[toLower('AbC')]", "abc"),
        ("[toUpper('AbC')]", "ABC"),
        ("[string(true)]", "True"),
        ("[string(12)]", "12"),
        ("[string(createObject('a', 1))]", '{"a":1}'),
        ("[replace('a-b-c', '-', '_')]", "a_b_c"),
        ("[last(split('a/b/c', '/'))]", "c"),
        ("[first(createArray(1, 2))]", 1),
        ("[length('abc')]", 3),
        ("[empty('')]", True),
        ("[contains('abc', 'b')]", True),
        ("[not(true)]", False),
        ("[and(true, false)]", False),
        ("[or(false, true)]", True),
        ("[coalesce(null, 'x')]", "x"),
        ("[int('42')]", 42),
        ("[bool('True')]", True),
        ("[json('{\"a\": [1]}').a[0]]", 1),
        ("[startsWith('Microsoft.Compute', 'microsoft')]", True),
        ("[join(createArray('a', 'b'), ',')]", "a,b"),
        ("[take('abcdef', 2)]", "ab"),
        ("[skip(createArray(1, 2, 3), 1)]", [2, 3]),
        ("[div(-7, 2)]", -3),
        ("[mod(-7, 2)]", -1),
        ("[greater(2, 1)]", True),
        ("[base64ToString(base64('hi'))]", "hi"),
        ("[trim('  x ')]", "x"),
        ("[range(1, 3)]", [1, 2, 3]),
    ],
)
def test_other_cheap_functions(text: str, expected: Any) -> None:
    assert ev(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[toLower(1)]", "must be a string"),
        ("[concat()]", "expects at least 1 argument"),
        ("[createArray(1)[5]]", "out of range"),
        ("[createObject('a', 1).b]", "no property 'b'"),
        ("[div(1, 0)]", "division by zero"),
        ("[int('x')]", "cannot convert"),
        ("[split('a', '')]", "must not be empty"),
        ("[format('{0:D99999}', 1)]", "too large"),
        ("[format('{0,99999}', 1)]", "bad alignment"),
        (BLOWUP, "longer than"),
    ],
)
def test_function_errors_are_specific(text: str, fragment: str) -> None:
    assert fragment in err(text)


def test_deployment_context_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown deployment context key"):
        DeploymentContext.from_mapping({"resource_group": "x"})
    assert (
        DeploymentContext.from_mapping({"resource_group_location": "westus"}).resource_group_location
        == "westus"
    )
