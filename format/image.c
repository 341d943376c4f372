/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The composefs image reader: a bounds-checked, lock-free view of an EROFS
 * image with a composefs header, held in memory.  This file opens and
 * validates an image (header, superblock, regions, root); image-inode.c,
 * image-dir.c and image-xattr.c read it, split along the format as the
 * kernel's fs/erofs is; image-priv.h is what they share.
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

#include "image-priv.h"

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
	cfs_img_vfail(r, fmt, ap);
	va_end(ap);
	if (diag)
		snprintf(diag->reason, sizeof(diag->reason), "%s", cfs_img_error_detail());
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
