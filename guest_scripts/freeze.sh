#!/bin/sh
# freeze.sh — quiesce a Linux build guest's filesystems while localbuilder cuts a checkpoint layer.
# localbuilder runs it as root through ONE held SSH command: sudo -n sh -c "<this text>" freeze HOLD MARK
#
# Why: a checkpoint's disk layer is cut by the hypervisor (QMP stop + blockdev-snapshot-sync). Without a
# freeze, the steps' latest writes may still sit in the guest's page cache: the layer alone then lacks
# them, and a build that boots it (no memory state: UEFI, a changed qemu, a damaged memory state) would
# silently lose customizations. fsfreeze (FIFREEZE) flushes every dirty page and the journal and blocks
# new writes, so the layer holds exactly the state after the step, and mounts without journal replay.
#
# Inputs:
#   $1  HOLD: seconds (guest time) to stay frozen at most if the host never releases us
#   $2  MARK: the checkpoint's id, written to /var/lib/localbuilder/checkpoint before the freeze; the
#       build reads it back after every resume to prove the guest is the state it expects. Deprovision
#       removes /var/lib/localbuilder (the image never keeps it; the offline inspection checks).
#   stdin: one line from the host = "the layer is cut, thaw now".
# Output (stdout): "frozen: MOUNTPOINT…; unfrozen: MOUNTPOINT…" once every freezable filesystem is
# frozen ("none" for an empty list; unfrozen: could not be frozen, e.g. vfat), then "thawed" — or
# "thawed: timeout" when HOLD ran out before the host's line came (the host then discards the layer).
# Exit codes: 0 thawed on the host's release; 3 thawed after HOLD ran out; 2 usage or marker not written.
# Idempotency: thawing an already thawed filesystem is ignored; the pid file in /run lets a later
# command (after a live resume, when this shell's SSH connection no longer exists) stop a stale holder.
# Standalone: POSIX sh + util-linux fsfreeze + coreutils timeout/head; imports nothing from localbuilder.

set -u
hold="${1:-}"
mark="${2:-}"
case "$hold" in "" | *[!0-9]*) echo "usage: freeze.sh HOLD MARK" >&2; exit 2 ;; esac
case "$mark" in "" | *[!0-9a-f]*) echo "usage: freeze.sh HOLD MARK (MARK: hex)" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "freeze.sh must run as root" >&2; exit 2; }

umask 077
mkdir -p /var/lib/localbuilder /run/localbuilder || exit 2
printf '%s\n' "$mark" > /var/lib/localbuilder/checkpoint.new &&
    mv -f /var/lib/localbuilder/checkpoint.new /var/lib/localbuilder/checkpoint || exit 2
echo $$ > /run/localbuilder/freeze.pid
sync

# Block-device filesystems, one mount point per device (a btrfs mounted twice is one superblock: the
# second freeze would fail with EBUSY). Deepest mount points first, so "/" is frozen last and thawed
# first. /proc/mounts escapes blanks as \040: the lists keep that form and printf %b decodes it at use.
mounts=$(awk '$1 ~ "^/dev/" && !seen[$1]++ { print $2 }' /proc/mounts | sort -r)
frozen=""
unfrozen=""
for m in $mounts; do
    if fsfreeze -f "$(printf '%b' "$m")" 2>/dev/null; then
        frozen="$m $frozen"
    else
        unfrozen="$unfrozen $m"  # vfat (an ESP), a read-only mount: synced above, nothing to freeze
    fi
done
echo "frozen: ${frozen:-none}; unfrozen: ${unfrozen:-none}"

# Wait for the host's line. Reading binaries from a frozen filesystem is fine; only writes block.
timeout "$hold" head -n 1 >/dev/null
waited=$?

for m in $frozen; do
    fsfreeze -u "$(printf '%b' "$m")" 2>/dev/null
done
rm -f /run/localbuilder/freeze.pid
if [ "$waited" -eq 124 ]; then
    echo "thawed: timeout"
    exit 3
fi
echo "thawed"
exit 0
