/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Where everything of an image goes, as upstream mkcomposefs 1.0.8 lays it
 * out (see writer.c): inode numbers in breadth-first order of sorted
 * children, compact or extended inodes, the shared xattr area (an xattr
 * used by more than one inode, sorted by name, length and value, all
 * descending), and each inode's tail kept inside one block, with
 * slot-aligned padding before the inode or moved out to a data block.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "writer-internal.h"

uint8_t cfs_writer_xattr_index(const char *key, const char **ret_suffix)
{
	static const struct {
		const char *prefix;
		uint8_t index;
	} prefixes[] = {
		{ "user.", EROFS_XATTR_INDEX_USER },
		{ "system.posix_acl_access", EROFS_XATTR_INDEX_POSIX_ACL_ACCESS },
		{ "system.posix_acl_default", EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT },
		{ "trusted.", EROFS_XATTR_INDEX_TRUSTED },
		{ "security.", EROFS_XATTR_INDEX_SECURITY },
	};

	for (size_t i = 0; i < ARRAY_SIZE(prefixes); i++) {
		if (cfs_has_prefix(key, prefixes[i].prefix)) {
			*ret_suffix = key + strlen(prefixes[i].prefix);
			return prefixes[i].index;
		}
	}
	*ret_suffix = key;
	return 0;
}

size_t cfs_writer_xattr_entry_size(const struct cfs_xattr *x)
{
	const char *suffix;

	cfs_writer_xattr_index(x->key, &suffix);
	return erofs_xattr_entry_size((unsigned)strlen(suffix), x->value_len);
}

static int cmp_xattr_key(const void *a, const void *b)
{
	return strcmp(((const struct cfs_xattr *)a)->key, ((const struct cfs_xattr *)b)->key);
}

int cfs_writer_order(struct wctx *w)
{
	struct cfs_node *tail = w->root, *node;
	uint32_t index = 0;

	w->root->w_next = NULL;
	w->min_mtime_sec = w->root->mtime_sec;
	w->min_mtime_nsec = w->root->mtime_nsec;
	w->has_acl = false;

	for (node = w->root; node; node = node->w_next, index++) {
		if (!cfs_node_is_dir(node) && node->n_children)
			return -EINVAL;
		if (cfs_node_is_dir(node)) {
			uint32_t n = 2;
			for (size_t i = 0; i < node->n_children; i++)
				if (cfs_node_is_dir(node->children[i]))
					n++;
			node->nlink = n;
		}
		if (node->n_xattrs > 1) {
			qsort(node->xattrs, node->n_xattrs, sizeof(*node->xattrs), cmp_xattr_key);
			cfs_node_xattrs_changed(node);
		}
		if (node->mtime_sec < w->min_mtime_sec ||
		    (node->mtime_sec == w->min_mtime_sec && node->mtime_nsec < w->min_mtime_nsec)) {
			w->min_mtime_sec = node->mtime_sec;
			w->min_mtime_nsec = node->mtime_nsec;
		}
		node->w_ino = index;
		if (cfs_node_get_xattr(node, "system.posix_acl_access") ||
		    cfs_node_get_xattr(node, "system.posix_acl_default"))
			w->has_acl = true;
		for (size_t i = 0; i < node->n_children; i++) {
			struct cfs_node *child = node->children[i];
			if (child->link_to) {
				if (!cfs_node_follow(child))
					return -ELOOP;
				continue;
			}
			child->w_next = NULL;
			tail->w_next = child;
			tail = child;
		}
	}
	w->n_inodes = index;
	return 0;
}

/* Upstream's canonical order of the shared area: name, then value length,
 * then value bytes, all descending. */
static int cmp_xattr_shared(const void *a, const void *b)
{
	const struct cfs_xattr *x = *(const struct cfs_xattr *const *)a;
	const struct cfs_xattr *y = *(const struct cfs_xattr *const *)b;
	int c = strcmp(y->key, x->key);

	if (c)
		return c;
	if (x->value_len != y->value_len)
		return (int)y->value_len - (int)x->value_len;
	return memcmp(y->value, x->value, x->value_len);
}

int cfs_writer_share_xattrs(struct wctx *w)
{
	_cleanup_free_ struct cfs_xattr **all = NULL;
	size_t n = 0, k = 0;
	uint64_t off = 0;

	for (struct cfs_node *node = w->root; node; node = node->w_next)
		n += node->n_xattrs;
	all = calloc(n ? n : 1, sizeof(*all));
	w->shared = calloc(n ? n : 1, sizeof(*w->shared));
	if (!all || !w->shared)
		return -ENOMEM;
	for (struct cfs_node *node = w->root; node; node = node->w_next)
		for (size_t i = 0; i < node->n_xattrs; i++)
			all[k++] = &node->xattrs[i];
	qsort(all, n, sizeof(*all), cmp_xattr_shared);

	/* Equal (name, value) pairs are now adjacent: a run longer than one
	 * is shared, and every member records the offset of the entry. */
	for (size_t i = 0; i < n;) {
		size_t j = i + 1;
		while (j < n && cmp_xattr_shared(&all[i], &all[j]) == 0)
			j++;
		if (j - i > 1) {
			w->shared[w->n_shared++] = all[i];
			for (size_t m = i; m < j; m++)
				all[m]->shared_off = (int64_t)off;
			off += cfs_writer_xattr_entry_size(all[i]);
		} else {
			all[i]->shared_off = -1;
		}
		i = j;
	}
	w->shared_size = off;

	/* An inode references at most 128 shared xattrs (in name order);
	 * the rest stay inline. */
	for (struct cfs_node *node = w->root; node; node = node->w_next) {
		unsigned n_shared = 0;
		for (size_t i = 0; i < node->n_xattrs; i++) {
			struct cfs_xattr *x = &node->xattrs[i];
			if (x->shared_off >= 0 && n_shared < EROFS_XATTR_LONG_PREFIX)
				n_shared++;
			else
				x->shared_off = -1;
		}
	}
	return 0;
}

void cfs_writer_xattr_counts(const struct cfs_node *node, size_t *ret_shared,
			     size_t *ret_inline_size)
{
	size_t ns = 0, sz = 0;

	for (size_t i = 0; i < node->n_xattrs; i++) {
		if (node->xattrs[i].shared_off >= 0)
			ns++;
		else
			sz += cfs_writer_xattr_entry_size(&node->xattrs[i]);
	}
	*ret_shared = ns;
	*ret_inline_size = sz;
}

uint32_t cfs_writer_xattr_ibody_size(size_t n_shared, size_t inline_size)
{
	if (n_shared == 0 && inline_size == 0)
		return 0;
	return (uint32_t)round_up_u64(sizeof(struct erofs_disk_xattr_ibody_header) + n_shared * 4 +
				      inline_size, 4);
}

static void dir_size(struct cfs_node *node)
{
	uint32_t n_blocks = 0;
	size_t used = 0;

	for (size_t i = 0; i < node->n_children; i++) {
		size_t len = sizeof(struct erofs_disk_dirent) + strlen(node->children[i]->name);
		if (used + len > CFS_BLKSZ) {
			n_blocks++;
			used = 0;
		}
		used += len;
	}
	/* Never inline more than half a block. */
	if (used > CFS_BLKSZ / 2) {
		n_blocks++;
		used = 0;
	}
	node->w_n_blocks = n_blocks;
	node->w_tailsize = (uint32_t)used;
}

static void data_size(struct cfs_node *node)
{
	switch (node->mode & S_IFMT) {
	case S_IFDIR:
		dir_size(node);
		return;
	case S_IFLNK:
		node->w_n_blocks = 0;
		node->w_tailsize = (uint32_t)strlen(node->payload ? node->payload : "");
		return;
	case S_IFREG:
		if (node->size == 0)
			break;
		if (node->content) {
			node->w_n_blocks = (uint32_t)(node->size / CFS_BLKSZ);
			node->w_tailsize = (uint32_t)(node->size % CFS_BLKSZ);
			if (node->w_tailsize > CFS_BLKSZ / 2) {
				node->w_n_blocks++;
				node->w_tailsize = 0;
			}
		} else {
			unsigned bits;
			uint64_t count;
			cfs_writer_chunking(node->size, &bits, &count);
			node->w_n_blocks = 0;
			node->w_tailsize = (uint32_t)(count * sizeof(uint32_t));
		}
		return;
	}
	node->w_n_blocks = 0;
	node->w_tailsize = 0;
}

static uint64_t inode_data_size(const struct cfs_node *node)
{
	if (cfs_node_is_dir(node))
		return (uint64_t)node->w_n_blocks * CFS_BLKSZ + node->w_tailsize;
	return node->size;
}

static bool fits_compact(const struct wctx *w, const struct cfs_node *node)
{
	return node->mtime_sec == w->min_mtime_sec && node->mtime_nsec == w->min_mtime_nsec &&
	       node->nlink <= UINT16_MAX && node->uid <= UINT16_MAX && node->gid <= UINT16_MAX &&
	       inode_data_size(node) <= UINT32_MAX;
}

/* Padding before an inode at @pos so that its tail does not cross a block
 * boundary; may move the tail out to a data block instead. */
static uint64_t tail_padding(struct cfs_node *node, uint64_t pos, size_t isize, size_t xsize)
{
	size_t head = isize + xsize, total = head + node->w_tailsize;
	uint64_t room, pad;

	if ((node->mode & S_IFMT) == S_IFLNK) {
		/* Symlinks keep the inode and its target in one block;
		 * a target that cannot fit goes to a data block. */
		if (total / CFS_BLKSZ > 0) {
			node->w_n_blocks++;
			node->w_tailsize = 0;
		}
		if (pos / CFS_BLKSZ != (pos + total - 1) / CFS_BLKSZ)
			return round_up_u64(pos, CFS_BLKSZ) - pos;
		return 0;
	}
	room = CFS_BLKSZ - (pos + head) % CFS_BLKSZ;
	if (room >= node->w_tailsize)
		return 0;
	pad = round_up_u64(room, SLOTSZ);
	room = CFS_BLKSZ - (pos + head + pad) % CFS_BLKSZ;
	if (node->w_tailsize <= room)
		return pad;
	node->w_n_blocks++;
	node->w_tailsize = 0;
	return round_up_u64(pos, CFS_BLKSZ) - pos;
}

void cfs_writer_place_inodes(struct wctx *w)
{
	uint64_t pos = EROFS_SUPER_OFFSET + sizeof(struct erofs_disk_super);

	w->n_data_blocks = 0;
	for (struct cfs_node *node = w->root; node; node = node->w_next) {
		size_t n_shared, inline_size, isize;
		uint64_t start;

		data_size(node);
		node->w_compact = fits_compact(w, node);
		isize = node->w_compact ? sizeof(struct erofs_disk_inode_compact) :
					  sizeof(struct erofs_disk_inode_extended);
		cfs_writer_xattr_counts(node, &n_shared, &inline_size);
		node->w_xattr_size = cfs_writer_xattr_ibody_size(n_shared, inline_size);

		start = round_up_u64(pos, SLOTSZ);
		start += tail_padding(node, start, isize, node->w_xattr_size);
		node->w_ipad = (uint32_t)(start - pos);
		node->w_isize = (uint32_t)(isize + node->w_xattr_size + node->w_tailsize);
		w->n_data_blocks += node->w_n_blocks;
		node->w_nid = start / SLOTSZ; /* metadata starts at block 0 */
		pos = start + node->w_isize;
	}
	w->inodes_end = round_up_u64(pos, SLOTSZ);
}
