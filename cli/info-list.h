/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The `composefs-info ls` and `objects` views of a tree loaded from an
 * image (cfs_tree_from_image()), with upstream composefs 1.0.8's output.
 */
#pragma once

#include <stdio.h>

#include "cfs-writer.h"

/* One line per entry below the root: its path, "/" after a directory,
 * "-> TARGET" after a symlink, "@ BACKING" after an external file (a hard
 * link only has its path).  -EIO on a write error of @out, -ENOMEM. */
int cfs_info_print_ls(const struct cfs_node *root, FILE *out);

/* Calls @fn for each regular file's backing path (its payload: the redirect
 * without its leading '/'), in tree order, duplicates included.  Return 0
 * from @fn to continue, > 0 to stop (returned as is), < 0 to abort with
 * that error. */
typedef int (*cfs_info_object_fn)(void *userdata, const char *path);
int cfs_info_list_objects(const struct cfs_node *root, cfs_info_object_fn fn, void *userdata);
