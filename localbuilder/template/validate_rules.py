"""Validation pass 2: the rules that span fields, and the typed ``Template`` built from a checked body.

``ModelBuilder`` takes pass 1's normalised body, detects the guest OS (``guest_os``), hands each
customize/validate step to ``validate_steps``, applies the template-wide rules (runOutputName pattern
and uniqueness, SharedImage region fields, buildTimeoutInMinutes, stagingResourceGroup, identities …)
and builds the model records, with AIB's defaults for absent fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from localbuilder.template import model as m
from localbuilder.template import versions as v
from localbuilder.template.findings import JsonPath, Reporter, Severity, ValidationResult, quote
from localbuilder.template.guest_os import WINDOWS_ONLY, detect_os
from localbuilder.template.placeholders import is_placeholder
from localbuilder.template.validate_shape import MISSING_HINTS
from localbuilder.template.validate_steps import StepBuilder

# ``^[A-Za-z0-9-_.]{1,64}$`` is the swagger pattern of runOutputName (and of template names).
RUN_OUTPUT_NAME = re.compile(r"[A-Za-z0-9\-_.]{1,64}")
RESOURCE_GROUP_ID = re.compile(r"/subscriptions/[^/]+/resourceGroups/[^/]+/?", re.IGNORECASE)


class ModelBuilder(Reporter):
    """Pass 2 over pass 1's normalised body: the cross-field rules, then the ``Template``."""

    def __init__(
        self,
        version: str,
        result: ValidationResult,
        flagged: frozenset[JsonPath],
        *,
        allow_any_destination: bool,
    ) -> None:
        super().__init__(result, flagged)
        self.version = version
        self.steps = StepBuilder(result, flagged, allow_any_destination=allow_any_destination)

    # -- the template ---------------------------------------------------------------------------------

    def template(self, body: Mapping[str, Any], name: str) -> m.Template:
        props: Mapping[str, Any] = body.get("properties", {})
        pp: JsonPath = ("properties",)
        source_raw: Mapping[str, Any] = props.get("source", {})
        steps_raw: list[Mapping[str, Any]] = props.get("customize", [])
        validate_raw: Mapping[str, Any] | None = props.get("validate")
        validators_raw: list[Mapping[str, Any]] = (validate_raw or {}).get("inVMValidations", [])
        os_type, decided = detect_os(source_raw, [*steps_raw, *validators_raw])
        if not decided and not steps_raw:
            self.add(
                pp + ("source",),
                f"cannot tell the guest OS from this source; assuming {os_type}",
                Severity.note,
            )
        kinds = {str(s.get("type")) for s in [*steps_raw, *validators_raw]}
        if not decided and "Shell" in kinds and kinds & WINDOWS_ONLY:
            # A managed/gallery image does not say its OS; the steps then decide, and must agree.
            self.add(
                pp + ("customize",),
                "mixes Shell steps (Linux) with "
                + ", ".join(sorted(kinds & WINDOWS_ONLY))
                + " steps (Windows): one guest cannot run both",
                hint="keep the steps of the source image's OS",
            )

        source = self.source(source_raw, pp + ("source",))
        customize = tuple(
            self.steps.step(raw, pp + ("customize", i), os_type, decided, "customizer")
            for i, raw in enumerate(steps_raw)
        )
        self.steps.duplicate_names(steps_raw, pp + ("customize",))
        distribute = self.distributors(props.get("distribute", []), pp + ("distribute",))
        validate = None
        if validate_raw is not None:
            validators = tuple(
                self.steps.step(raw, pp + ("validate", "inVMValidations", i), os_type, decided, "validator")
                for i, raw in enumerate(validators_raw)
            )
            validate = m.Validate(
                continue_distribute_on_failure=validate_raw.get("continueDistributeOnFailure", False),
                source_validation_only=validate_raw.get("sourceValidationOnly", False),
                in_vm_validations=validators,  # type: ignore[arg-type]  # validator types are checked above
            )
            if validate.source_validation_only and customize:
                self.add(
                    pp + ("validate", "sourceValidationOnly"),
                    "sourceValidationOnly validates the source image directly: the customize steps do "
                    "not run",
                    Severity.warning,
                )
        timeout = props.get("buildTimeoutInMinutes", 0)
        if 0 < timeout < 6:
            self.add(
                pp + ("buildTimeoutInMinutes",),
                f"must be 0 (the default, 240) or between 6 and 960 minutes, not {timeout}",
                Severity.service,
                hint="use at least 6",
            )
        identity = self.identity(body.get("identity"), ("identity",))
        errors_raw: Mapping[str, Any] = props.get("errorHandling", {})
        staging = props.get("stagingResourceGroup")
        if (
            isinstance(staging, str)
            and staging
            and not is_placeholder(staging)
            and not RESOURCE_GROUP_ID.fullmatch(staging)
        ):
            self.add(
                pp + ("stagingResourceGroup",),
                "must be a resource group id (/subscriptions/<id>/resourceGroups/<name>), "
                f"not {quote(staging)}",
                Severity.service,
                code="BadStagingResourceGroup",
            )
        auto_run = props.get("autoRun", {}).get("state") == "Enabled"
        if auto_run:
            self.add(
                pp + ("autoRun",),
                "autoRun has no local meaning: 'localbuilder build' runs the build",
                Severity.note,
            )
        optimize = self.optimize(props.get("optimize"), pp + ("optimize",))
        return m.Template(
            name=name,
            api_version=self.version,
            location=body.get("location", ""),
            tags=body.get("tags", {}),
            identity=identity,
            source=source,
            customize=customize,
            distribute=distribute,
            vm_profile=self.vm_profile(props.get("vmProfile", {})),
            build_timeout_minutes=timeout or m.DEFAULT_BUILD_TIMEOUT_MINUTES,
            validate=validate,
            optimize=optimize,
            error_handling=m.ErrorHandling(
                on_customizer_error=m.OnBuildError(errors_raw.get("onCustomizerError", "cleanup")),
                on_validation_error=m.OnBuildError(errors_raw.get("onValidationError", "cleanup")),
            ),
            staging_resource_group=staging,
            auto_run=auto_run,
            managed_resource_tags=props.get("managedResourceTags", {}),
            additional_data_disks=tuple(
                m.DataDisk(size_gb=d.get("sizeGB", 0)) for d in props.get("additionalDataDisks", [])
            ),
            os_type=os_type,
        )

    def identity(self, raw: Mapping[str, Any] | None, path: JsonPath) -> m.Identity | None:
        if raw is None or "type" not in raw:
            return None
        ids = tuple(raw.get("userAssignedIdentities", []))
        if raw["type"] == "UserAssigned" and not ids:
            self.add(
                path + ("userAssignedIdentities",),
                "a UserAssigned identity needs at least one entry in userAssignedIdentities",
                Severity.service,
                hint='add "userAssignedIdentities": {"<identity resource id>": {}}',
            )
        return m.Identity(type=m.IdentityType(raw["type"]), user_assigned_identities=ids)

    def source(self, raw: Mapping[str, Any], path: JsonPath) -> m.Source:
        kind = raw.get("type")
        if kind == "ManagedImage":
            return m.ManagedImageSource(image_id=raw.get("imageId", ""))
        if kind == "SharedImageVersion":
            return m.SharedImageVersionSource(
                image_version_id=raw.get("imageVersionId", ""), exact_version=raw.get("exactVersion")
            )
        plan = raw.get("planInfo")
        return m.PlatformImageSource(
            publisher=raw.get("publisher", ""),
            offer=raw.get("offer", ""),
            sku=raw.get("sku", ""),
            version=raw.get("version", ""),
            plan_info=None
            if plan is None
            else m.PlanInfo(
                plan_name=plan.get("planName", ""),
                plan_product=plan.get("planProduct", ""),
                plan_publisher=plan.get("planPublisher", ""),
            ),
        )

    # -- distribute -----------------------------------------------------------------------------------

    def distributors(self, raws: Sequence[Mapping[str, Any]], path: JsonPath) -> tuple[m.Distributor, ...]:
        if not raws:
            self.add(path, "at least one distribute target is required", hint=MISSING_HINTS["distribute"])
        out: list[m.Distributor] = []
        seen: dict[str, int] = {}
        for index, raw in enumerate(raws):
            here = path + (index,)
            name = raw.get("runOutputName", "")
            if "runOutputName" in raw and not is_placeholder(name) and not RUN_OUTPUT_NAME.fullmatch(name):
                self.add(
                    here + ("runOutputName",),
                    f"must match ^[A-Za-z0-9-_.]{{1,64}}$, not {quote(name)}",
                    hint="use letters, digits, '-', '_' and '.', at most 64 characters",
                )
            elif name:
                # Run outputs are ARM sub-resources: names compare case-insensitively.
                key = name.lower()
                if key in seen:
                    self.add(
                        here + ("runOutputName",),
                        f"runOutputName '{name}' is also used by distribute[{seen[key]}]; each "
                        "distribute target needs its own",
                        hint="rename one of them",
                    )
                else:
                    seen[key] = index
            tags = raw.get("artifactTags", {})
            kind = raw["type"]
            if kind == "ManagedImage":
                out.append(
                    m.ManagedImageDistributor(
                        run_output_name=name,
                        artifact_tags=tags,
                        image_id=raw.get("imageId", ""),
                        location=raw.get("location", ""),
                    )
                )
            elif kind == "SharedImage":
                out.append(self.shared_image(raw, here, name, tags))
            else:
                out.append(
                    m.VhdDistributor(run_output_name=name, artifact_tags=tags, uri=raw.get("uri") or None)
                )
        return tuple(out)

    def shared_image(
        self, raw: Mapping[str, Any], path: JsonPath, name: str, tags: Mapping[str, str]
    ) -> m.SharedImageDistributor:
        regions = raw.get("replicationRegions")
        targets = raw.get("targetRegions")
        if regions is not None and targets is not None:
            self.add(
                path + ("targetRegions",),
                "replicationRegions can be specified only if targetRegions is not specified",
                Severity.service,
                hint="drop replicationRegions (deprecated) and keep targetRegions",
            )
        if (
            raw.get("storageAccountType") is not None
            and regions is None
            and v.at_least(self.version, v.V22_07)
        ):
            self.add(
                path + ("storageAccountType",),
                "storageAccountType can be specified only if replicationRegions is specified",
                Severity.service,
                hint="set storageAccountType per entry of targetRegions instead",
            )
        versioning = raw.get("versioning")
        return m.SharedImageDistributor(
            run_output_name=name,
            artifact_tags=tags,
            gallery_image_id=raw.get("galleryImageId", ""),
            replication_regions=tuple(regions or ()),
            target_regions=tuple(
                m.TargetRegion(
                    name=t.get("name", ""),
                    replica_count=t.get("replicaCount", 1),
                    storage_account_type=_opt_enum(m.StorageAccountType, t.get("storageAccountType")),
                )
                for t in targets or ()
            ),
            versioning=None
            if versioning is None
            else m.Versioning(scheme=m.VersioningScheme(versioning["scheme"]), major=versioning.get("major")),
            exclude_from_latest=raw.get("excludeFromLatest", False),
            storage_account_type=_opt_enum(m.StorageAccountType, raw.get("storageAccountType")),
            replication_mode=_opt_enum(m.ReplicationMode, raw.get("replicationMode")),
        )

    # -- the rest -------------------------------------------------------------------------------------

    def vm_profile(self, raw: Mapping[str, Any]) -> m.VmProfile:
        vnet = raw.get("vnetConfig")
        return m.VmProfile(
            vm_size=raw.get("vmSize", ""),
            os_disk_size_gb=raw.get("osDiskSizeGB", 0),
            user_assigned_identities=tuple(raw.get("userAssignedIdentities", ())),
            vnet_config=None
            if vnet is None
            else m.VnetConfig(
                subnet_id=vnet.get("subnetId"),
                container_instance_subnet_id=vnet.get("containerInstanceSubnetId"),
                proxy_vm_size=vnet.get("proxyVmSize"),
            ),
        )

    def optimize(self, raw: Mapping[str, Any] | None, path: JsonPath) -> m.Optimize | None:
        if raw is None:
            return None
        boot = raw.get("vmBoot", {}).get("state")
        work = raw.get("workload", {})
        result = m.Optimize(
            vm_boot=_opt_enum(m.State, boot),
            workload=_opt_enum(m.State, work.get("state")),
            workload_script_uri=work.get("scriptUri"),
            workload_sha256_checksum=work.get("sha256Checksum", ""),
        )
        if result.vm_boot is m.State.Enabled or result.workload is m.State.Enabled:
            self.add(
                path, "image optimization is done by the Azure service; localbuilder skips it", Severity.note
            )
        return result


def _opt_enum(cls: Any, value: object) -> Any:
    return None if value is None else cls(value)
