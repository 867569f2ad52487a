#!/bin/sh
# deprovision.sh — generalize a Linux build guest the way Azure VM Image Builder (AIB) means to, and
# power it off. localbuilder uploads it and runs it as root in ONE shell: sudo sh deprovision.sh USER
#
# Why a script and not AIB's one-liner: AIB appends a hidden last step to every Linux build,
#   /tmp/DeprovisioningScript.sh = waagent -force -deprovision+user && export HISTSIZE=0 && sync
# On Azure, waagent deletes the user named in /var/lib/waagent/ovf-env.xml (written by the platform).
# A local guest has no such file, so waagent prints "ovf-env.xml is not found. Skip delete user." and
# keeps the build user; it also leaves /var/lib/cloud, /etc/sudoers.d/90-cloud-init-users and
# /etc/machine-id alone (localbuilder docs, FACTS §4). This script supplies the minimal ovf-env.xml and
# the missing cleanups. Everything happens in this one root shell: once the sudoers file and the user
# are gone, no later `sudo` would work, so the power-off is scheduled from here too.
#
# Inputs:
#   $1                 the build user to delete, with its home (the SSH user localbuilder logged in as)
#   LB_NO_POWEROFF=1   do everything but the power-off (debugging)
# Output: one "deprovision: …" line per step on stdout; problems on stderr.
# Exit codes:
#   0  generalized; a power-off is scheduled ~1 s later, detached, so the SSH command can return first
#   2  usage: not run as root, or a missing/invalid user name
#   3  waagent -deprovision+user failed
#   4  the build user still exists after waagent and userdel
# Idempotency: each step accepts an already-clean state, so a second run (user gone, keys gone, no
# cloud-init state) succeeds and changes nothing but the power state.
# Standalone: POSIX sh, imports nothing from localbuilder.

set -u
# The SSH session starts in the build user's home, which step 2 deletes: every later program (waagent
# calls getcwd() at import and dies) would then run in a vanished directory.
cd / || exit 2

user="${1:-}"
say() { echo "deprovision: $*"; }
warn() { echo "deprovision: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    warn "must run as root (sudo sh $0 USER)"
    exit 2
fi
case "$user" in
    "" | -* | *[!a-z0-9_.-]*)
        warn "usage: $0 USER (a user name like 'packer'; got '$user')"
        exit 2
        ;;
esac

# 1. cloud-init: forget this instance so the first Azure boot runs as a new one (new host keys, user,
#    hostname). --logs also drops /var/log/cloud-init*.log, which hold the build's seed details.
if command -v cloud-init >/dev/null 2>&1; then
    cloud-init clean --logs && say "cloud-init clean --logs" || warn "cloud-init clean failed (continuing)"
fi

# 2. waagent, with the ovf-env.xml it needs to know which user to delete. The PlatformSettings section
#    must be present: without it waagent rejects the file ("ProvisionGuestAgent not found").
if command -v waagent >/dev/null 2>&1; then
    if id "$user" >/dev/null 2>&1; then
        mkdir -p /var/lib/waagent
        cat >/var/lib/waagent/ovf-env.xml <<EOF
<?xml version="1.0" encoding="utf-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:wa="http://schemas.microsoft.com/windowsazure">
  <wa:ProvisioningSection>
    <wa:Version>1.0</wa:Version>
    <LinuxProvisioningConfigurationSet xmlns="http://schemas.microsoft.com/windowsazure">
      <ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>
      <HostName>localhost</HostName>
      <UserName>$user</UserName>
      <DisableSshPasswordAuthentication>true</DisableSshPasswordAuthentication>
    </LinuxProvisioningConfigurationSet>
  </wa:ProvisioningSection>
  <wa:PlatformSettingsSection>
    <wa:Version>1.0</wa:Version>
    <PlatformSettings xmlns="http://schemas.microsoft.com/windowsazure">
      <ProvisionGuestAgent>true</ProvisionGuestAgent>
    </PlatformSettings>
  </wa:PlatformSettingsSection>
</Environment>
EOF
        chmod 600 /var/lib/waagent/ovf-env.xml
        mode="-deprovision+user"
    else
        # Already gone (second run): plain -deprovision still resets keys, leases and hostname.
        mode="-deprovision"
    fi
    if ! waagent -force "$mode"; then
        warn "waagent -force $mode failed"
        exit 3
    fi
    say "waagent -force $mode"
else
    warn "waagent is not installed: deleting the user and host keys without it"
fi

# 3. Belt and braces: the user must be gone whatever waagent did (-f: its SSH session still runs).
if id "$user" >/dev/null 2>&1; then
    userdel -f -r "$user" 2>/dev/null || userdel -f "$user"
fi
if id "$user" >/dev/null 2>&1; then
    warn "user $user still exists"
    exit 4
fi
rm -rf "/home/$user"
say "user $user deleted"

# 4. What neither waagent nor cloud-init clean removes.
rm -f /etc/sudoers.d/90-cloud-init-users /var/lib/waagent/ovf-env.xml /var/lib/waagent/provisioned
# An empty machine-id (not a missing one) makes systemd generate a fresh id on first boot.
if [ -e /etc/machine-id ]; then : >/etc/machine-id; fi
rm -f /var/lib/dbus/machine-id
rm -f /etc/ssh/ssh_host_*
say "removed cloud-init sudoers, machine-id, SSH host keys"

# 5. AIB's own tail, then our own traces.
export HISTSIZE=0
case "$0" in /tmp/*.sh) rm -f "$0" ;; esac # the uploaded copy of this script; never anything else
# The checkpoint marker (freeze.sh): which build checkpoint this guest was; no image keeps it.
rm -rf /var/lib/localbuilder
sync
say "done"

if [ "${LB_NO_POWEROFF:-0}" = 1 ]; then
    exit 0
fi
# Detached from this SSH session (setsid + nohup) so the command returns with its exit code before
# the guest goes down; `sleep 1` gives sshd time to send that exit status.
detach=""
if command -v setsid >/dev/null 2>&1; then detach=setsid; fi
$detach nohup sh -c 'sleep 1; systemctl poweroff || poweroff || shutdown -P now' >/dev/null 2>&1 </dev/null &
say "power-off scheduled"
exit 0
