/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The daemon's process around its mount, for main.c (lifecycle.c).
 */
#pragma once

#include <stddef.h>

/* Check @mnt before mounting: a directory we may mount on; a dead mount of
 * ours (its daemon died) is detached and replaced, anything else mounted
 * there is left alone.  Logs the reason; negative errno on failure. */
int cfsd_check_mountpoint(const char *mnt);

/* An ordinary user's auto_unmount: a child that runs fusermount3 -u -z on
 * @mnt once the daemon is gone and the mount is dead. */
int cfsd_start_unmount_watchdog(const char *mnt);

/* As root after mounting: keep only the capabilities still needed, and
 * no_new_privs. */
int cfsd_drop_privileges(void);

/* Raise the soft RLIMIT_NOFILE to the hard one; returns how many idle
 * objects the store may keep open within it with @max_threads workers. */
size_t cfsd_setup_fd_limit(unsigned max_threads);
