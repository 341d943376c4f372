/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The image reader, inodes and file data: decoding and checking an inode
 * (kernel fs/erofs/inode.c), mapping its blocks (data.c), reading file data
 * and symlink targets.
 */
#include <dirent.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "image-priv.h"

/* ------------------------------------------------------------------ */
/* Inodes                                                               */

int cfs_img_nid_to_off(const struct cfs_image *img, uint64_t nid, uint64_t *ret_off)
{
	uint64_t off;

	if (nid > (UINT64_MAX >> EROFS_ISLOTBITS) ||
	    __builtin_add_overflow(img->meta_off, nid << EROFS_ISLOTBITS, &off) ||
	    !img_ptr(img, off, sizeof(struct erofs_disk_inode_compact)))
		return CORRUPT("inode nid %llu is beyond the image", ULL(nid));
	*ret_off = off;
	return 0;
}

/* Byte offset just after the inode and its inline xattrs. */
static inline uint64_t inode_tail_off(const struct cfs_inode *ino)
{
	return ino->inode_off + ino->inode_isize + xattr_isize(ino);
}

/* Chunk-based layout parameters (kernel fs/erofs/inode.c, data.c). */
struct chunk_info {
	unsigned chunkbits;
	unsigned unit;        /* 4 (block map) or 8 (indexes) */
	uint64_t table_off;
	uint64_t nchunks;
};

static int chunk_info(const struct cfs_image *img, const struct cfs_inode *ino, struct chunk_info *ci)
{
	uint16_t fmt = (uint16_t)ino->raw_blkaddr; /* i_u.c.format: low 16 bits */
	uint64_t end;

	if (fmt & ~EROFS_CHUNK_FORMAT_ALL)
		return UNSUPPORTED("inode nid %llu: unknown chunk format 0x%x", ULL(ino->nid), fmt);
	ci->chunkbits = CFS_BLKSZ_BITS + (fmt & EROFS_CHUNK_FORMAT_BLKBITS_MASK);
	ci->unit = (fmt & EROFS_CHUNK_FORMAT_INDEXES) ? sizeof(struct erofs_disk_chunk_index) : 4;
	ci->nchunks = ino->size ? ((ino->size - 1) >> ci->chunkbits) + 1 : 0;
	end = inode_tail_off(ino);
	ci->table_off = (end + ci->unit - 1) & ~(uint64_t)(ci->unit - 1);
	if (ci->table_off < end || ci->nchunks > img->size / ci->unit ||
	    !img_ptr(img, ci->table_off, ci->nchunks * ci->unit))
		return CORRUPT("inode nid %llu: chunk table beyond the image", ULL(ino->nid));
	return 0;
}

/* Check that the data of a REG/DIR/LNK inode lies where its layout says. */
static int check_data_layout(const struct cfs_image *img, const struct cfs_inode *ino)
{
	uint64_t nblocks = size_blocks(ino->size), start = (uint64_t)ino->raw_blkaddr << CFS_BLKSZ_BITS;

	switch (ino->datalayout) {
	case EROFS_INODE_FLAT_PLAIN:
		if (ino->size && !img_ptr(img, start, ino->size))
			return CORRUPT("inode nid %llu: data (block %u, %llu bytes) beyond the image",
				       ULL(ino->nid), ino->raw_blkaddr, ULL(ino->size));
		return 0;
	case EROFS_INODE_FLAT_INLINE: {
		uint64_t tail_len, toff;

		if (!ino->size)
			return 0;
		/* Blocks before the last are plain, the last one follows the
		 * inode and must not cross a block boundary. */
		tail_len = ino->size - ((nblocks - 1) << CFS_BLKSZ_BITS);
		toff = inode_tail_off(ino);
		if ((toff & (CFS_BLKSZ - 1)) + tail_len > CFS_BLKSZ || !img_ptr(img, toff, tail_len))
			return CORRUPT("inode nid %llu: inline data (%llu bytes) crosses a block boundary",
				       ULL(ino->nid), ULL(tail_len));
		if (nblocks > 1 && !img_ptr(img, start, (nblocks - 1) << CFS_BLKSZ_BITS))
			return CORRUPT("inode nid %llu: data (block %u, %llu bytes) beyond the image",
				       ULL(ino->nid), ino->raw_blkaddr, ULL(ino->size));
		return 0;
	}
	case EROFS_INODE_CHUNK_BASED:
		/* Only regular files: composefs and erofs-utils never write
		 * chunk-based directories or symlinks, and refusing them keeps
		 * directory data within the image size. */
		if (!S_ISREG(ino->mode))
			return CORRUPT("inode nid %llu: chunk-based layout on a non-regular file",
				       ULL(ino->nid));
		if ((uint16_t)ino->raw_blkaddr & ~EROFS_CHUNK_FORMAT_ALL)
			return UNSUPPORTED("inode nid %llu: unknown chunk format 0x%x", ULL(ino->nid),
					   (uint16_t)ino->raw_blkaddr);
		/* The chunk table is checked when it is read, as the kernel
		 * does: upstream mkcomposefs writes files of more than one
		 * chunk (over 8 TiB) with the table in a data block, where
		 * no reader looks, and such an inode must still stat. */
		return 0;
	default:
		return UNSUPPORTED("inode nid %llu: unsupported data layout %u", ULL(ino->nid),
				   ino->datalayout);
	}
}

int cfs_img_read_inode(const struct cfs_image *img, uint64_t nid, struct cfs_inode *ret_ino)
{
	const uint8_t *p;
	struct cfs_inode ino = { .nid = nid };
	uint16_t ifmt;
	uint32_t u;
	int r;

	r = cfs_img_nid_to_off(img, nid, &ino.inode_off);
	if (r < 0)
		return r;
	p = img->data + ino.inode_off;
	ifmt = get_le16(p);
	if (ifmt & ~EROFS_I_ALL)
		return UNSUPPORTED("inode nid %llu: unknown i_format bits 0x%x", ULL(nid), ifmt);
	ino.datalayout = (ifmt >> EROFS_I_DATALAYOUT_BIT) & EROFS_I_DATALAYOUT_MASK;
	if (ino.datalayout != EROFS_INODE_FLAT_PLAIN && ino.datalayout != EROFS_INODE_FLAT_INLINE &&
	    ino.datalayout != EROFS_INODE_CHUNK_BASED)
		return UNSUPPORTED("inode nid %llu: %s data layout %u", ULL(nid),
				   ino.datalayout == 1 || ino.datalayout == 3 ? "compressed" : "unknown",
				   ino.datalayout);

	/* Decoded from copies: the caller's buffer may be unaligned. */
	if ((ifmt & EROFS_I_VERSION_MASK) == EROFS_INODE_LAYOUT_COMPACT) {
		struct erofs_disk_inode_compact cbuf, *c = &cbuf;

		memcpy(&cbuf, p, sizeof(cbuf));

		ino.inode_isize = sizeof(*c);
		ino.xattr_icount = le16toh(c->i_xattr_icount);
		ino.mode = le16toh(c->i_mode);
		ino.nlink = le16toh(c->i_nlink);
		ino.size = le32toh(c->i_size);
		u = le32toh(c->i_u);
		ino.uid = le16toh(c->i_uid);
		ino.gid = le16toh(c->i_gid);
		ino.mtime = (int64_t)img->info.build_time;
		ino.mtime_nsec = img->info.build_time_nsec;
	} else {
		struct erofs_disk_inode_extended ebuf, *e = &ebuf;

		p = img_ptr(img, ino.inode_off, sizeof(ebuf));
		if (!p)
			return CORRUPT("inode nid %llu is beyond the image", ULL(nid));
		memcpy(&ebuf, p, sizeof(ebuf));
		ino.inode_isize = sizeof(*e);
		ino.xattr_icount = le16toh(e->i_xattr_icount);
		ino.mode = le16toh(e->i_mode);
		ino.nlink = le32toh(e->i_nlink);
		ino.size = le64toh(e->i_size);
		u = le32toh(e->i_u);
		ino.uid = le32toh(e->i_uid);
		ino.gid = le32toh(e->i_gid);
		ino.mtime = (int64_t)le64toh(e->i_mtime);
		ino.mtime_nsec = le32toh(e->i_mtime_nsec);
	}
	ino.raw_blkaddr = u;

	switch (ino.mode & S_IFMT) {
	case S_IFCHR:
	case S_IFBLK:
		ino.rdev = (dev_t)u; /* the kernel's new_encode_dev() form, as glibc's makedev() */
		break;
	case S_IFREG:
	case S_IFDIR:
	case S_IFLNK:
	case S_IFIFO:
	case S_IFSOCK:
		break;
	default:
		return CORRUPT("inode nid %llu: bogus mode 0%o", ULL(nid), ino.mode);
	}

	/* The inline xattr area follows the inode. */
	if (!img_ptr(img, ino.inode_off + ino.inode_isize, xattr_isize(&ino)))
		return CORRUPT("inode nid %llu: xattr area (%u slots) beyond the image", ULL(nid),
			       ino.xattr_icount);

	if (has_data(ino.mode)) {
		r = check_data_layout(img, &ino);
		if (r < 0)
			return r;
	}

	*ret_ino = ino;
	return 0;
}

/* See image-priv.h. */
int cfs_img_map_block(const struct cfs_image *img, const struct cfs_inode *ino, uint64_t lblk,
		      const uint8_t **ret_p, size_t *ret_len)
{
	uint64_t nblocks = size_blocks(ino->size), pos, off;
	size_t len;
	const uint8_t *p;

	if (lblk >= nblocks)
		return CORRUPT("inode nid %llu: block %llu beyond its size", ULL(ino->nid), ULL(lblk));
	pos = lblk << CFS_BLKSZ_BITS;
	len = (size_t)(ino->size - pos < CFS_BLKSZ ? ino->size - pos : CFS_BLKSZ);

	switch (ino->datalayout) {
	case EROFS_INODE_FLAT_INLINE:
		if (lblk == nblocks - 1) {
			off = inode_tail_off(ino);
			if ((off & (CFS_BLKSZ - 1)) + len > CFS_BLKSZ)
				return CORRUPT("inode nid %llu: inline data crosses a block boundary",
					       ULL(ino->nid));
			break;
		}
		/* fallthrough */
	case EROFS_INODE_FLAT_PLAIN:
		off = ((uint64_t)ino->raw_blkaddr << CFS_BLKSZ_BITS) + pos;
		break;
	case EROFS_INODE_CHUNK_BASED: {
		struct chunk_info ci = { 0 };
		const uint8_t *e;
		uint64_t chunknr;
		uint32_t blkaddr;
		int r;

		r = chunk_info(img, ino, &ci);
		if (r < 0)
			return r;
		chunknr = pos >> ci.chunkbits;
		e = img_ptr(img, ci.table_off + chunknr * ci.unit, ci.unit);
		if (!e)
			return CORRUPT("inode nid %llu: chunk %llu beyond the image", ULL(ino->nid),
				       ULL(chunknr));
		blkaddr = ci.unit == 4 ? get_le32(e) : get_le32(e + 4);
		if (blkaddr == EROFS_NULL_ADDR) {
			*ret_p = NULL;
			*ret_len = len;
			return 0;
		}
		off = ((uint64_t)blkaddr << CFS_BLKSZ_BITS) + (pos & ((UINT64_C(1) << ci.chunkbits) - 1));
		break;
	}
	default:
		return UNSUPPORTED("inode nid %llu: unsupported data layout %u", ULL(ino->nid),
				   ino->datalayout);
	}
	p = img_ptr(img, off, len);
	if (!p)
		return CORRUPT("inode nid %llu: block %llu beyond the image", ULL(ino->nid), ULL(lblk));
	*ret_p = p;
	*ret_len = len;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Data                                                                 */

ssize_t cfs_img_read(const struct cfs_image *img, const struct cfs_inode *ino, uint64_t off,
		     void *buf, size_t len)
{
	uint8_t *out = buf;
	size_t done = 0;

	if (!has_data(ino->mode))
		return -EINVAL;
	if (off >= ino->size)
		return 0;
	if (len > ino->size - off)
		len = (size_t)(ino->size - off);
	if (len > SSIZE_MAX)
		len = SSIZE_MAX;

	while (done < len) {
		uint64_t pos = off + done, lblk = pos >> CFS_BLKSZ_BITS;
		size_t boff = (size_t)(pos & (CFS_BLKSZ - 1)), blen, n;
		const uint8_t *p;
		int r;

		r = cfs_img_map_block(img, ino, lblk, &p, &blen);
		if (r < 0)
			return r;
		if (boff >= blen)
			return CORRUPT("inode nid %llu: short block %llu", ULL(ino->nid), ULL(lblk));
		n = blen - boff;
		if (n > len - done)
			n = len - done;
		if (p)
			memcpy(out + done, p + boff, n);
		else
			memset(out + done, 0, n);
		done += n;
	}
	return (ssize_t)done;
}

ssize_t cfs_img_readlink(const struct cfs_image *img, const struct cfs_inode *ino, char *buf,
			 size_t bufsz)
{
	ssize_t n;

	if (!S_ISLNK(ino->mode))
		return -EINVAL;
	/* Like the kernel, a target is shorter than a page (PATH_MAX). */
	if (ino->size >= PATH_MAX)
		return CORRUPT("symlink nid %llu: target of %llu bytes", ULL(ino->nid), ULL(ino->size));
	if (bufsz <= ino->size)
		return -ERANGE;
	n = cfs_img_read(img, ino, 0, buf, (size_t)ino->size);
	if (n < 0)
		return n;
	if ((uint64_t)n != ino->size)
		return CORRUPT("symlink nid %llu: short target", ULL(ino->nid));
	buf[n] = '\0';
	/* What readlink(2) shows: the target ends at the first NUL. */
	return (ssize_t)strlen(buf);
}
