/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Policy shared by the tools and the daemon (not by the libraries).
 */
#pragma once

/* $XDG_CACHE_HOME/composefs-fuse, else HOME/.cache/composefs-fuse
 * (malloc'ed), HOME being $HOME unless that is an existing directory
 * another user owns (mount.fuse3 sets HOME=/root), then the passwd
 * entry's home.  -ENOENT if no home is known. */
int cfs_tree_cache_default_dir(char **ret_dir);
