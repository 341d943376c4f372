/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Helpers shared by the tree, the dump parser and the image writer. */
#pragma once

#include <limits.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include "cfs-writer.h"

#define CFS_XATTR_NAME_MAX 255 /* XATTR_NAME_MAX */
#define CFS_PATH_MAX 4096      /* PATH_MAX: payloads must be shorter */

/* Upstream's per-xattr cost estimate: entry header twice, minus one for the
 * worst-case alignment, plus the ibody header for the first one. */
#define CFS_XATTR_ENTRY_COST 4
#define CFS_XATTR_IBODY_COST 12

static inline bool cfs_mode_valid(uint32_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG:
	case S_IFDIR:
	case S_IFLNK:
	case S_IFBLK:
	case S_IFCHR:
	case S_IFSOCK:
	case S_IFIFO:
		return true;
	default:
		return false;
	}
}

static inline bool cfs_node_is_dir(const struct cfs_node *node)
{
	return (node->mode & S_IFMT) == S_IFDIR;
}

static inline bool cfs_has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Replace the payload (NULL clears it).  -ENAMETOOLONG if >= PATH_MAX. */
int cfs_node_set_payload(struct cfs_node *node, const char *payload);
/* Replace inline content and set size to @len (len 0 clears content).
 * -EINVAL above CFS_INLINE_CONTENT_MAX. */
int cfs_node_set_content(struct cfs_node *node, const void *data, size_t len);
/* Remove an xattr by name.  -ENODATA if absent. */
int cfs_node_unset_xattr(struct cfs_node *node, const char *key);

/* malloc'ed printf, NULL on ENOMEM. */
char *cfs_strdup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
