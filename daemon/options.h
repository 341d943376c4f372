/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * composefs-fuse's options, for main.c (options.c).
 */
#pragma once

#include "cfsd.h"

struct cfsd_options {
	char *source;
	char *basedir;
	char *digest;
	char *verity;
	char *passthrough;
	char *tree_cache;
	char *tree_cache_size;
	char *io;
	char *stats_file;
	char *timeout;
	char *threads;
	char *xattrs;
	char *signature;
	char *cert;
	char *uring;
	int noauto_unmount;
	int keep_caps;
	int private_mount;
	/* Upstream's names: mount.composefs (verity, tryverity) and cfs-fuse
	 * (noacl); the overlay-only ones are refused with a reason. */
	int verity_flag, tryverity_flag, noacl;
	char *upperdir, *workdir, *idmap;
	char *positional[3];
	int n_positional;
	int help, version;
};

/* The -o table and its fuse_opt_parse() callback (positional arguments,
 * -h and -V). */
extern const struct fuse_opt cfsd_opts[];
int cfsd_opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs);
void cfsd_usage(const char *prog);

/* Check and convert the options into @d and @co; logs the reason and
 * returns -EINVAL for a bad value. */
int cfsd_apply_options(const struct cfsd_options *o, struct cfsd *d, struct cfs_cas_options *co);

/* basedir= with every directory resolved (absolute, ':'-joined, malloc'ed);
 * a missing one, or an empty name, is logged and an error. */
int cfsd_resolve_basedirs(const char *list, char **ret_list);
/* @path made absolute against the current directory (malloc'ed). */
char *cfsd_absolute_path(const char *path);
/* The default tree cache directory (see options.c); *ret_dir NULL for
 * none. */
int cfsd_default_tree_cache(char **ret_dir);
