/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Helpers shared by the tree, its loaders (dump parser, directory scan,
 * image loader) and the image writer, and the writer's own. */
#pragma once

#include <limits.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include "cfs-image.h" /* CFS_BLKSZ */
#include "cfs-writer.h"
#include "erofs-disk.h"

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

/* ---- the image writer's own (writer.c, writer-layout.c, writer-emit.c) -- */

#define SLOTSZ EROFS_SLOTSIZE

static inline uint64_t round_up_u64(uint64_t x, uint64_t a)
{
	return (x + a - 1) & ~(a - 1);
}

static inline bool cfs_writer_is_external(const struct cfs_node *node)
{
	return (node->mode & S_IFMT) == S_IFREG && node->size > 0 && !node->content;
}

static inline unsigned cfs_ilog2_u64(uint64_t v)
{
	return v ? 63 - (unsigned)__builtin_clzll(v) : 0;
}

/* Chunk size (log2) and number of chunks of an external file: as few
 * chunks as possible, at least one block each, at most 2^31 blocks. */
static inline void cfs_writer_chunking(uint64_t size, unsigned *ret_bits, uint64_t *ret_count)
{
	unsigned bits = cfs_ilog2_u64(size - 1) + 1;

	if (bits < CFS_BLKSZ_BITS)
		bits = CFS_BLKSZ_BITS;
	if (bits - CFS_BLKSZ_BITS > EROFS_CHUNK_FORMAT_BLKBITS_MASK)
		bits = EROFS_CHUNK_FORMAT_BLKBITS_MASK + CFS_BLKSZ_BITS;
	*ret_bits = bits;
	/* Wraps for sizes near 2^64 exactly as upstream's DIV_ROUND_UP. */
	*ret_count = (size + (UINT64_C(1) << bits) - 1) >> bits;
}

/* One cfs_write_image() call. */
struct wctx {
	const struct cfs_write_options *opts;
	uint32_t version;
	struct cfs_node *root;
	uint64_t n_inodes;
	int64_t min_mtime_sec;
	uint32_t min_mtime_nsec;
	bool has_acl;

	struct cfs_xattr **shared; /* the shared xattr area, in order */
	size_t n_shared;
	uint64_t shared_size;

	uint64_t inodes_end;
	uint64_t n_data_blocks;
	uint64_t data_next; /* next free data block byte offset while writing inodes */

	uint64_t written;
	uint8_t *buf; /* output buffer, flushed to opts->write */
	size_t buf_len;
};

/* The EROFS name index the writer uses for @key, and the rest of the name. */
uint8_t cfs_writer_xattr_index(const char *key, const char **ret_suffix);
size_t cfs_writer_xattr_entry_size(const struct cfs_xattr *x);
/* Shared xattr references and the size of the inline entries of @node. */
void cfs_writer_xattr_counts(const struct cfs_node *node, size_t *ret_shared,
			     size_t *ret_inline_size);
uint32_t cfs_writer_xattr_ibody_size(size_t n_shared, size_t inline_size);

/* Layout (writer-layout.c), on the rewritten tree: the inodes in
 * breadth-first order (w_next, w_ino; -EINVAL, -ELOOP), the shared xattr
 * area (-ENOMEM), then each inode's size, padding and nid. */
int cfs_writer_order(struct wctx *w);
int cfs_writer_share_xattrs(struct wctx *w);
void cfs_writer_place_inodes(struct wctx *w);
/* Emitting (writer-emit.c): the whole image through opts->write. */
int cfs_writer_emit(struct wctx *w);
