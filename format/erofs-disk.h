/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * On-disk structures of the composefs header and of the EROFS subset that
 * composefs images use (uncompressed: flat plain, flat inline, chunk based).
 * All multi-byte fields are little-endian; decode with le*toh() into host
 * structs, never byte-swap in place.  Layout from the kernel's
 * Documentation/filesystems/erofs.rst and fs/erofs/erofs_fs.h.
 */
#pragma once

#include <assert.h>
#include <endian.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef uint16_t __cfs_le16;
typedef uint32_t __cfs_le32;
typedef uint64_t __cfs_le64;

/* The composefs header occupies the first bytes of block 0. */
struct cfs_disk_header {
	__cfs_le32 magic;             /* CFS_MAGIC */
	__cfs_le32 version;           /* CFS_HEADER_VERSION */
	__cfs_le32 flags;             /* CFS_HEADER_FLAGS_* */
	__cfs_le32 composefs_version; /* format version 0 or 1 */
	__cfs_le32 unused[4];
};
static_assert(sizeof(struct cfs_disk_header) == 32, "composefs header layout");

#define EROFS_SUPER_MAGIC_V1 0xE0F5E1E2U
#define EROFS_SUPER_OFFSET 1024
#define EROFS_ISLOTBITS 5 /* nids count 32-byte slots */
#define EROFS_SLOTSIZE (1U << EROFS_ISLOTBITS)

#define EROFS_FEATURE_COMPAT_SB_CHKSUM 0x00000001
#define EROFS_FEATURE_COMPAT_MTIME 0x00000002
#define EROFS_FEATURE_COMPAT_XATTR_FILTER 0x00000004

#define EROFS_FEATURE_INCOMPAT_ZERO_PADDING 0x00000001
#define EROFS_FEATURE_INCOMPAT_COMPR_CFGS 0x00000002
#define EROFS_FEATURE_INCOMPAT_CHUNKED_FILE 0x00000004
#define EROFS_FEATURE_INCOMPAT_DEVICE_TABLE 0x00000008
#define EROFS_FEATURE_INCOMPAT_ZTAILPACKING 0x00000010
#define EROFS_FEATURE_INCOMPAT_FRAGMENTS 0x00000020
#define EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES 0x00000040

struct erofs_disk_super {
	__cfs_le32 magic;
	__cfs_le32 checksum;       /* crc32c, only with COMPAT_SB_CHKSUM */
	__cfs_le32 feature_compat;
	uint8_t blkszbits;
	uint8_t sb_extslots;
	__cfs_le16 root_nid;
	__cfs_le64 inos;
	__cfs_le64 build_time;
	__cfs_le32 build_time_nsec;
	__cfs_le32 blocks;
	__cfs_le32 meta_blkaddr;
	__cfs_le32 xattr_blkaddr;
	uint8_t uuid[16];
	uint8_t volume_name[16];
	__cfs_le32 feature_incompat;
	__cfs_le16 u1;             /* compression only */
	__cfs_le16 extra_devices;
	__cfs_le16 devt_slotoff;
	uint8_t dirblkbits;
	uint8_t xattr_prefix_count;
	__cfs_le32 xattr_prefix_start;
	__cfs_le64 packed_nid;
	uint8_t xattr_filter_reserved;
	uint8_t reserved2[23];
} __attribute__((packed));
static_assert(sizeof(struct erofs_disk_super) == 128, "EROFS superblock layout");

enum {
	EROFS_INODE_FLAT_PLAIN = 0,
	EROFS_INODE_COMPRESSED_FULL = 1,
	EROFS_INODE_FLAT_INLINE = 2,
	EROFS_INODE_COMPRESSED_COMPACT = 3,
	EROFS_INODE_CHUNK_BASED = 4,
};

/* i_format: bit 0 = layout (compact/extended), bits 1-3 = data layout. */
#define EROFS_I_VERSION_MASK 0x01
#define EROFS_I_DATALAYOUT_BIT 1
#define EROFS_I_DATALAYOUT_MASK 0x07
#define EROFS_I_ALL 0x0f
#define EROFS_INODE_LAYOUT_COMPACT 0
#define EROFS_INODE_LAYOUT_EXTENDED 1

#define EROFS_CHUNK_FORMAT_BLKBITS_MASK 0x001F
#define EROFS_CHUNK_FORMAT_INDEXES 0x0020
#define EROFS_NULL_ADDR 0xffffffffU /* a hole in a chunk table */

struct erofs_disk_inode_compact {
	__cfs_le16 i_format;
	__cfs_le16 i_xattr_icount;
	__cfs_le16 i_mode;
	__cfs_le16 i_nlink;
	__cfs_le32 i_size;
	__cfs_le32 i_reserved;
	__cfs_le32 i_u;            /* raw_blkaddr | rdev | chunk format (le16) */
	__cfs_le32 i_ino;
	__cfs_le16 i_uid;
	__cfs_le16 i_gid;
	__cfs_le32 i_reserved2;
};
static_assert(sizeof(struct erofs_disk_inode_compact) == 32, "EROFS compact inode layout");

struct erofs_disk_inode_extended {
	__cfs_le16 i_format;
	__cfs_le16 i_xattr_icount;
	__cfs_le16 i_mode;
	__cfs_le16 i_reserved;
	__cfs_le64 i_size;
	__cfs_le32 i_u;
	__cfs_le32 i_ino;
	__cfs_le32 i_uid;
	__cfs_le32 i_gid;
	__cfs_le64 i_mtime;
	__cfs_le32 i_mtime_nsec;
	__cfs_le32 i_nlink;
	uint8_t i_reserved2[16];
} __attribute__((packed));
static_assert(sizeof(struct erofs_disk_inode_extended) == 64, "EROFS extended inode layout");

/* Inline xattr area: a header, then i_xattr_icount - 1 more 4-byte slots
 * holding h_shared_count shared-xattr ids followed by inline entries. */
struct erofs_disk_xattr_ibody_header {
	__cfs_le32 h_name_filter;  /* bloom filter, only with COMPAT_XATTR_FILTER */
	uint8_t h_shared_count;
	uint8_t h_reserved2[7];
	/* __le32 h_shared_xattrs[h_shared_count]; */
};
static_assert(sizeof(struct erofs_disk_xattr_ibody_header) == 12, "EROFS xattr ibody layout");

/* Name prefix indexes of xattr entries. */
#define EROFS_XATTR_INDEX_USER 1
#define EROFS_XATTR_INDEX_POSIX_ACL_ACCESS 2
#define EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT 3
#define EROFS_XATTR_INDEX_TRUSTED 4
#define EROFS_XATTR_INDEX_LUSTRE 5
#define EROFS_XATTR_INDEX_SECURITY 6
#define EROFS_XATTR_LONG_PREFIX 0x80 /* long prefixes, not used by composefs */

struct erofs_disk_xattr_entry {
	uint8_t e_name_len;
	uint8_t e_name_index;
	__cfs_le16 e_value_size;
	/* char e_name[e_name_len]; value; padded to 4 bytes */
};
static_assert(sizeof(struct erofs_disk_xattr_entry) == 4, "EROFS xattr entry layout");

static inline unsigned erofs_xattr_ibody_size(unsigned icount)
{
	return icount ? sizeof(struct erofs_disk_xattr_ibody_header) + (icount - 1) * 4 : 0;
}

static inline unsigned erofs_xattr_entry_size(unsigned name_len, unsigned value_size)
{
	return (sizeof(struct erofs_disk_xattr_entry) + name_len + value_size + 3) & ~3U;
}

/* The xattr name bloom filter (EROFS_FEATURE_COMPAT_XATTR_FILTER): bit
 * xxh32(name suffix, seed + prefix index) % 32 of h_name_filter is CLEAR
 * when the inode may have that name (kernel fs/erofs/xattr.c). */
#define EROFS_XATTR_FILTER_BITS 32
#define EROFS_XATTR_FILTER_SEED 0x25BBE08FU

static inline uint32_t erofs_xxh32_rotl(uint32_t x, unsigned r)
{
	return (x << r) | (x >> (32 - r));
}

static inline uint32_t erofs_xxh32_le32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return le32toh(v);
}

/* xxHash32, as the XXH32 specification defines it. */
static inline uint32_t erofs_xxh32(const void *data, size_t len, uint32_t seed)
{
	static const uint32_t P1 = 2654435761U, P2 = 2246822519U, P3 = 3266489917U, P4 = 668265263U,
			      P5 = 374761393U;
	const uint8_t *p = data, *end = p + len;
	uint32_t h;

	if (len >= 16) {
		uint32_t v[4] = { seed + P1 + P2, seed + P2, seed, seed - P1 };

		for (; end - p >= 16; p += 16)
			for (int k = 0; k < 4; k++)
				v[k] = erofs_xxh32_rotl(v[k] + erofs_xxh32_le32(p + 4 * k) * P2, 13) * P1;
		h = erofs_xxh32_rotl(v[0], 1) + erofs_xxh32_rotl(v[1], 7) + erofs_xxh32_rotl(v[2], 12) +
		    erofs_xxh32_rotl(v[3], 18);
	} else {
		h = seed + P5;
	}
	h += (uint32_t)len;
	for (; end - p >= 4; p += 4)
		h = erofs_xxh32_rotl(h + erofs_xxh32_le32(p) * P3, 17) * P4;
	for (; p < end; p++)
		h = erofs_xxh32_rotl(h + *p * P5, 11) * P1;
	h ^= h >> 15;
	h *= P2;
	h ^= h >> 13;
	h *= P3;
	h ^= h >> 16;
	return h;
}

static inline uint32_t erofs_xattr_filter_bit(uint8_t index, const void *suffix, size_t len)
{
	return 1U << (erofs_xxh32(suffix, len, EROFS_XATTR_FILTER_SEED + index) &
		      (EROFS_XATTR_FILTER_BITS - 1));
}

/* Directory blocks: an array of dirents, then their names; the first
 * dirent's nameoff gives the number of dirents.  Names are not
 * NUL-terminated; the last name of a block ends at the block end or at the
 * first NUL. */
struct erofs_disk_dirent {
	__cfs_le64 nid;
	__cfs_le16 nameoff;
	uint8_t file_type;         /* EROFS_FT_* */
	uint8_t reserved;
} __attribute__((packed));
static_assert(sizeof(struct erofs_disk_dirent) == 12, "EROFS dirent layout");

enum {
	EROFS_FT_UNKNOWN,
	EROFS_FT_REG_FILE,
	EROFS_FT_DIR,
	EROFS_FT_CHRDEV,
	EROFS_FT_BLKDEV,
	EROFS_FT_FIFO,
	EROFS_FT_SOCK,
	EROFS_FT_SYMLINK,
	EROFS_FT_MAX
};

#define EROFS_NAME_LEN 255

/* Chunk-based files with EROFS_CHUNK_FORMAT_INDEXES use 8-byte indexes;
 * without it, a plain array of __le32 block addresses. */
struct erofs_disk_chunk_index {
	__cfs_le16 advise;
	__cfs_le16 device_id;
	__cfs_le32 blkaddr;
};
static_assert(sizeof(struct erofs_disk_chunk_index) == 8, "EROFS chunk index layout");
