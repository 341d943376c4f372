/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Emitting an image laid out by writer-layout.c: the composefs header and
 * EROFS superblock, the inodes (each with its xattrs and inline tail), the
 * shared xattrs, then the data blocks, through a buffer flushed to the
 * caller's write function.  The byte counts are checked against the layout
 * at the end of each region: an inconsistent image is never written.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cfs-image.h"
#include "writer-internal.h"

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
	uint8_t index = cfs_writer_xattr_index(x->key, &suffix);
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
		if (used + len > CFS_BLKSZ) {
			if (blocks && (r = write_dirents(w, dir, first, i - first, CFS_BLKSZ)) < 0)
				return r;
			written++;
			used = 0;
			first = i;
		}
		used += len;
	}
	if (written < dir->w_n_blocks) {
		if (blocks && (r = write_dirents(w, dir, first, dir->n_children - first, CFS_BLKSZ)) < 0)
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
		size = (uint64_t)node->w_n_blocks * CFS_BLKSZ + node->w_tailsize;
		break;
	case S_IFREG:
		size = node->size;
		break;
	case S_IFLNK:
		size = node->w_n_blocks == 0 ? node->w_tailsize : node->size;
		break;
	}
	if ((type == S_IFDIR || type == S_IFREG || type == S_IFLNK) && node->w_n_blocks > 0) {
		i_u = (uint32_t)(w->data_next / CFS_BLKSZ);
		w->data_next += (uint64_t)CFS_BLKSZ * node->w_n_blocks;
	}
	if (type == S_IFCHR || type == S_IFBLK)
		i_u = node->rdev;
	if (cfs_writer_is_external(node)) {
		unsigned bits;
		cfs_writer_chunking(node->size, &bits, &chunk_count);
		layout = EROFS_INODE_CHUNK_BASED;
		/* The chunk format shares i_u with the block address: upstream
		 * stores both, the format in the low 16 bits. */
		i_u = (i_u & 0xffff0000U) | (uint16_t)(bits - CFS_BLKSZ_BITS);
	}

	cfs_writer_xattr_counts(node, &n_shared, &inline_size);
	uint32_t xsize = cfs_writer_xattr_ibody_size(n_shared, inline_size);
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
			uint8_t index = cfs_writer_xattr_index(node->xattrs[i].key, &suffix);
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
			uint32_t id = htole32((uint32_t)((w->inodes_end % CFS_BLKSZ +
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
		return write_null_chunks(w, CFS_BLKSZ / 4);
	if (type == S_IFREG)
		data = node->content;
	else if (type == S_IFLNK)
		data = (const uint8_t *)node->payload;
	else
		return 0;
	for (uint32_t b = 0; b < node->w_n_blocks; b++) {
		uint64_t off = (uint64_t)b * CFS_BLKSZ;
		uint64_t len = node->size > off ? node->size - off : 0;
		if (len > CFS_BLKSZ)
			len = CFS_BLKSZ;
		if ((r = out_write(w, data + off, (size_t)len)) < 0 || (r = out_align(w, CFS_BLKSZ)) < 0)
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
	uint64_t data_start = round_up_u64(w->inodes_end + w->shared_size, CFS_BLKSZ);
	struct erofs_disk_super sb = {
		.magic = htole32(EROFS_SUPER_MAGIC_V1),
		.feature_compat = htole32(EROFS_FEATURE_COMPAT_MTIME | EROFS_FEATURE_COMPAT_XATTR_FILTER),
		.blkszbits = CFS_BLKSZ_BITS,
		.root_nid = htole16((uint16_t)w->root->w_nid),
		.inos = htole64(w->n_inodes),
		.build_time = htole64((uint64_t)w->min_mtime_sec),
		.build_time_nsec = htole32(w->min_mtime_nsec),
		.blocks = htole32((uint32_t)(data_start / CFS_BLKSZ + w->n_data_blocks)),
		.meta_blkaddr = htole32((EROFS_SUPER_OFFSET + sizeof(struct erofs_disk_super)) / CFS_BLKSZ),
		.xattr_blkaddr = htole32((uint32_t)(w->inodes_end / CFS_BLKSZ)),
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
	r = out_align(w, CFS_BLKSZ);
	if (r < 0)
		return r;
	for (struct cfs_node *node = w->root; node; node = node->w_next) {
		r = write_data(w, node);
		if (r < 0)
			return r;
	}
	if (w->written != data_start + w->n_data_blocks * CFS_BLKSZ || w->data_next != w->written)
		return -EINVAL;
	return out_flush(w);
}

int cfs_writer_emit(struct wctx *w)
{
	int r;

	w->buf = malloc(WBUF_SIZE);
	if (!w->buf)
		return -ENOMEM;
	r = write_all(w);
	free(w->buf);
	w->buf = NULL;
	return r;
}
