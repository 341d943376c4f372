/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Where the tools and the daemon keep a user's Merkle trees by default.
 * This is policy (the environment, the passwd entry), so it lives here,
 * beside the programs, and not in the cas/ library, which is given a
 * directory and reads no environment.
 */
#include "config.h"

#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfs-tools.h"

/* The home directory of the calling user: $HOME unless it is an existing
 * directory someone else owns (mount.fuse3 and sudo hand an ordinary user
 * HOME=/root), then the passwd entry's. */
static const char *own_home(char *buf, size_t size)
{
	const char *home = getenv("HOME");
	struct passwd pw, *res = NULL;
	struct stat st;

	if (home && home[0] == '/' && (stat(home, &st) < 0 || st.st_uid == geteuid()))
		return home;
	if (getpwuid_r(geteuid(), &pw, buf, size, &res) == 0 && res && res->pw_dir &&
	    res->pw_dir[0] == '/')
		return res->pw_dir;
	return home && home[0] == '/' ? home : NULL;
}

int cfs_tree_cache_default_dir(char **ret_dir)
{
	const char *xdg = getenv("XDG_CACHE_HOME"), *home;
	char *s = NULL, pwbuf[4096];

	/* XDG basedir spec: a relative XDG_CACHE_HOME is invalid, ignore it. */
	if (xdg && xdg[0] == '/') {
		if (asprintf(&s, "%s/composefs-fuse", xdg) < 0)
			return -ENOMEM;
	} else if ((home = own_home(pwbuf, sizeof(pwbuf)))) {
		if (asprintf(&s, "%s/.cache/composefs-fuse", home) < 0)
			return -ENOMEM;
	} else {
		return -ENOENT;
	}
	*ret_dir = s;
	return 0;
}
