/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Serialise a node tree as a composefs image: a composefs header, an EROFS
 * superblock, the inodes in breadth-first order (each with its xattrs and an
 * inline tail), the shared xattrs, then the data blocks.  Every layout choice
 * below reproduces upstream mkcomposefs 1.0.8 (libcomposefs
 * lcfs-writer-erofs.c) so that the same input gives the same bytes:
 *
 *  - the tree gets the overlay xattrs (metacopy/redirect, escaped
 *    trusted.overlay.*, whiteouts), "." and "..", an opaque root and 256
 *    whiteouts 00..ff in the root before anything is laid out;
 *  - inodes are numbered in breadth-first order of sorted children; an
 *    inode is compact when its mtime is the minimum of the tree and its
 *    nlink/uid/gid/size fit the compact fields, else extended;
 *  - an xattr (name and value) used by more than one inode is shared; the
 *    shared area is sorted by name, length and value, all descending;
 *  - tails (directory entries, symlink targets, inline content, chunk
 *    tables) stay inside one block, with slot-aligned padding before the
 *    inode when needed, and go to a data block when they cannot.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "erofs-disk.h"
#include "cfs-image.h"
#include "writer-internal.h"

#define BLKSZ 4096U
#define BLKSZ_BITS 12
#define SLOTSZ EROFS_SLOTSIZE

static inline uint64_t round_up_u64(uint64_t x, uint64_t a)
{
	return (x + a - 1) & ~(a - 1);
}

/* ---- xattr names --------------------------------------------------------- */

/* The EROFS name index the writer uses for @key, and the rest of the name. */
static uint8_t xattr_index(const char *key, const char **ret_suffix)
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

static size_t xattr_entry_size(const struct cfs_xattr *x)
{
	const char *suffix;

	xattr_index(x->key, &suffix);
	return erofs_xattr_entry_size((unsigned)strlen(suffix), x->value_len);
}

/* ---- the writer context -------------------------------------------------- */

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

#define WBUF_SIZE (256 * 1024)

static int out_flush(struct wctx *w)
{
	int r = 0;

	if (w->buf_len > 0)
		r = w->opts->write(w->opts->userdata, w->buf, w->buf_len);
	w->buf_len = 0;
	return r;
}

static int out_write(struct wctx *w, const void *data, size_t len)
{
	const uint8_t *p = data;

	w->written += len;
	while (len > 0) {
		size_t n = WBUF_SIZE - w->buf_len;
		if (n > len)
			n = len;
		if (p)
			memcpy(w->buf + w->buf_len, p, n);
		else
			memset(w->buf + w->buf_len, 0, n);
		w->buf_len += n;
		if (p)
			p += n;
		len -= n;
		if (w->buf_len == WBUF_SIZE) {
			int r = out_flush(w);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

static int out_zero(struct wctx *w, size_t len)
{
	return out_write(w, NULL, len);
}

static int out_align(struct wctx *w, uint64_t align)
{
	return out_zero(w, (size_t)(round_up_u64(w->written, align) - w->written));
}

/* ---- tree rewriting (overlay xattrs, whiteouts, "." and "..") ---------- */

static bool is_whiteout(const struct cfs_node *node)
{
	return (node->mode & S_IFMT) == S_IFCHR && node->rdev == 0;
}

static bool is_external(const struct cfs_node *node)
{
	return (node->mode & S_IFMT) == S_IFREG && node->size > 0 && !node->content;
}

static unsigned ilog2_u64(uint64_t v)
{
	return v ? 63 - (unsigned)__builtin_clzll(v) : 0;
}

/* Chunk size (log2) and number of chunks of an external file: as few
 * chunks as possible, at least one block each, at most 2^31 blocks. */
static void chunking(uint64_t size, unsigned *ret_bits, uint64_t *ret_count)
{
	unsigned bits = ilog2_u64(size - 1) + 1;

	if (bits < BLKSZ_BITS)
		bits = BLKSZ_BITS;
	if (bits - BLKSZ_BITS > EROFS_CHUNK_FORMAT_BLKBITS_MASK)
		bits = EROFS_CHUNK_FORMAT_BLKBITS_MASK + BLKSZ_BITS;
	*ret_bits = bits;
	/* Wraps for sizes near 2^64 exactly as upstream's DIV_ROUND_UP. */
	*ret_count = (size + (UINT64_C(1) << bits) - 1) >> bits;
}

/* Pick the format version; also restart every node's xattr budget from
 * zero, as upstream does (its writer works on a copy of the tree that does
 * not carry the budget over), so that the xattrs the writer adds are
 * accepted or refused exactly as upstream. */
static int update_version(void *userdata, struct cfs_node *node, const char *path)
{
	struct wctx *w = userdata;

	if (node->link_to)
		return 0;
	node->xattr_budget = 0;
	if (w->version < 1 && w->opts->max_version >= 1 && is_whiteout(node))
		w->version = 1;
	return 0;
}

static int add_overlay_xattrs(struct wctx *w, struct cfs_node *node)
{
	int r;

	/* Escape the tree's own trusted.overlay.* xattrs: overlayfs would
	 * otherwise interpret them. */
	for (size_t i = 0; i < node->n_xattrs; i++) {
		struct cfs_xattr *x = &node->xattrs[i];
		if (!cfs_has_prefix(x->key, CFS_OVL_PREFIX))
			continue;
		char *k = cfs_strdup_printf(CFS_OVL_ESCAPED_PREFIX "%s", x->key + strlen(CFS_OVL_PREFIX));
		if (!k)
			return -ENOMEM;
		free(x->key);
		x->key = k;
		cfs_node_xattrs_changed(node);
	}

	if (is_external(node)) {
		uint8_t mc[4 + CFS_DIGEST_SIZE];
		size_t mc_len = 0;

		if (node->digest_set) {
			mc_len = sizeof(mc);
			mc[0] = 0;              /* version */
			mc[1] = (uint8_t)mc_len;
			mc[2] = 0;              /* flags */
			mc[3] = 1;              /* FS_VERITY_HASH_ALG_SHA256 */
			memcpy(mc + 4, node->digest, CFS_DIGEST_SIZE);
		}
		r = cfs_node_set_xattr(node, CFS_OVL_METACOPY, mc, mc_len);
		if (r < 0)
			return r;
		if (node->payload && node->payload[0]) {
			_cleanup_free_ char *redirect = cfs_strdup_printf("/%s", node->payload);
			if (!redirect)
				return -ENOMEM;
			r = cfs_node_set_xattr(node, CFS_OVL_REDIRECT, redirect, strlen(redirect));
			if (r < 0)
				return r;
		}
	}

	if (is_whiteout(node) && node->parent) {
		struct cfs_node *parent = node->parent;

		/* Keep the whiteout as an escaped one: a plain file that
		 * overlayfs presents as a whiteout. */
		node->size = 0;
		node->mode = S_IFREG | (node->mode & ~(uint32_t)S_IFMT);
		if ((r = cfs_node_set_xattr(node, CFS_OVL_ESCAPED_PREFIX "whiteout", "", 0)) < 0 ||
		    (r = cfs_node_set_xattr(node, "user.overlay.whiteout", "", 0)) < 0 ||
		    (r = cfs_node_set_xattr(parent, CFS_OVL_ESCAPED_PREFIX "whiteouts", "", 0)) < 0 ||
		    (r = cfs_node_set_xattr(parent, "user.overlay.whiteouts", "", 0)) < 0)
			return r;
		if (w->version >= 1) {
			if ((r = cfs_node_set_xattr(parent, CFS_OVL_ESCAPED_PREFIX "opaque", "x", 1)) < 0 ||
			    (r = cfs_node_set_xattr(parent, "user.overlay.opaque", "x", 1)) < 0)
				return r;
		}
	}
	return 0;
}

static int add_link(struct cfs_node *dir, const char *name, struct cfs_node *target)
{
	struct cfs_node *link;
	int r;

	if (cfs_node_lookup_child(dir, name))
		return 0;
	link = cfs_node_new();
	if (!link)
		return -ENOMEM;
	link->mode = 0; /* only a directory entry */
	link->link_to = target;
	r = cfs_node_add_child(dir, link, name);
	if (r < 0)
		cfs_node_free(link);
	return r;
}

static int node_error(struct wctx *w, const struct cfs_node *node, int r)
{
	if (w->opts->ret_error_path && !*w->opts->ret_error_path)
		*w->opts->ret_error_path = cfs_node_path(node);
	return r;
}

/* Check one node and add what overlayfs needs to it; "." and ".." to a
 * directory, before its children are walked. */
static int rewrite_node(void *userdata, struct cfs_node *node, const char *path)
{
	struct wctx *w = userdata;
	struct cfs_node *parent = node == w->root ? node : node->parent;
	int r;

	if (node->name && strchr(node->name, '/'))
		return node_error(w, node, -EINVAL);
	if (node->link_to) {
		const struct cfs_node *t = cfs_node_follow(node);

		/* Only the writer's own "." and ".." name a directory twice. */
		if (t && cfs_node_is_dir(t) && strcmp(node->name, ".") != 0 &&
		    strcmp(node->name, "..") != 0)
			return node_error(w, node, -EINVAL);
		return 0;
	}
	if (!cfs_mode_valid(node->mode) || (!cfs_node_is_dir(node) && node->n_children))
		return node_error(w, node, -EINVAL);
	if (node->payload && strlen(node->payload) >= CFS_PATH_MAX)
		return node_error(w, node, -ENAMETOOLONG);
	if (is_external(node)) {
		unsigned bits;
		uint64_t count;
		chunking(node->size, &bits, &count);
		if (count > CFS_MAX_NONINLINE_CHUNKS)
			return node_error(w, node, -EFBIG);
	}
	r = add_overlay_xattrs(w, node);
	if (r < 0)
		return node_error(w, node, r);
	if (!cfs_node_is_dir(node))
		return 0;
	if ((r = add_link(node, ".", node)) < 0 || (r = add_link(node, "..", parent)) < 0)
		return r;
	return 0;
}

/* 256 whiteouts "00".."ff" in the root hide the object store's
 * subdirectories when the store is used as a plain lower layer. */
static int add_root_whiteouts(struct cfs_node *root)
{
	static const char hex[] = "0123456789abcdef";
	const struct cfs_xattr *selinux = cfs_node_get_xattr(root, "security.selinux");
	int r;

	for (unsigned i = 0; i < 256; i++) {
		char name[3] = { hex[i >> 4], hex[i & 15], '\0' };
		struct cfs_node *child;

		if (cfs_node_lookup_child(root, name))
			continue;
		child = cfs_node_new();
		if (!child)
			return -ENOMEM;
		child->mode = S_IFCHR | 0644;
		child->rdev = 0;
		child->uid = root->uid;
		child->gid = root->gid;
		child->mtime_sec = root->mtime_sec;
		child->mtime_nsec = root->mtime_nsec;
		if (selinux) {
			r = cfs_node_set_xattr(child, selinux->key, selinux->value, selinux->value_len);
			if (r < 0) {
				cfs_node_free(child);
				return r;
			}
		}
		r = cfs_node_add_child(root, child, name);
		if (r < 0) {
			cfs_node_free(child);
			return r;
		}
	}
	return 0;
}

/* ---- breadth-first order and inode facts -------------------------------- */

static int cmp_xattr_key(const void *a, const void *b)
{
	return strcmp(((const struct cfs_xattr *)a)->key, ((const struct cfs_xattr *)b)->key);
}

static int compute_tree(struct wctx *w)
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

static int compute_shared_xattrs(struct wctx *w)
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
			off += xattr_entry_size(all[i]);
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

static void xattr_counts(const struct cfs_node *node, size_t *ret_shared, size_t *ret_inline_size)
{
	size_t ns = 0, sz = 0;

	for (size_t i = 0; i < node->n_xattrs; i++) {
		if (node->xattrs[i].shared_off >= 0)
			ns++;
		else
			sz += xattr_entry_size(&node->xattrs[i]);
	}
	*ret_shared = ns;
	*ret_inline_size = sz;
}

static uint32_t xattr_ibody_size(size_t n_shared, size_t inline_size)
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
		if (used + len > BLKSZ) {
			n_blocks++;
			used = 0;
		}
		used += len;
	}
	/* Never inline more than half a block. */
	if (used > BLKSZ / 2) {
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
			node->w_n_blocks = (uint32_t)(node->size / BLKSZ);
			node->w_tailsize = (uint32_t)(node->size % BLKSZ);
			if (node->w_tailsize > BLKSZ / 2) {
				node->w_n_blocks++;
				node->w_tailsize = 0;
			}
		} else {
			unsigned bits;
			uint64_t count;
			chunking(node->size, &bits, &count);
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
		return (uint64_t)node->w_n_blocks * BLKSZ + node->w_tailsize;
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
		if (total / BLKSZ > 0) {
			node->w_n_blocks++;
			node->w_tailsize = 0;
		}
		if (pos / BLKSZ != (pos + total - 1) / BLKSZ)
			return round_up_u64(pos, BLKSZ) - pos;
		return 0;
	}
	room = BLKSZ - (pos + head) % BLKSZ;
	if (room >= node->w_tailsize)
		return 0;
	pad = round_up_u64(room, SLOTSZ);
	room = BLKSZ - (pos + head + pad) % BLKSZ;
	if (node->w_tailsize <= room)
		return pad;
	node->w_n_blocks++;
	node->w_tailsize = 0;
	return round_up_u64(pos, BLKSZ) - pos;
}

static void compute_inodes(struct wctx *w)
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
		xattr_counts(node, &n_shared, &inline_size);
		node->w_xattr_size = xattr_ibody_size(n_shared, inline_size);

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

/* ---- output ---------------------------------------------------------------- */

static unsigned dirent_type(const struct cfs_node *node)
{
	switch (node->mode & S_IFMT) {
	case S_IFREG:
		return EROFS_FT_REG_FILE;
	case S_IFDIR:
		return EROFS_FT_DIR;
	case S_IFCHR:
		return EROFS_FT_CHRDEV;
	case S_IFBLK:
		return EROFS_FT_BLKDEV;
	case S_IFIFO:
		return EROFS_FT_FIFO;
	case S_IFSOCK:
		return EROFS_FT_SOCK;
	case S_IFLNK:
		return EROFS_FT_SYMLINK;
	default:
		return EROFS_FT_UNKNOWN;
	}
}

static int write_xattr_entry(struct wctx *w, const struct cfs_xattr *x)
{
	const char *suffix;
	uint8_t index = xattr_index(x->key, &suffix);
	size_t nlen = strlen(suffix);
	struct erofs_disk_xattr_entry e = {
		.e_name_len = (uint8_t)nlen,
		.e_name_index = index,
		.e_value_size = htole16(x->value_len),
	};
	int r;

	if ((r = out_write(w, &e, sizeof(e))) < 0 || (r = out_write(w, suffix, nlen)) < 0 ||
	    (r = out_write(w, x->value, x->value_len)) < 0)
		return r;
	return out_align(w, 4);
}

/* Directory entries children[first, first + n) as one unit, padded to @align. */
static int write_dirents(struct wctx *w, const struct cfs_node *dir, size_t first, size_t n,
			 uint64_t align)
{
	uint32_t nameoff = (uint32_t)(n * sizeof(struct erofs_disk_dirent));
	int r;

	for (size_t i = first; i < first + n; i++) {
		const struct cfs_node *child = dir->children[i];
		const struct cfs_node *target = cfs_node_follow((struct cfs_node *)child);
		struct erofs_disk_dirent de = {
			.nid = htole64(target->w_nid),
			.nameoff = htole16((uint16_t)nameoff),
			.file_type = (uint8_t)dirent_type(target),
		};
		nameoff += (uint32_t)strlen(child->name);
		r = out_write(w, &de, sizeof(de));
		if (r < 0)
			return r;
	}
	for (size_t i = first; i < first + n; i++) {
		r = out_write(w, dir->children[i]->name, strlen(dir->children[i]->name));
		if (r < 0)
			return r;
	}
	return out_align(w, align);
}

/* The full directory blocks (@blocks) and/or the inline tail (@tail). */
static int write_dir(struct wctx *w, const struct cfs_node *dir, bool blocks, bool tail)
{
	size_t used = 0, first = 0, written = 0;
	int r;

	for (size_t i = 0; i < dir->n_children; i++) {
		size_t len = sizeof(struct erofs_disk_dirent) + strlen(dir->children[i]->name);
		if (used + len > BLKSZ) {
			if (blocks && (r = write_dirents(w, dir, first, i - first, BLKSZ)) < 0)
				return r;
			written++;
			used = 0;
			first = i;
		}
		used += len;
	}
	if (written < dir->w_n_blocks) {
		if (blocks && (r = write_dirents(w, dir, first, dir->n_children - first, BLKSZ)) < 0)
			return r;
		used = 0;
		first = dir->n_children;
	}
	if (tail && used > 0)
		return write_dirents(w, dir, first, dir->n_children - first, 1);
	return 0;
}

static int write_null_chunks(struct wctx *w, uint64_t count)
{
	static const uint8_t ff[256] = { [0 ... 255] = 0xff };

	for (uint64_t left = count * 4; left > 0;) {
		size_t n = left > sizeof(ff) ? sizeof(ff) : (size_t)left;
		int r = out_write(w, ff, n);
		if (r < 0)
			return r;
		left -= n;
	}
	return 0;
}

static int write_inode(struct wctx *w, struct cfs_node *node)
{
	unsigned type = node->mode & S_IFMT;
	uint16_t layout = node->w_tailsize > 0 ? EROFS_INODE_FLAT_INLINE : EROFS_INODE_FLAT_PLAIN;
	uint64_t size = 0, chunk_count = 0;
	uint32_t i_u = 0;
	size_t n_shared, inline_size;
	int r;

	r = out_zero(w, node->w_ipad);
	if (r < 0)
		return r;

	switch (type) {
	case S_IFDIR:
		size = (uint64_t)node->w_n_blocks * BLKSZ + node->w_tailsize;
		break;
	case S_IFREG:
		size = node->size;
		break;
	case S_IFLNK:
		size = node->w_n_blocks == 0 ? node->w_tailsize : node->size;
		break;
	}
	if ((type == S_IFDIR || type == S_IFREG || type == S_IFLNK) && node->w_n_blocks > 0) {
		i_u = (uint32_t)(w->data_next / BLKSZ);
		w->data_next += (uint64_t)BLKSZ * node->w_n_blocks;
	}
	if (type == S_IFCHR || type == S_IFBLK)
		i_u = node->rdev;
	if (is_external(node)) {
		unsigned bits;
		chunking(node->size, &bits, &chunk_count);
		layout = EROFS_INODE_CHUNK_BASED;
		/* The chunk format shares i_u with the block address: upstream
		 * stores both, the format in the low 16 bits. */
		i_u = (i_u & 0xffff0000U) | (uint16_t)(bits - BLKSZ_BITS);
	}

	xattr_counts(node, &n_shared, &inline_size);
	uint32_t xsize = xattr_ibody_size(n_shared, inline_size);
	uint32_t icount = xsize ? (xsize - sizeof(struct erofs_disk_xattr_ibody_header)) / 4 + 1 : 0;
	if (icount > UINT16_MAX)
		return -EINVAL;
	uint16_t format = (uint16_t)(layout << EROFS_I_DATALAYOUT_BIT |
				     (node->w_compact ? EROFS_INODE_LAYOUT_COMPACT : EROFS_INODE_LAYOUT_EXTENDED));

	if (node->w_compact) {
		struct erofs_disk_inode_compact i = {
			.i_format = htole16(format),
			.i_xattr_icount = htole16((uint16_t)icount),
			.i_mode = htole16((uint16_t)node->mode),
			.i_nlink = htole16((uint16_t)node->nlink),
			.i_size = htole32((uint32_t)size),
			.i_u = htole32(i_u),
			.i_ino = htole32(node->w_ino),
			.i_uid = htole16((uint16_t)node->uid),
			.i_gid = htole16((uint16_t)node->gid),
		};
		r = out_write(w, &i, sizeof(i));
	} else {
		struct erofs_disk_inode_extended i = {
			.i_format = htole16(format),
			.i_xattr_icount = htole16((uint16_t)icount),
			.i_mode = htole16((uint16_t)node->mode),
			.i_size = htole64(size),
			.i_u = htole32(i_u),
			.i_ino = htole32(node->w_ino),
			.i_uid = htole32(node->uid),
			.i_gid = htole32(node->gid),
			.i_mtime = htole64((uint64_t)node->mtime_sec),
			.i_mtime_nsec = htole32(node->mtime_nsec),
			.i_nlink = htole32(node->nlink),
		};
		r = out_write(w, &i, sizeof(i));
	}
	if (r < 0)
		return r;

	if (xsize) {
		uint32_t filter = 0;
		for (size_t i = 0; i < node->n_xattrs; i++) {
			const char *suffix;
			uint8_t index = xattr_index(node->xattrs[i].key, &suffix);
			filter |= erofs_xattr_filter_bit(index, suffix, strlen(suffix));
		}
		struct erofs_disk_xattr_ibody_header h = {
			.h_name_filter = htole32(~filter),
			.h_shared_count = (uint8_t)n_shared,
		};
		r = out_write(w, &h, sizeof(h));
		if (r < 0)
			return r;
		for (size_t i = 0; i < node->n_xattrs; i++) {
			if (node->xattrs[i].shared_off < 0)
				continue;
			uint32_t id = htole32((uint32_t)((w->inodes_end % BLKSZ +
							  (uint64_t)node->xattrs[i].shared_off) / 4));
			r = out_write(w, &id, sizeof(id));
			if (r < 0)
				return r;
		}
		for (size_t i = 0; i < node->n_xattrs; i++) {
			if (node->xattrs[i].shared_off >= 0)
				continue;
			r = write_xattr_entry(w, &node->xattrs[i]);
			if (r < 0)
				return r;
		}
		r = out_align(w, 4);
		if (r < 0)
			return r;
	}

	if (type == S_IFDIR)
		return write_dir(w, node, false, true);
	if (type == S_IFLNK && node->w_n_blocks == 0)
		return out_write(w, node->payload, node->w_tailsize);
	if (type == S_IFREG && node->w_tailsize > 0) {
		if (node->content)
			return out_write(w, node->content + node->size - node->w_tailsize,
					 node->w_tailsize);
		return write_null_chunks(w, chunk_count);
	}
	return 0;
}

/* Data blocks of one inode: full directory blocks, file content that did
 * not fit inline, a chunk table that did not fit inline. */
static int write_data(struct wctx *w, const struct cfs_node *node)
{
	unsigned type = node->mode & S_IFMT;
	const uint8_t *data;
	int r;

	if (type == S_IFDIR)
		return write_dir(w, node, true, false);
	if (node->w_n_blocks == 0)
		return 0;
	if (type == S_IFREG && !node->content)
		return write_null_chunks(w, BLKSZ / 4);
	if (type == S_IFREG)
		data = node->content;
	else if (type == S_IFLNK)
		data = (const uint8_t *)node->payload;
	else
		return 0;
	for (uint32_t b = 0; b < node->w_n_blocks; b++) {
		uint64_t off = (uint64_t)b * BLKSZ;
		uint64_t len = node->size > off ? node->size - off : 0;
		if (len > BLKSZ)
			len = BLKSZ;
		if ((r = out_write(w, data + off, (size_t)len)) < 0 || (r = out_align(w, BLKSZ)) < 0)
			return r;
	}
	return 0;
}

static int write_all(struct wctx *w)
{
	struct cfs_disk_header hdr = {
		.magic = htole32(CFS_MAGIC),
		.version = htole32(CFS_HEADER_VERSION),
		.flags = htole32(w->has_acl ? CFS_HEADER_FLAGS_HAS_ACL : 0),
		.composefs_version = htole32(w->version),
	};
	uint64_t data_start = round_up_u64(w->inodes_end + w->shared_size, BLKSZ);
	struct erofs_disk_super sb = {
		.magic = htole32(EROFS_SUPER_MAGIC_V1),
		.feature_compat = htole32(EROFS_FEATURE_COMPAT_MTIME | EROFS_FEATURE_COMPAT_XATTR_FILTER),
		.blkszbits = BLKSZ_BITS,
		.root_nid = htole16((uint16_t)w->root->w_nid),
		.inos = htole64(w->n_inodes),
		.build_time = htole64((uint64_t)w->min_mtime_sec),
		.build_time_nsec = htole32(w->min_mtime_nsec),
		.blocks = htole32((uint32_t)(data_start / BLKSZ + w->n_data_blocks)),
		.meta_blkaddr = htole32((EROFS_SUPER_OFFSET + sizeof(struct erofs_disk_super)) / BLKSZ),
		.xattr_blkaddr = htole32((uint32_t)(w->inodes_end / BLKSZ)),
	};
	int r;

	if ((r = out_write(w, &hdr, sizeof(hdr))) < 0 ||
	    (r = out_zero(w, EROFS_SUPER_OFFSET - sizeof(hdr))) < 0 ||
	    (r = out_write(w, &sb, sizeof(sb))) < 0)
		return r;

	w->data_next = data_start;
	for (struct cfs_node *node = w->root; node; node = node->w_next) {
		r = write_inode(w, node);
		if (r < 0)
			return r;
	}
	r = out_align(w, SLOTSZ);
	if (r < 0)
		return r;
	if (w->written != w->inodes_end)
		return -EINVAL; /* layout bug: never write an inconsistent image */
	for (size_t i = 0; i < w->n_shared; i++) {
		r = write_xattr_entry(w, w->shared[i]);
		if (r < 0)
			return r;
	}
	r = out_align(w, BLKSZ);
	if (r < 0)
		return r;
	for (struct cfs_node *node = w->root; node; node = node->w_next) {
		r = write_data(w, node);
		if (r < 0)
			return r;
	}
	if (w->written != data_start + w->n_data_blocks * BLKSZ || w->data_next != w->written)
		return -EINVAL;
	return out_flush(w);
}

int cfs_write_image(struct cfs_node *root, const struct cfs_write_options *opts,
		    uint32_t *ret_version)
{
	struct cfs_write_options o = *opts;
	struct wctx w = { .opts = &o, .root = root };
	int r;

	if (!root || !o.write)
		return -EINVAL;
	if (o.ret_error_path)
		*o.ret_error_path = NULL;
	if (o.min_version > CFS_VERSION_MAX || o.max_version > CFS_VERSION_MAX)
		return -EINVAL;
	if (!cfs_node_is_dir(root))
		return -ENOTDIR;
	if (o.max_version < o.min_version)
		o.max_version = o.min_version;
	w.version = o.min_version;
	update_version(&w, root, "/");
	r = cfs_node_walk(root, update_version, &w);
	if (r < 0)
		return r;

	r = rewrite_node(&w, root, "/");
	if (r >= 0)
		r = cfs_node_walk(root, rewrite_node, &w);
	if (r < 0)
		return r;
	r = cfs_node_set_xattr(root, CFS_OVL_PREFIX "opaque", "y", 1);
	if (r < 0)
		return r;
	r = add_root_whiteouts(root);
	if (r < 0)
		return r;
	r = compute_tree(&w);
	if (r < 0)
		return r;
	r = compute_shared_xattrs(&w);
	if (r < 0)
		goto out;
	compute_inodes(&w);
	if (w.root->w_nid > UINT16_MAX) {
		r = -EINVAL;
		goto out;
	}
	w.buf = malloc(WBUF_SIZE);
	if (!w.buf) {
		r = -ENOMEM;
		goto out;
	}
	r = write_all(&w);
	if (r >= 0 && ret_version)
		*ret_version = w.version;
out:
	free(w.buf);
	free(w.shared);
	return r < 0 ? r : 0;
}
