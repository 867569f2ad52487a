"""How a Linux source provisions its first boot, decided offline from its own files before it boots.

localbuilder provisions the build guest the NoCloud way: a seed ISO (label ``cidata``) that cloud-init reads
to create the build user with the build key. That works only when the source's cloud-init reads NoCloud.
Images made for Azure often do not: Debian's and Ubuntu's Azure images limit cloud-init to the Azure
datasource (``datasource_list: [ Azure ]``), and RHEL-family images may have no cloud-init at all and let
waagent provision from the OVF environment. Booting such a source with a seed only ends when the boot
watch sees the guest ignore it (~1 min under TCG) — or, without the watch, at the SSH timeout.

So before the guest boots, the source's files say which agent would provision it:
- ``/etc/cloud/cloud.cfg`` and ``/etc/cloud/cloud.cfg.d/*.cfg``: cloud-init is installed; its
  ``datasource_list`` is the last one set, in that order (cloud-init merges the files the same way), and
  no list at all means cloud-init's built-in one, which includes NoCloud. ``/etc/cloud/cloud-init.disabled``
  turns cloud-init off;
- ``/etc/waagent.conf``: waagent is installed; ``Provisioning.Agent`` (``auto``, ``waagent``,
  ``cloud-init``, ``disabled``; older agents: ``Provisioning.Enabled``, ``Provisioning.UseCloudInit``)
  says whether it provisions.

Mode ``nocloud`` is what localbuilder can do today. A source that provisions only the Azure way (or not at
all) is refused before boot with the evidence and the fixes; emulating Azure's provisioning for such
sources (wireserver, IMDS, the OVF environment) is not built yet. ``--provisioning nocloud`` skips the
decision and boots with the seed anyway (the boot watch then reports what the guest did).

The decision is cached per source sha256 (the catalog's identity of an image), so a source is read once.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import re
from pathlib import Path

from localbuilder import paths
from localbuilder.diskread import FileReader
from localbuilder.errors import SourceError, UsageError
from localbuilder.inspect import open_linux_root

log = logging.getLogger("localbuilder.provisioning")

CACHE_VERSION = 1
CLOUD_CFG = "/etc/cloud/cloud.cfg"
CLOUD_CFG_D = "/etc/cloud/cloud.cfg.d"
CLOUD_DISABLED = "/etc/cloud/cloud-init.disabled"
WAAGENT_CONF = "/etc/waagent.conf"


class ProvisioningRequest(enum.StrEnum):
    auto = "auto"  # decide from the source's files
    nocloud = "nocloud"  # boot with the NoCloud seed without asking


def provisioning_request(value: str) -> ProvisioningRequest:
    try:
        return ProvisioningRequest(value)
    except ValueError:
        raise UsageError(
            f"--provisioning {value!r} is not a provisioning mode",
            hint="Use --provisioning auto (decide from the source's files) or nocloud.",
        ) from None


@dataclasses.dataclass(frozen=True)
class Provisioning:
    """How the build guest of a source is provisioned, and why."""

    mode: str  # "nocloud"
    decided_by: str  # "source files" | "--provisioning nocloud" | "unread" (no reader could open the source)
    evidence: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "decidedBy": self.decided_by, "evidence": list(self.evidence)}

    def describe(self) -> str:
        why = f": {'; '.join(self.evidence)}" if self.evidence else ""
        return f"{self.mode} (decided by {self.decided_by}){why}"


# ---------------------------------------------------------------------------------------------------
# The files


def datasource_list(text: str) -> list[str] | None:
    """The ``datasource_list`` a cloud-init YAML file sets (flow ``[ A, B ]`` or block ``- A`` form), or
    None when it sets none. Only this one top-level key is read."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^datasource_list\s*:\s*(.*?)\s*(?:#.*)?$", line)
        if m is None:
            continue
        value = m.group(1)
        if value.startswith("["):
            inner = value.strip("[]")
            return [v.strip().strip("'\"") for v in inner.split(",") if v.strip()]
        items = []
        for follow in lines[i + 1 :]:
            item = re.match(r"^\s*-\s*(.+?)\s*(?:#.*)?$", follow)
            if item is None:
                if follow.strip() and not follow.lstrip().startswith("#"):
                    break
                continue
            items.append(item.group(1).strip("'\""))
        return items
    return None


def waagent_settings(text: str) -> dict[str, str]:
    """``Key=value`` lines of waagent.conf (comments dropped)."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


@dataclasses.dataclass(frozen=True)
class Agents:
    """What the source's files say about its provisioning agents."""

    cloud_init: bool
    cloud_init_disabled: bool
    datasources: tuple[str, ...] | None  # None: cloud-init's built-in list
    datasources_from: str
    waagent: bool
    waagent_provisions: bool
    waagent_setting: str

    @property
    def nocloud(self) -> bool:
        """cloud-init runs and would read localbuilder's NoCloud seed."""
        if not self.cloud_init or self.cloud_init_disabled:
            return False
        return self.datasources is None or any(d.lower() == "nocloud" for d in self.datasources)

    def evidence(self) -> list[str]:
        out = []
        if not self.cloud_init:
            out.append(f"no cloud-init ({CLOUD_CFG} is absent)")
        elif self.cloud_init_disabled:
            out.append(f"cloud-init is disabled by {CLOUD_DISABLED}")
        elif self.datasources is None:
            out.append("cloud-init with its built-in datasource list (NoCloud included)")
        else:
            listed = ", ".join(self.datasources)
            out.append(f"cloud-init datasource_list [{listed}] in {self.datasources_from}")
        if self.waagent:
            out.append(f"waagent ({self.waagent_setting}: "
                       f"{'provisions' if self.waagent_provisions else 'does not provision'})")
        return out


def read_agents(fs: FileReader) -> Agents:
    cfg = fs.read_text(CLOUD_CFG)
    datasources: list[str] | None = None
    source = ""
    if cfg is not None:
        datasources = datasource_list(cfg)
        source = CLOUD_CFG if datasources is not None else ""
        for name in sorted(fs.listdir(CLOUD_CFG_D) or {}):
            if not name.endswith(".cfg"):
                continue  # cloud-init reads only *.cfg there
            found = datasource_list(fs.read_text(f"{CLOUD_CFG_D}/{name}") or "")
            if found is not None:
                datasources, source = found, f"{CLOUD_CFG_D}/{name}"
    conf = fs.read_text(WAAGENT_CONF)
    settings = waagent_settings(conf or "")
    disabled = fs.entry(CLOUD_DISABLED) is not None
    cloud_init_runs = cfg is not None and not disabled
    agent = settings.get("Provisioning.Agent", "").lower()
    if agent:
        provisions = agent == "waagent" or (agent == "auto" and not cloud_init_runs)
        setting = f"Provisioning.Agent={agent}"
    elif "Provisioning.Enabled" in settings:
        provisions = settings["Provisioning.Enabled"].lower().startswith("y") and \
            not settings.get("Provisioning.UseCloudInit", "n").lower().startswith("y")
        setting = f"Provisioning.Enabled={settings['Provisioning.Enabled']}"
    else:
        provisions = not cloud_init_runs  # the agent's default is auto
        setting = "Provisioning.Agent unset (auto)"
    return Agents(
        cloud_init=cfg is not None, cloud_init_disabled=disabled,
        datasources=tuple(datasources) if datasources is not None else None, datasources_from=source,
        waagent=conf is not None, waagent_provisions=conf is not None and provisions, waagent_setting=setting,
    )  # fmt: skip


def decide(agents: Agents, label: str) -> Provisioning:
    """``nocloud`` when the source's cloud-init reads the seed; otherwise SourceError with the evidence."""
    evidence = tuple(agents.evidence())
    if agents.nocloud:
        return Provisioning("nocloud", "source files", evidence)
    if (agents.cloud_init and not agents.cloud_init_disabled) or agents.waagent_provisions:
        how = ("only the Azure way (its cloud-init reads only the Azure datasource, or waagent provisions "
               "from Azure's OVF environment)")
        raise SourceError(
            f"{label} provisions {how}: " + "; ".join(evidence)
            + ". localbuilder provisions build guests with a NoCloud seed, which this source would ignore, "
            "and cannot emulate Azure's provisioning yet",
            hint="Use a source whose cloud-init lists NoCloud (e.g. add /etc/cloud/cloud.cfg.d/"
            "91-localbuilder.cfg with 'datasource_list: [ NoCloud, Azure ]' to a copy of the image, then "
            "'localbuilder image add' it), or boot it anyway with --provisioning nocloud.",
        )
    raise SourceError(
        f"{label} has no agent that would provision it: " + "; ".join(evidence),
        hint="Nothing would create the build user. Install cloud-init in the image (or enable it), or "
        "boot it anyway with --provisioning nocloud.",
    )


# ---------------------------------------------------------------------------------------------------
# For a source image


def _cache_file(sha256: str) -> Path:
    return paths.cache_dir() / "provisioning" / f"{sha256}.json"


def for_source(image: Path, sha256: str, label: str, *, request: ProvisioningRequest,
               tcg: bool | None = None) -> Provisioning:
    """How the build guest of the Linux source ``image`` is provisioned (see the module docstring)."""
    if request is ProvisioningRequest.nocloud:
        return Provisioning("nocloud", "--provisioning nocloud")
    cache = _cache_file(sha256) if sha256 else None
    agents: Agents | None = None
    if cache is not None and cache.is_file():
        try:
            data = json.loads(cache.read_text())
            if data.get("version") == CACHE_VERSION:
                fields = dict(data["agents"])
                ds = fields.get("datasources")
                agents = Agents(**{**fields, "datasources": tuple(ds) if ds is not None else None})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("ignoring the provisioning cache %s: %s", cache, exc)
    if agents is None:
        with open_linux_root(image, tcg=tcg) as (fs, how):
            if fs is None:
                log.warning("cannot read %s offline (%s): booting it with the NoCloud seed without knowing "
                            "whether its cloud-init reads it", label, how)
                return Provisioning("nocloud", "unread", (how,))
            agents = read_agents(fs)
            log.debug("provisioning agents of %s (read with %s): %s", label, how, agents)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            record = {"version": CACHE_VERSION, "agents": dataclasses.asdict(agents)}
            tmp.write_text(json.dumps(record) + "\n")
            tmp.replace(cache)
    return decide(agents, label)
