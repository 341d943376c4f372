#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Runs inside a container booted with systemd (tests/test_systemd.py), as
# the oneshot cfs-check.service: it starts and stops the installed units and
# fstab mounts and writes what it saw, one "key=value" per line, to
# /results/facts; the test on the host asserts on them.  Nothing here
# decides pass or fail.
#
# Set up by the test: /srv/demo.cfs and its store /srv/objects (with stored
# trees), /etc/composefs-fuse/{demo,bad}.conf, the user cfsuser with its own
# copy of the store without stored trees in ~/objects, its
# ~/.config/composefs-fuse/demo.conf, and /etc/fstab lines for /srv/fstab
# (root) and ~cfsuser/fstab (user).  /srv/expected holds the sha256 of
# /data in the image.

R=/results/facts
U=cfsuser
UHOME=/home/$U
UID_=$(id -u $U)

fact() { printf '%s=%s\n' "$1" "$2" >>"$R"; }
mounts() { awk -v m="$1" '$5 == m' /proc/self/mountinfo | wc -l; }
sha() { sha256sum | cut -c1-64; }
# Wait up to 20 s for a unit to be active again after N restarts.
wait_restarted() {
	i=0
	while [ $i -lt 200 ]; do
		if [ "$($1 show -P NRestarts "$2")" -ge 1 ] 2>/dev/null &&
			[ "$($1 show -P ActiveState "$2")" = active ]; then
			return 0
		fi
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}
as_user() { runuser -u $U -- env XDG_RUNTIME_DIR=/run/user/$UID_ "$@"; }
usysctl() { as_user systemctl --user "$@"; }

exec 2>>/results/trace
set -x
: >"$R"

# ---- the system unit
S=composefs-fuse@demo.service
systemctl start $S
fact sys_start_rc $?
# systemctl start returns once the service is ready (Type=notify)
fact sys_mounts_when_ready "$(mounts /srv/mnt)"
pid=$(systemctl show -P MainPID $S)
fact sys_same_mount_ns "$([ "$(readlink /proc/"$pid"/ns/mnt)" = "$(readlink /proc/self/ns/mnt)" ] && echo yes || echo no)"
fact sys_status "$(systemctl show -P StatusText $S)"
fact sys_read_root "$(sha </srv/mnt/data)"
fact sys_read_other_user "$(runuser -u $U -- sh -c 'sha256sum </srv/mnt/data' | cut -c1-64)"
fact sys_caps "$(grep CapBnd /proc/"$pid"/status | cut -f2)"
cat /srv/mnt/bad >/dev/null 2>/results/bad-read.err
fact sys_bad_read_rc $?
sleep 0.5
journalctl --sync
journalctl -b -u $S -p err -o cat --no-pager >/results/sys-err.log
journalctl -b -u $S -o cat --no-pager >/results/sys.log
fact sys_trees_in_unit_cache "$(find /var/cache/composefs-fuse -type f | wc -l)"
systemd-analyze security --no-pager $S >/results/security.txt 2>&1
fact sys_exposure "$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' /results/security.txt)"

systemctl kill -s KILL --kill-whom=main $S
wait_restarted systemctl $S
fact sys_restarted $?
fact sys_mounts_after_restart "$(mounts /srv/mnt)"
fact sys_read_after_restart "$(sha </srv/mnt/data)"
systemctl stop $S
fact sys_stop_rc $?
fact sys_mounts_after_stop "$(mounts /srv/mnt)"

# A start that cannot mount (wrong digest) fails, mounts nothing.
systemctl start composefs-fuse@bad.service
fact bad_start_rc $?
fact bad_mounts "$(mounts /srv/mnt-bad)"
journalctl --sync
journalctl -b -u composefs-fuse@bad.service -p err -o cat --no-pager >/results/bad-err.log

# ---- the user unit, in the user's own service manager
systemctl start user@"$UID_".service
fact user_manager_rc $?
journalctl -b -u user@"$UID_".service -o cat --no-pager >/results/user-manager.log
US=composefs-fuse-user@demo.service
usysctl start $US
fact user_start_rc $?
fact user_mounts_when_ready "$(mounts $UHOME/mnt)"
fact user_read "$(runuser -u $U -- sh -c "sha256sum <$UHOME/mnt/data" | cut -c1-64)"
fact user_status "$(usysctl show -P StatusText $US)"
usysctl kill -s KILL --kill-whom=main $US
wait_restarted usysctl $US
fact user_restarted $?
fact user_mounts_after_restart "$(mounts $UHOME/mnt)"
fact user_read_after_restart "$(runuser -u $U -- sh -c "sha256sum <$UHOME/mnt/data" | cut -c1-64)"
usysctl stop $US
fact user_stop_rc $?
fact user_mounts_after_stop "$(mounts $UHOME/mnt)"
journalctl --sync
journalctl -b --user-unit $US -o cat --no-pager >/results/user.log 2>&1
systemctl stop user@"$UID_".service

# ---- a .mount unit (what systemd-fstab-generator makes of an fstab line)
systemctl start srv-unit.mount
fact mount_unit_start_rc $?
fact mount_unit_mounts "$(mounts /srv/unit)"
fact mount_unit_read "$(sha </srv/unit/data)"
systemctl stop srv-unit.mount
fact mount_unit_stop_rc $?
fact mount_unit_mounts_after_stop "$(mounts /srv/unit)"
i=0
while pgrep -f '^[^ ]*composefs-fuse .*/srv/unit' >/dev/null && [ $i -lt 50 ]; do
	sleep 0.1
	i=$((i + 1))
done
pgrep -a -f 'composefs-fuse' >/results/daemons-left
fact mount_unit_daemons_left "$(pgrep -c -f '^[^ ]*composefs-fuse .*/srv/unit')"

# ---- fstab: root, then a "user" line mounted and unmounted by the user
mount /srv/fstab
fact fstab_root_mount_rc $?
fact fstab_root_read "$(sha </srv/fstab/data)"
fact fstab_root_source "$(awk '$5 == "/srv/fstab" { for (i = 7; $i != "-"; i++); print $(i + 2) }' /proc/self/mountinfo)"
umount /srv/fstab
fact fstab_root_umount_rc $?
fact fstab_root_mounts_after "$(mounts /srv/fstab)"

rootcache() { find /root/.cache /var/cache/composefs-fuse -type f 2>/dev/null | wc -l; }
fact root_trees_before_user "$(rootcache)"
runuser -u $U -- mount $UHOME/fstab 2>/results/fstab-user.err
fact fstab_user_mount_rc $?
fact fstab_user_owner "$(awk -v m=$UHOME/fstab '$5 == m' /proc/self/mountinfo | grep -o 'user_id=[0-9]*')"
fact fstab_user_read "$(runuser -u $U -- sh -c "sha256sum <$UHOME/fstab/data" | cut -c1-64)"
runuser -u $U -- umount $UHOME/fstab
fact fstab_user_umount_rc $?
fact fstab_user_mounts_after "$(mounts $UHOME/fstab)"
fact fstab_user_trees "$(find $UHOME/.cache/composefs-fuse -type f 2>/dev/null | wc -l)"
fact fstab_user_trees_owner "$(find $UHOME/.cache/composefs-fuse -type f -printf '%u\n' 2>/dev/null | sort -u | tr '\n' ' ')"
fact root_trees_after_user "$(rootcache)"

fact done yes
