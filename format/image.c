/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The composefs image reader: a bounds-checked, lock-free view of an EROFS
 * image with a composefs header, held in memory.
 *
 * Every offset read from the image goes through img_ptr(), which checks it
 * (overflow-safe) against the image size before it becomes a pointer.  The
 * reading rules follow the kernel's fs/erofs (super.c, inode.c, data.c,
 * dir.c, namei.c, xattr.c) and Documentation/filesystems/erofs.rst; the
 * layouts are those upstream composefs writes (lcfs-writer-erofs.c).
 */
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfs-image.h"
#include "erofs-disk.h"
#include "image-internal.h"

#define CFS_BLKSZ_BITS 12
#define CFS_BLKSZ (1U << CFS_BLKSZ_BITS)
#define HUGE_PAGE_SIZE (2U << 20)

/* Incompatible features whose on-disk effect we understand.  ZERO_PADDING
 * only concerns compressed data; CHUNKED_FILE announces chunk-based inodes,
 * which we read (upstream composefs uses them without setting the bit). */
#define CFS_SUPPORTED_INCOMPAT (EROFS_FEATURE_INCOMPAT_ZERO_PADDING | EROFS_FEATURE_INCOMPAT_CHUNKED_FILE)

#define EROFS_CHUNK_FORMAT_ALL (EROFS_CHUNK_FORMAT_BLKBITS_MASK | EROFS_CHUNK_FORMAT_INDEXES)

struct cfs_image {
	unsigned refcount;
	const uint8_t *data;
	size_t size;
	void *owned; /* data, when the image owns it */
	uint64_t meta_off;  /* byte offset of nid 0 */
	uint64_t xattr_off; /* byte offset of shared xattr id 0 */
	bool xattr_filter;  /* inodes carry an xattr name bloom filter */
	struct cfs_img_info info;
};

/* What the last -EFSCORRUPTED / -EOPNOTSUPP of this thread was about.
 * Thread-local, so the accessors stay lock-free; only written on errors. */
static __thread char err_detail[192];

const char *cfs_img_error_detail(void)
{
	return err_detail;
}

int cfs_img_fail(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err_detail, sizeof(err_detail), fmt, ap);
	va_end(ap);
	return err;
}

#define CORRUPT(...) cfs_img_fail(-EFSCORRUPTED, __VA_ARGS__)
#define UNSUPPORTED(...) cfs_img_fail(-EOPNOTSUPP, __VA_ARGS__)
#define ULL(x) ((unsigned long long)(x))

/* The only place an image offset becomes a pointer. */
static const uint8_t *img_ptr(const struct cfs_image *img, uint64_t off, uint64_t len)
{
	if (!cfs_range_ok(off, len, img->size))
		return NULL;
	return img->data + off;
}

static inline uint16_t get_le16(const void *p)
{
	uint16_t v;
	memcpy(&v, p, sizeof(v));
	return le16toh(v);
}

static inline uint32_t get_le32(const void *p)
{
	uint32_t v;
	memcpy(&v, p, sizeof(v));
	return le32toh(v);
}

static inline uint64_t get_le64(const void *p)
{
	uint64_t v;
	memcpy(&v, p, sizeof(v));
	return le64toh(v);
}

/* ------------------------------------------------------------------ */
/* Open                                                                 */

static const struct {
	uint32_t bit;
	const char *name;
} incompat_names[] = {
	{ EROFS_FEATURE_INCOMPAT_ZERO_PADDING, "zero_padding" },
	{ EROFS_FEATURE_INCOMPAT_COMPR_CFGS, "compr_cfgs" },
	{ EROFS_FEATURE_INCOMPAT_CHUNKED_FILE, "chunked_file" },
	{ EROFS_FEATURE_INCOMPAT_DEVICE_TABLE, "device_table" },
	{ EROFS_FEATURE_INCOMPAT_ZTAILPACKING, "ztailpacking" },
	{ EROFS_FEATURE_INCOMPAT_FRAGMENTS, "fragments/dedupe" },
	{ EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES, "xattr_prefixes" },
	{ 0x00000080, "48bit" },
	{ 0x00000100, "metabox" },
};

const char *cfs_img_incompat_name(uint32_t bit)
{
	for (size_t i = 0; i < ARRAY_SIZE(incompat_names); i++)
		if (incompat_names[i].bit == bit)
			return incompat_names[i].name;
	return NULL;
}

static int diag_set(struct cfs_img_diag *diag, int r, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int diag_set(struct cfs_img_diag *diag, int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err_detail, sizeof(err_detail), fmt, ap);
	va_end(ap);
	if (diag)
		snprintf(diag->reason, sizeof(diag->reason), "%s", err_detail);
	return r;
}

/* CRC32C (Castagnoli, reflected), as the kernel's crc32c() computes it:
 * no final inversion.  Only used when the superblock carries a checksum. */
static uint32_t crc32c_le(uint32_t crc, const uint8_t *p, size_t len)
{
	while (len--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82F63B78U & (0U - (crc & 1)));
	}
	return crc;
}

static int check_sb_checksum(const uint8_t *data, size_t size)
{
	/* The checksum covers the rest of block 0 from the superblock on,
	 * with the checksum field itself zeroed (kernel fs/erofs/super.c). */
	size_t len = CFS_BLKSZ - EROFS_SUPER_OFFSET;
	uint8_t zero[4] = { 0 };
	uint32_t expected, crc;

	if (size < CFS_BLKSZ)
		return -EFSCORRUPTED;
	expected = get_le32(data + EROFS_SUPER_OFFSET + 4);
	crc = crc32c_le(~0U, data + EROFS_SUPER_OFFSET, 4);
	crc = crc32c_le(crc, zero, 4);
	crc = crc32c_le(crc, data + EROFS_SUPER_OFFSET + 8, len - 8);
	return crc == expected ? 0 : -EFSCORRUPTED;
}

static int img_validate(struct cfs_image *img, struct cfs_img_diag *diag)
{
	struct cfs_disk_header hbuf, *h = &hbuf;
	struct erofs_disk_super sbuf, *sb = &sbuf;
	uint32_t incompat, unknown, blocks, compat;
	struct cfs_inode root;
	int r;

	if (img->size < EROFS_SUPER_OFFSET + sizeof(struct erofs_disk_super))
		return diag_set(diag, -EFSCORRUPTED, "image too small (%zu bytes)", img->size);

	memcpy(&hbuf, img->data, sizeof(hbuf));
	memcpy(&sbuf, img->data + EROFS_SUPER_OFFSET, sizeof(sbuf));
	if (le32toh(h->magic) != CFS_MAGIC)
		return diag_set(diag, -EFSCORRUPTED, "not a composefs image (bad header magic 0x%08x)",
				le32toh(h->magic));
	if (le32toh(h->version) != CFS_HEADER_VERSION)
		return diag_set(diag, -EOPNOTSUPP, "unsupported composefs header version %u",
				le32toh(h->version));

	if (le32toh(sb->magic) != EROFS_SUPER_MAGIC_V1)
		return diag_set(diag, -EFSCORRUPTED, "bad EROFS superblock magic 0x%08x",
				le32toh(sb->magic));
	if (sb->blkszbits != CFS_BLKSZ_BITS)
		return diag_set(diag, -EOPNOTSUPP, "unsupported EROFS block size 2^%u (only 4096)",
				sb->blkszbits);

	incompat = le32toh(sb->feature_incompat);
	unknown = incompat & ~(uint32_t)CFS_SUPPORTED_INCOMPAT;
	if (unknown) {
		char names[100] = "";
		size_t n = 0;

		for (unsigned b = 0; b < 32; b++) {
			const char *name;

			if (!(unknown & (1U << b)))
				continue;
			name = cfs_img_incompat_name(1U << b);
			n += snprintf(names + n, n < sizeof(names) ? sizeof(names) - n : 0, "%s%s",
				      n ? ", " : "", name ? name : "unknown");
			if (n >= sizeof(names))
				break;
		}
		if (diag)
			diag->unsupported_incompat = unknown;
		return diag_set(diag, -EOPNOTSUPP,
				"unsupported EROFS incompatible features 0x%08x (%s)", unknown, names);
	}
	if (sb->dirblkbits != 0)
		return diag_set(diag, -EOPNOTSUPP, "unsupported EROFS directory block size");
	/* The superblock and its extension slots stay within block 0. */
	if (sizeof(*sb) + sb->sb_extslots * 16U > CFS_BLKSZ - EROFS_SUPER_OFFSET)
		return diag_set(diag, -EFSCORRUPTED, "invalid sb_extslots %u", sb->sb_extslots);

	compat = le32toh(sb->feature_compat);
	img->xattr_filter = compat & EROFS_FEATURE_COMPAT_XATTR_FILTER;
	if ((compat & EROFS_FEATURE_COMPAT_SB_CHKSUM) && check_sb_checksum(img->data, img->size) < 0)
		return diag_set(diag, -EFSCORRUPTED, "EROFS superblock checksum mismatch");

	blocks = le32toh(sb->blocks);
	if ((uint64_t)blocks << CFS_BLKSZ_BITS > img->size)
		return diag_set(diag, -EFSCORRUPTED,
				"image truncated: superblock says %u blocks, file has %zu bytes",
				blocks, img->size);

	img->meta_off = (uint64_t)le32toh(sb->meta_blkaddr) << CFS_BLKSZ_BITS;
	img->xattr_off = (uint64_t)le32toh(sb->xattr_blkaddr) << CFS_BLKSZ_BITS;
	if (img->meta_off >= img->size)
		return diag_set(diag, -EFSCORRUPTED, "metadata block address %u beyond the image",
				le32toh(sb->meta_blkaddr));
	if (img->xattr_off > img->size)
		return diag_set(diag, -EFSCORRUPTED, "shared xattr block address %u beyond the image",
				le32toh(sb->xattr_blkaddr));

	img->info = (struct cfs_img_info){
		.header_version = le32toh(h->version),
		.header_flags = le32toh(h->flags),
		.composefs_version = le32toh(h->composefs_version),
		.blksz = CFS_BLKSZ,
		.root_nid = le16toh(sb->root_nid),
		.inodes = le64toh(sb->inos),
		.build_time = le64toh(sb->build_time),
		.build_time_nsec = le32toh(sb->build_time_nsec),
		.image_size = img->size,
	};

	r = cfs_img_read_inode(img, img->info.root_nid, &root);
	if (r < 0)
		return diag_set(diag, r, "bad root inode (nid %" PRIu64 ")", img->info.root_nid);
	if (!S_ISDIR(root.mode))
		return diag_set(diag, -EFSCORRUPTED, "root inode (nid %" PRIu64 ") is not a directory",
				img->info.root_nid);
	return 0;
}

int cfs_img_open_mem_ex(const void *data, size_t size, unsigned flags, struct cfs_img_diag *diag,
			struct cfs_image **ret_img)
{
	struct cfs_image *img;
	int r;

	if (diag)
		*diag = (struct cfs_img_diag){ 0 };
	if (flags != 0 || (!data && size))
		return diag_set(diag, -EINVAL, "invalid arguments");

	img = calloc(1, sizeof(*img));
	if (!img)
		return diag_set(diag, -ENOMEM, "out of memory");
	img->refcount = 1;
	img->data = data;
	img->size = size;

	r = img_validate(img, diag);
	if (r < 0) {
		free(img);
		return r;
	}
	*ret_img = img;
	return 0;
}

int cfs_img_open_mem(const void *data, size_t size, unsigned flags, struct cfs_image **ret_img)
{
	return cfs_img_open_mem_ex(data, size, flags, NULL, ret_img);
}

int cfs_img_open_fd_ex(int fd, unsigned flags, struct cfs_img_diag *diag, struct cfs_image **ret_img)
{
	_cleanup_free_ uint8_t *buf = NULL;
	struct cfs_image *img = NULL;
	struct stat st;
	uint64_t size;
	size_t done = 0;
	int r;

	if (diag)
		*diag = (struct cfs_img_diag){ 0 };
	if (flags != 0)
		return diag_set(diag, -EINVAL, "invalid arguments");
	if (fstat(fd, &st) < 0)
		return diag_set(diag, -errno, "cannot stat: %m");
	if (S_ISREG(st.st_mode)) {
		size = (uint64_t)st.st_size;
	} else if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, &size) < 0)
			return diag_set(diag, -errno, "cannot get the block device size: %m");
	} else {
		return diag_set(diag, -EINVAL, "not a regular file or block device");
	}
	if (size > SIZE_MAX || size > (uint64_t)SSIZE_MAX)
		return diag_set(diag, -EFBIG, "image too large");
	if (size < EROFS_SUPER_OFFSET + sizeof(struct erofs_disk_super))
		return diag_set(diag, -EFSCORRUPTED, "image too small (%" PRIu64 " bytes)", size);

	/* Large images in huge pages where the kernel has them: reading 16 MiB
	 * into 4 KiB pages spent more time faulting them in than copying. */
	if (size >= HUGE_PAGE_SIZE) {
		if (posix_memalign((void **)&buf, HUGE_PAGE_SIZE, size) != 0)
			buf = NULL;
		else
			(void)madvise(buf, size, MADV_HUGEPAGE);
	} else {
		buf = malloc(size);
	}
	if (!buf)
		return diag_set(diag, -ENOMEM, "out of memory reading %" PRIu64 " bytes", size);
	while (done < size) {
		ssize_t n = pread(fd, buf + done, size - done, (off_t)done);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return diag_set(diag, -errno, "read error: %m");
		}
		if (n == 0)
			return diag_set(diag, -EIO, "image shrank while reading it");
		done += (size_t)n;
	}

	r = cfs_img_open_mem_ex(buf, size, 0, diag, &img);
	if (r < 0)
		return r;
	img->owned = steal_ptr(&buf);
	*ret_img = img;
	return 0;
}

int cfs_img_open_fd(int fd, unsigned flags, struct cfs_image **ret_img)
{
	return cfs_img_open_fd_ex(fd, flags, NULL, ret_img);
}

struct cfs_image *cfs_img_ref(struct cfs_image *img)
{
	if (img)
		__atomic_add_fetch(&img->refcount, 1, __ATOMIC_RELAXED);
	return img;
}

struct cfs_image *cfs_img_unref(struct cfs_image *img)
{
	if (!img)
		return NULL;
	if (__atomic_sub_fetch(&img->refcount, 1, __ATOMIC_ACQ_REL) == 0) {
		free(img->owned);
		free(img);
	}
	return NULL;
}

const uint8_t *cfs_img_bytes(const struct cfs_image *img, size_t *ret_size)
{
	if (ret_size)
		*ret_size = img->size;
	return img->data;
}

void cfs_img_get_info(const struct cfs_image *img, struct cfs_img_info *ret_info)
{
	*ret_info = img->info;
}

uint64_t cfs_img_root_nid(const struct cfs_image *img)
{
	return img->info.root_nid;
}

/* ------------------------------------------------------------------ */
/* Inodes                                                               */

static int nid_to_off(const struct cfs_image *img, uint64_t nid, uint64_t *ret_off)
{
	uint64_t off;

	if (nid > (UINT64_MAX >> EROFS_ISLOTBITS) ||
	    __builtin_add_overflow(img->meta_off, nid << EROFS_ISLOTBITS, &off) ||
	    !img_ptr(img, off, sizeof(struct erofs_disk_inode_compact)))
		return CORRUPT("inode nid %llu is beyond the image", ULL(nid));
	*ret_off = off;
	return 0;
}

static inline uint64_t xattr_isize(const struct cfs_inode *ino)
{
	return erofs_xattr_ibody_size(ino->xattr_icount);
}

/* Byte offset just after the inode and its inline xattrs. */
static inline uint64_t inode_tail_off(const struct cfs_inode *ino)
{
	return ino->inode_off + ino->inode_isize + xattr_isize(ino);
}

static inline uint64_t size_blocks(uint64_t size)
{
	return (size >> CFS_BLKSZ_BITS) + ((size & (CFS_BLKSZ - 1)) != 0);
}

static inline bool has_data(uint32_t mode)
{
	return S_ISREG(mode) || S_ISDIR(mode) || S_ISLNK(mode);
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

	r = nid_to_off(img, nid, &ino.inode_off);
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

/* Map logical block @lblk of @ino to its bytes.  *ret_p is NULL for a hole
 * (reads as zeros); *ret_len is the number of valid bytes of the block. */
static int map_block(const struct cfs_image *img, const struct cfs_inode *ino, uint64_t lblk,
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
/* Directories                                                          */

static unsigned erofs_ft_to_dtype(uint8_t ft)
{
	static const unsigned char map[EROFS_FT_MAX] = {
		[EROFS_FT_UNKNOWN] = DT_UNKNOWN, [EROFS_FT_REG_FILE] = DT_REG,
		[EROFS_FT_DIR] = DT_DIR,         [EROFS_FT_CHRDEV] = DT_CHR,
		[EROFS_FT_BLKDEV] = DT_BLK,      [EROFS_FT_FIFO] = DT_FIFO,
		[EROFS_FT_SOCK] = DT_SOCK,       [EROFS_FT_SYMLINK] = DT_LNK,
	};
	return ft < EROFS_FT_MAX ? map[ft] : DT_UNKNOWN;
}

/* One validated directory block. */
struct dir_block {
	const uint8_t *p;
	size_t len;     /* valid bytes: min(blksz, i_size - block start) */
	unsigned ndirents;
	uint64_t nid, lblk; /* for messages */
};

static int dir_block(const struct cfs_image *img, const struct cfs_inode *dir, uint64_t lblk,
		     struct dir_block *ret)
{
	const uint8_t *p;
	size_t len;
	uint16_t nameoff;
	int r;

	r = map_block(img, dir, lblk, &p, &len);
	if (r < 0)
		return r;
	if (!p)
		return CORRUPT("directory nid %llu: hole at block %llu", ULL(dir->nid), ULL(lblk));
	if (len < sizeof(struct erofs_disk_dirent))
		return CORRUPT("directory nid %llu: block %llu too short", ULL(dir->nid), ULL(lblk));
	/* de[0].nameoff gives the number of dirents (kernel fs/erofs/dir.c) */
	nameoff = get_le16(p + offsetof(struct erofs_disk_dirent, nameoff));
	if (nameoff < sizeof(struct erofs_disk_dirent) || nameoff >= len ||
	    nameoff % sizeof(struct erofs_disk_dirent))
		return CORRUPT("directory nid %llu: bad de[0].nameoff %u in block %llu", ULL(dir->nid),
			       nameoff, ULL(lblk));
	ret->p = p;
	ret->len = len;
	ret->ndirents = nameoff / sizeof(struct erofs_disk_dirent);
	ret->nid = dir->nid;
	ret->lblk = lblk;
	return 0;
}

/* Decode dirent @i of a validated block: name bounds and nid range. */
static int dir_entry(const struct cfs_image *img, const struct dir_block *b, unsigned i,
		     const char **ret_name, size_t *ret_namelen, uint64_t *ret_nid, uint8_t *ret_ft)
{
	const uint8_t *de = b->p + (size_t)i * sizeof(struct erofs_disk_dirent);
	size_t nameoff = get_le16(de + offsetof(struct erofs_disk_dirent, nameoff)), namelen;
	size_t first = b->ndirents * sizeof(struct erofs_disk_dirent);
	uint64_t off;

	if (nameoff < first || nameoff >= b->len)
		goto bad_name;
	if (i + 1 < b->ndirents) {
		size_t next = get_le16(de + sizeof(struct erofs_disk_dirent) +
				       offsetof(struct erofs_disk_dirent, nameoff));
		if (next <= nameoff || next > b->len)
			goto bad_name;
		namelen = next - nameoff;
	} else {
		/* The last name ends at the first NUL or the end of the data. */
		namelen = strnlen((const char *)b->p + nameoff, b->len - nameoff);
		if (namelen == 0)
			goto bad_name;
	}
	if (namelen > EROFS_NAME_LEN)
		goto bad_name;
	*ret_nid = get_le64(de);
	if (nid_to_off(img, *ret_nid, &off) < 0)
		return CORRUPT("directory nid %llu: entry %u of block %llu points at nid %llu beyond the image",
			       ULL(b->nid), i, ULL(b->lblk), ULL(*ret_nid));
	*ret_name = (const char *)b->p + nameoff;
	*ret_namelen = namelen;
	*ret_ft = de[offsetof(struct erofs_disk_dirent, file_type)];
	return 0;
bad_name:
	return CORRUPT("directory nid %llu: bad name offset or length in entry %u of block %llu",
		       ULL(b->nid), i, ULL(b->lblk));
}

static bool name_ok(const char *name, size_t len)
{
	return !memchr(name, '/', len) && !memchr(name, '\0', len);
}

static int iterate_dir(const struct cfs_image *img, const struct cfs_inode *dir, uint64_t cookie,
		       bool strict, cfs_dirent_fn fn, void *userdata)
{
	uint64_t nblocks;

	if (!S_ISDIR(dir->mode))
		return -ENOTDIR;
	nblocks = size_blocks(dir->size);

	/* A cookie is blockno * blksz + dirent index * 12 (the kernel's
	 * readdir position); anything else is rounded up to the next dirent. */
	for (uint64_t lblk = cookie >> CFS_BLKSZ_BITS; lblk < nblocks; lblk++) {
		unsigned ofs = (unsigned)(cookie & (CFS_BLKSZ - 1)), start;
		struct dir_block b;
		int r;

		if (lblk != cookie >> CFS_BLKSZ_BITS)
			ofs = 0;
		start = (ofs + sizeof(struct erofs_disk_dirent) - 1) / sizeof(struct erofs_disk_dirent);

		r = dir_block(img, dir, lblk, &b);
		if (r < 0)
			return r;
		for (unsigned i = start; i < b.ndirents; i++) {
			const char *name;
			size_t namelen;
			uint64_t nid, next;
			uint8_t ft;

			r = dir_entry(img, &b, i, &name, &namelen, &nid, &ft);
			if (r < 0)
				return r;
			if (strict && !name_ok(name, namelen))
				return CORRUPT("directory nid %llu: a name contains '/' or NUL",
					       ULL(dir->nid));
			next = i + 1 < b.ndirents ?
				       (lblk << CFS_BLKSZ_BITS) + (uint64_t)(i + 1) * sizeof(struct erofs_disk_dirent) :
				       (lblk + 1) << CFS_BLKSZ_BITS;
			r = fn(userdata, name, namelen, nid, erofs_ft_to_dtype(ft), next);
			if (r != 0)
				return r;
		}
	}
	return 0;
}

int cfs_img_iterate_dir(const struct cfs_image *img, const struct cfs_inode *dir, uint64_t cookie,
			cfs_dirent_fn fn, void *userdata)
{
	return iterate_dir(img, dir, cookie, true, fn, userdata);
}

int cfs_img_iterate_dir_raw(const struct cfs_image *img, const struct cfs_inode *dir,
			    uint64_t cookie, cfs_dirent_fn fn, void *userdata)
{
	return iterate_dir(img, dir, cookie, false, fn, userdata);
}

/* ------------------------------------------------------------------ */
/* Whole-tree walk                                                      */

struct walk_one {
	bool got;
	const char *name; /* borrowed from the image */
	size_t namelen;
	uint64_t nid, next;
};

static int walk_one_cb(void *userdata, const char *name, size_t namelen, uint64_t nid,
		       unsigned dtype, uint64_t next_cookie)
{
	struct walk_one *w = userdata;

	*w = (struct walk_one){ true, name, namelen, nid, next_cookie };
	return 1;
}

uint64_t cfs_img_dirent_budget(const struct cfs_image *img)
{
	/* Every dirent takes at least 13 bytes of directory data, and in a
	 * sane image no two directories share data; only a hostile image can
	 * make a walk meet more entries than this (by pointing many directory
	 * inodes at the same blocks), which would make walks quadratic. */
	return img->size / sizeof(struct erofs_disk_dirent) + 64;
}

struct walk_frame {
	struct cfs_inode dir;
	uint64_t cookie;
	size_t pathlen;
};

int cfs_img_walk(const struct cfs_image *img, cfs_walk_fn fn, void *userdata)
{
	_cleanup_free_ struct walk_frame *stack = NULL;
	_cleanup_free_ uint8_t *visited = NULL;
	_cleanup_free_ char *path = NULL;
	size_t depth = 0, cap = 0, path_cap = 0;
	uint64_t nslots = (img->size - img->meta_off) >> EROFS_ISLOTBITS;
	uint64_t budget = cfs_img_dirent_budget(img);
	struct cfs_inode root;
	int r;

	r = cfs_img_read_inode(img, img->info.root_nid, &root);
	if (r < 0)
		return r;
	/* One bit per possible nid: nid_to_off() bounds nids by the image. */
	visited = calloc(nslots / 8 + 1, 1);
	if (!visited || CFS_GROW(stack, cap, 1) < 0 || CFS_GROW(path, path_cap, 1) < 0)
		return -ENOMEM;
	visited[root.nid / 8] |= 1U << (root.nid % 8);
	path[0] = '\0';
	stack[depth++] = (struct walk_frame){ root, 0, 0 };

	while (depth > 0) {
		struct walk_frame *f = &stack[depth - 1];
		struct walk_one e = { 0 };
		struct cfs_inode ino;
		size_t len;
		bool first;

		r = iterate_dir(img, &f->dir, f->cookie, true, walk_one_cb, &e);
		if (r < 0)
			return r;
		if (!e.got) {
			depth--;
			continue;
		}
		if (budget-- == 0)
			return CORRUPT("more directory entries than the image can hold: directories share data");
		f->cookie = e.next;
		if ((e.namelen == 1 && e.name[0] == '.') ||
		    (e.namelen == 2 && e.name[0] == '.' && e.name[1] == '.'))
			continue;
		r = cfs_img_read_inode(img, e.nid, &ino);
		if (r < 0)
			return r;
		first = !(visited[e.nid / 8] & (1U << (e.nid % 8)));
		visited[e.nid / 8] |= 1U << (e.nid % 8);

		len = f->pathlen + 1 + e.namelen;
		if (cfs_path_append(&path, &path_cap, f->pathlen, e.name, e.namelen) < 0)
			return -ENOMEM;

		r = fn(userdata, &f->dir, path, len, path + f->pathlen + 1, e.namelen, &ino, first);
		if (r != 0)
			return r;
		if (first && S_ISDIR(ino.mode)) {
			if (CFS_GROW(stack, cap, depth + 1) < 0)
				return -ENOMEM;
			stack[depth++] = (struct walk_frame){ ino, 0, len };
		}
	}
	return 0;
}

/* Byte-wise name order, shorter first on a common prefix (kernel namei.c). */
static int name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
	int c = memcmp(a, b, alen < blen ? alen : blen);

	if (c)
		return c;
	return alen < blen ? -1 : alen > blen;
}

int cfs_img_lookup(const struct cfs_image *img, const struct cfs_inode *dir, const char *name,
		   size_t namelen, uint64_t *ret_nid, unsigned *ret_dtype)
{
	uint64_t lo = 0, hi, target = UINT64_MAX;
	struct dir_block b;
	int r;

	if (!S_ISDIR(dir->mode))
		return -ENOTDIR;
	if (namelen == 0 || namelen > EROFS_NAME_LEN)
		return -ENOENT;
	hi = size_blocks(dir->size);

	/* Find the last block whose first name is <= @name (names are sorted
	 * across blocks), then search inside it. */
	while (lo < hi) {
		uint64_t mid = lo + (hi - lo) / 2;
		const char *n;
		size_t nl;
		uint64_t nid;
		uint8_t ft;
		int c;

		r = dir_block(img, dir, mid, &b);
		if (r < 0)
			return r;
		r = dir_entry(img, &b, 0, &n, &nl, &nid, &ft);
		if (r < 0)
			return r;
		c = name_cmp(name, namelen, n, nl);
		if (c == 0) {
			*ret_nid = nid;
			if (ret_dtype)
				*ret_dtype = erofs_ft_to_dtype(ft);
			return 0;
		}
		if (c < 0) {
			hi = mid;
		} else {
			target = mid;
			lo = mid + 1;
		}
	}
	if (target == UINT64_MAX)
		return -ENOENT;

	r = dir_block(img, dir, target, &b);
	if (r < 0)
		return r;
	{
		unsigned l = 1, h = b.ndirents; /* entry 0 is already known to be smaller */

		while (l < h) {
			unsigned mid = l + (h - l) / 2;
			const char *n;
			size_t nl;
			uint64_t nid;
			uint8_t ft;
			int c;

			r = dir_entry(img, &b, mid, &n, &nl, &nid, &ft);
			if (r < 0)
				return r;
			c = name_cmp(name, namelen, n, nl);
			if (c == 0) {
				*ret_nid = nid;
				if (ret_dtype)
					*ret_dtype = erofs_ft_to_dtype(ft);
				return 0;
			}
			if (c < 0)
				h = mid;
			else
				l = mid + 1;
		}
	}
	return -ENOENT;
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

		r = map_block(img, ino, lblk, &p, &blen);
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

/* ------------------------------------------------------------------ */
/* Extended attributes                                                  */

static const char *const xattr_prefixes[] = {
	[0] = "",
	[EROFS_XATTR_INDEX_USER] = "user.",
	[EROFS_XATTR_INDEX_POSIX_ACL_ACCESS] = "system.posix_acl_access",
	[EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT] = "system.posix_acl_default",
	[EROFS_XATTR_INDEX_TRUSTED] = "trusted.",
	[EROFS_XATTR_INDEX_LUSTRE] = "lustre.",
	[EROFS_XATTR_INDEX_SECURITY] = "security.",
};

const char *cfs_img_xattr_prefix(uint8_t index)
{
	return index < ARRAY_SIZE(xattr_prefixes) ? xattr_prefixes[index] : NULL;
}

/* A decoded xattr entry: pointers into the image. */
struct xentry {
	uint8_t index;
	const char *name;
	size_t name_len;
	const uint8_t *value;
	size_t value_len;
	uint64_t size; /* on-disk size, padded to 4 bytes */
};

/* Decode the xattr entry at @off, which must end by @limit. */
static int xattr_entry(const struct cfs_image *img, uint64_t nid, uint64_t off, uint64_t limit,
		       struct xentry *ret)
{
	const uint8_t *p = img_ptr(img, off, sizeof(struct erofs_disk_xattr_entry));
	struct erofs_disk_xattr_entry e;
	uint64_t end;

	if (!p)
		goto bad;
	memcpy(&e, p, sizeof(e));
	ret->index = e.e_name_index;
	ret->name_len = e.e_name_len;
	ret->value_len = le16toh(e.e_value_size);
	ret->size = erofs_xattr_entry_size(e.e_name_len, ret->value_len);
	if (__builtin_add_overflow(off, ret->size, &end) || end > limit ||
	    !img_ptr(img, off, sizeof(e) + ret->name_len + ret->value_len))
		goto bad;
	ret->name = (const char *)p + sizeof(e);
	ret->value = p + sizeof(e) + ret->name_len;
	return 0;
bad:
	return CORRUPT("inode nid %llu: xattr entry at byte %llu overruns its area", ULL(nid), ULL(off));
}

int cfs_img_iterate_raw_xattrs(const struct cfs_image *img, const struct cfs_inode *ino,
			       cfs_raw_xattr_fn fn, void *userdata)
{
	const uint8_t *h;
	uint64_t start, end, off, ids;
	unsigned shared;
	int r;

	if (ino->xattr_icount == 0)
		return 0;
	start = ino->inode_off + ino->inode_isize;
	end = start + xattr_isize(ino);
	h = img_ptr(img, start, end - start);
	if (!h)
		return CORRUPT("inode nid %llu: xattr area beyond the image", ULL(ino->nid));
	shared = h[offsetof(struct erofs_disk_xattr_ibody_header, h_shared_count)];
	ids = start + sizeof(struct erofs_disk_xattr_ibody_header);
	off = ids + (uint64_t)shared * 4;
	if (off > end)
		return CORRUPT("inode nid %llu: %u shared xattrs overrun the xattr area", ULL(ino->nid),
			       shared);

	/* Inline entries fill the rest of the area exactly (kernel xattr.c). */
	while (off < end) {
		struct xentry e;

		r = xattr_entry(img, ino->nid, off, end, &e);
		if (r < 0)
			return r;
		r = fn(userdata, e.index, e.name, e.name_len, e.value, e.value_len);
		if (r != 0)
			return r;
		off += e.size;
	}

	for (unsigned i = 0; i < shared; i++) {
		uint64_t id = get_le32(img->data + ids + 4 * (uint64_t)i);
		struct xentry e;

		r = xattr_entry(img, ino->nid, img->xattr_off + id * 4, img->size, &e);
		if (r < 0)
			return r;
		r = fn(userdata, e.index, e.name, e.name_len, e.value, e.value_len);
		if (r != 0)
			return r;
	}
	return 0;
}

struct xattr_iter_ctx {
	cfs_xattr_fn fn;
	void *userdata;
};

#define XATTR_FULL_NAME_MAX (24 + EROFS_NAME_LEN + 1)

static int full_xattr_name(uint8_t index, const char *suffix, size_t suffix_len,
			   char buf[XATTR_FULL_NAME_MAX])
{
	const char *prefix = cfs_img_xattr_prefix(index);
	size_t plen;

	if (!prefix || memchr(suffix, '\0', suffix_len))
		return CORRUPT("xattr name with an unknown prefix or a NUL byte");
	plen = strlen(prefix);
	if (plen + suffix_len == 0)
		return CORRUPT("empty xattr name");
	memcpy(buf, prefix, plen);
	memcpy(buf + plen, suffix, suffix_len);
	buf[plen + suffix_len] = '\0';
	return 0;
}

/* The indexes the kernel exposes (fs/erofs/xattr.h has handlers for user,
 * the two POSIX ACLs, trusted and security); entries with any other index
 * (none, lustre, unknown) are invisible through a mount. */
static bool xattr_index_visible(uint8_t index)
{
	return index == EROFS_XATTR_INDEX_USER || index == EROFS_XATTR_INDEX_POSIX_ACL_ACCESS ||
	       index == EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT || index == EROFS_XATTR_INDEX_TRUSTED ||
	       index == EROFS_XATTR_INDEX_SECURITY;
}

static int xattr_iter_cb(void *userdata, uint8_t index, const char *suffix, size_t suffix_len,
			 const uint8_t *value, size_t value_len)
{
	struct xattr_iter_ctx *c = userdata;
	char name[XATTR_FULL_NAME_MAX];
	int r;

	if (!xattr_index_visible(index))
		return 0;
	r = full_xattr_name(index, suffix, suffix_len, name);
	if (r < 0)
		return r;
	return c->fn(c->userdata, name, value, value_len);
}

int cfs_img_iterate_xattrs(const struct cfs_image *img, const struct cfs_inode *ino,
			   cfs_xattr_fn fn, void *userdata)
{
	struct xattr_iter_ctx c = { fn, userdata };

	return cfs_img_iterate_raw_xattrs(img, ino, xattr_iter_cb, &c);
}

/* The inode's bloom filter says the name is certainly absent: a set bit
 * marks a hash no name of the inode has (the kernel's erofs_getxattr()). */
static bool xattr_filtered_out(const struct cfs_image *img, const struct cfs_inode *ino,
			       uint8_t index, const char *suffix, size_t suffix_len)
{
	const uint8_t *h;
	uint32_t filter;

	if (!img->xattr_filter || ino->xattr_icount == 0)
		return false;
	h = img_ptr(img, ino->inode_off + ino->inode_isize, sizeof(uint32_t));
	if (!h)
		return false; /* the walk reports the damage */
	filter = get_le32(h);
	return filter & erofs_xattr_filter_bit(index, suffix, suffix_len);
}

struct xattr_get_ctx {
	uint8_t index;
	const char *suffix;
	size_t suffix_len;
	const uint8_t *value;
	size_t value_len;
};

static int xattr_get_cb(void *userdata, uint8_t index, const char *suffix, size_t suffix_len,
			const uint8_t *value, size_t value_len)
{
	struct xattr_get_ctx *c = userdata;

	if (index != c->index || suffix_len != c->suffix_len || memcmp(suffix, c->suffix, suffix_len))
		return 0;
	c->value = value;
	c->value_len = value_len;
	return 1;
}

int cfs_img_get_xattr(const struct cfs_image *img, const struct cfs_inode *ino, const char *name,
		      const uint8_t **ret_value, size_t *ret_len)
{
	struct xattr_get_ctx c = { 0 };
	size_t plen = 0;
	int r;

	/* Split @name into its prefix index and the rest, the way writers
	 * store it (no visible prefix is a prefix of another). */
	for (uint8_t i = 1; i < ARRAY_SIZE(xattr_prefixes); i++) {
		plen = strlen(xattr_prefixes[i]);
		if (xattr_index_visible(i) && strncmp(name, xattr_prefixes[i], plen) == 0) {
			c.index = i;
			break;
		}
	}
	if (!c.index)
		return -ENODATA;
	c.suffix = name + plen;
	c.suffix_len = strlen(c.suffix);
	if (c.suffix_len > EROFS_NAME_LEN)
		return -ENODATA;
	if (xattr_filtered_out(img, ino, c.index, c.suffix, c.suffix_len))
		return -ENODATA;

	r = cfs_img_iterate_raw_xattrs(img, ino, xattr_get_cb, &c);
	if (r < 0)
		return r;
	if (r == 0)
		return -ENODATA;
	*ret_value = c.value;
	*ret_len = c.value_len;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Overlay metadata of external files                                   */

#define OVL_METACOPY_HDR 4
#define FS_VERITY_ALG_SHA256 1

int cfs_img_get_backing(const struct cfs_image *img, const struct cfs_inode *ino,
			struct cfs_backing *ret_backing)
{
	struct cfs_backing b = { 0 };
	const uint8_t *v;
	size_t len;
	int r;

	if (!S_ISREG(ino->mode)) {
		*ret_backing = b;
		return 0;
	}

	r = cfs_img_get_xattr(img, ino, CFS_OVL_METACOPY, &v, &len);
	if (r < 0 && r != -ENODATA)
		return r;
	if (r == 0) {
		b.is_external = true;
		/* struct ovl_metacopy: version 0, len, flags, digest_algo,
		 * digest; empty means no digest (overlayfs ovl_check_metacopy_xattr). */
		if (len != 0) {
			if (len < OVL_METACOPY_HDR || v[0] != 0 || v[1] != len)
				return CORRUPT("inode nid %llu: malformed overlay metacopy xattr",
					       ULL(ino->nid));
			if (len > OVL_METACOPY_HDR) {
				if (len != OVL_METACOPY_HDR + CFS_DIGEST_SIZE || v[3] != FS_VERITY_ALG_SHA256)
					return CORRUPT("inode nid %llu: unsupported overlay metacopy digest",
						       ULL(ino->nid));
				b.has_digest = true;
				memcpy(b.digest, v + OVL_METACOPY_HDR, CFS_DIGEST_SIZE);
			}
		}
	}

	r = cfs_img_get_xattr(img, ino, CFS_OVL_REDIRECT, &v, &len);
	if (r < 0 && r != -ENODATA)
		return r;
	if (r == 0) {
		b.redirect = (const char *)v;
		b.redirect_len = len;
	}
	*ret_backing = b;
	return 0;
}
