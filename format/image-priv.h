/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What the reader's files (image.c: opening and the superblock;
 * image-inode.c: inodes and file data; image-dir.c: directories, lookup and
 * walks; image-xattr.c: xattrs and overlay metadata) share, and nothing
 * else includes.  img_ptr() here is the only place an image offset becomes
 * a pointer: every other access goes through it.
 */
#pragma once

#include <endian.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#include "cfs-image.h"
#include "erofs-disk.h"
#include "image-internal.h"

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

#define CORRUPT(...) cfs_img_fail(-EFSCORRUPTED, __VA_ARGS__)
#define UNSUPPORTED(...) cfs_img_fail(-EOPNOTSUPP, __VA_ARGS__)
#define ULL(x) ((unsigned long long)(x))

/* The only place an image offset becomes a pointer. */
static inline const uint8_t *img_ptr(const struct cfs_image *img, uint64_t off, uint64_t len)
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

static inline uint64_t size_blocks(uint64_t size)
{
	return (size >> CFS_BLKSZ_BITS) + ((size & (CFS_BLKSZ - 1)) != 0);
}

static inline bool has_data(uint32_t mode)
{
	return S_ISREG(mode) || S_ISDIR(mode) || S_ISLNK(mode);
}

static inline uint64_t xattr_isize(const struct cfs_inode *ino)
{
	return erofs_xattr_ibody_size(ino->xattr_icount);
}

/* Byte offset of inode @nid, checked to hold at least a compact inode. */
int cfs_img_nid_to_off(const struct cfs_image *img, uint64_t nid, uint64_t *ret_off);
/* Map logical block @lblk of @ino to its bytes.  *ret_p is NULL for a hole
 * (reads as zeros); *ret_len is the number of valid bytes of the block. */
int cfs_img_map_block(const struct cfs_image *img, const struct cfs_inode *ino, uint64_t lblk,
		      const uint8_t **ret_p, size_t *ret_len);
