/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Helpers shared by the tree, its loaders (dump parser, directory scan,
 * image loader) and the image writer. */
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
/* cfs_node_set_xattr() with another budget than CFS_XATTR_EXTERNAL_MAX. */
#define CFS_XATTR_IMAGE_MAX UINT16_MAX /* upstream's budget for what an image holds */
int cfs_node_set_xattr_limit(struct cfs_node *node, const char *key, const void *value,
			     size_t len, size_t limit);
/* After changing node->xattrs other than through the calls above (renaming,
 * sorting): forget the index by name. */
void cfs_node_xattrs_changed(struct cfs_node *node);

/* Add @child at the end of @parent's children, as cfs_node_add_child()
 * does but without keeping them sorted nor looking for the name (no
 * -EEXIST): for loaders that meet many names out of order and sort once,
 * with cfs_node_sort_children() (-EEXIST if two children have one name). */
int cfs_node_append_child(struct cfs_node *parent, struct cfs_node *child, const char *name);
int cfs_node_sort_children(struct cfs_node *node);
/* A new hard link to @target: its mode, link_to set.  NULL on ENOMEM. */
struct cfs_node *cfs_node_new_link(struct cfs_node *target);

/* The first node met for each inode, for hard links: keyed by (device,
 * inode number) when scanning, by (0, nid) when loading an image.  Open
 * addressing, at most half full. */
struct cfs_node_table_slot {
	uint64_t a, b;
	struct cfs_node *node;
};
struct cfs_node_table {
	struct cfs_node_table_slot *slots;
	size_t n_slots, n_used;
};
struct cfs_node *cfs_node_table_find(const struct cfs_node_table *t, uint64_t a, uint64_t b);
/* Remember @node for a key not in the table yet.  0 or -ENOMEM. */
int cfs_node_table_add(struct cfs_node_table *t, uint64_t a, uint64_t b, struct cfs_node *node);
void cfs_node_table_clear(struct cfs_node_table *t);

/* malloc'ed printf, NULL on ENOMEM. */
char *cfs_strdup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
