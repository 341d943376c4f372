/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Private interface between the image reader (image.c) and the printers
 * built on it (dump-print.c).  Not for use outside format/.
 */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cfs-image.h"

/* Called for each raw xattr entry: @index is the EROFS name prefix index,
 * @suffix/@suffix_len the stored name (not NUL-terminated, may contain any
 * byte).  Same return convention as cfs_xattr_fn. */
typedef int (*cfs_raw_xattr_fn)(void *userdata, uint8_t index, const char *suffix,
				size_t suffix_len, const uint8_t *value, size_t value_len);

/* Inline entries first, then shared ones (the order of the kernel's
 * listxattr).  Entries are bounds-checked; names are not interpreted. */
int cfs_img_iterate_raw_xattrs(const struct cfs_image *img, const struct cfs_inode *ino,
			       cfs_raw_xattr_fn fn, void *userdata);

/* The name prefix of an EROFS xattr index, or NULL for an unknown index.
 * Index 0 has the empty prefix. */
const char *cfs_img_xattr_prefix(uint8_t index);

/* Like cfs_img_iterate_dir() but without rejecting names that contain '/'
 * or NUL (the dump printer reproduces upstream's handling of those). */
int cfs_img_iterate_dir_raw(const struct cfs_image *img, const struct cfs_inode *dir,
			    uint64_t cookie, cfs_dirent_fn fn, void *userdata);

/* How many directory entries a walk over the whole tree may meet before the
 * image must be sharing directory data between inodes (-EFSCORRUPTED). */
uint64_t cfs_img_dirent_budget(const struct cfs_image *img);

/* Record a description for cfs_img_error_detail() and return @err. */
int cfs_img_fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cfs_img_vfail(int err, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

/* Put "/NAME" at @at of the path buffer *@path (capacity *@cap), growing
 * it, and NUL-terminate it.  For the walks that keep one path buffer and
 * a stack of prefix lengths.  Returns 0 or -ENOMEM. */
static inline int cfs_path_append(char **path, size_t *cap, size_t at, const char *name,
				  size_t namelen)
{
	int r = cfs_grow(path, cap, at + namelen + 2, 1);

	if (r < 0)
		return r;
	(*path)[at] = '/';
	memcpy(*path + at + 1, name, namelen);
	(*path)[at + 1 + namelen] = '\0';
	return 0;
}
