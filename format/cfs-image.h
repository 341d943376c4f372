/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Read-only access to a composefs image (an EROFS filesystem with a composefs
 * header).  The image is hostile input: every offset is bounds-checked before
 * it becomes a pointer, and every function returns -EFSCORRUPTED rather than
 * reading out of bounds.  After cfs_img_open_*() succeeds the image is
 * immutable and every accessor is lock-free and safe to call from any thread.
 *
 * Errors are negative errno values: -EFSCORRUPTED (corrupt image),
 * -EOPNOTSUPP (unknown incompatible feature or unsupported layout),
 * -ENOENT, -ENOTDIR, -ENODATA, -ERANGE, -ENOMEM, as documented per function.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cfs-util.h"

/* The one EROFS block size composefs images use (the reader refuses others;
 * the writer writes it). */
#define CFS_BLKSZ_BITS 12
#define CFS_BLKSZ (1U << CFS_BLKSZ_BITS)

#define CFS_MAGIC 0xd078629aU
#define CFS_HEADER_VERSION 1
#define CFS_HEADER_FLAGS_HAS_ACL (1U << 0)

struct cfs_image;

/* Image-wide facts, decoded from the composefs header and EROFS superblock. */
struct cfs_img_info {
	uint32_t header_version;    /* composefs header version (1) */
	uint32_t header_flags;      /* CFS_HEADER_FLAGS_* */
	uint32_t composefs_version; /* format version written (0 or 1) */
	uint32_t blksz;             /* EROFS block size (CFS_BLKSZ) */
	uint64_t root_nid;
	uint64_t inodes;            /* superblock inode count */
	uint64_t build_time;        /* mtime of compact inodes */
	uint32_t build_time_nsec;
	uint64_t image_size;
};

/* A decoded inode, host byte order.  Plain value, may be copied freely. */
struct cfs_inode {
	uint64_t nid;
	uint32_t mode;      /* S_IFMT | permission bits, as stored */
	uint32_t nlink;
	uint32_t uid, gid;
	dev_t rdev;         /* decoded device number for S_IFCHR/S_IFBLK */
	uint64_t size;
	int64_t mtime;
	uint32_t mtime_nsec;

	/* Reader internals: where the inode, its xattrs and data live. */
	uint8_t datalayout;    /* EROFS_INODE_FLAT_PLAIN/INLINE/CHUNK_BASED */
	uint16_t xattr_icount;
	uint32_t inode_isize;  /* 32 (compact) or 64 (extended) */
	uint32_t raw_blkaddr;  /* i_u: start block or chunk format */
	uint64_t inode_off;    /* byte offset of the on-disk inode */
};

/* What an external (metacopy) regular file points at. */
struct cfs_backing {
	bool is_external;        /* has trusted.overlay.metacopy */
	bool has_digest;         /* metacopy carries an fs-verity digest */
	uint8_t digest[CFS_DIGEST_SIZE];
	const char *redirect;    /* trusted.overlay.redirect value, borrowed from
	                            the image, NOT NUL-terminated; NULL if absent */
	size_t redirect_len;
};

/* The overlayfs xattrs of a composefs image.  Names under CFS_OVL_PREFIX
 * belong to overlayfs (redirect, metacopy, whiteout markers...); a file's
 * own trusted.overlay.* xattr is stored escaped, under
 * CFS_OVL_ESCAPED_PREFIX, and shown unescaped. */
#define CFS_OVL_PREFIX "trusted.overlay."
#define CFS_OVL_ESCAPED_PREFIX "trusted.overlay.overlay."
#define CFS_OVL_REDIRECT CFS_OVL_PREFIX "redirect"
#define CFS_OVL_METACOPY CFS_OVL_PREFIX "metacopy"

/* Open: validate header, superblock, region bounds and the root inode.
 * cfs_img_open_fd() reads the whole image into memory owned by the image
 * (so later changes to the file cannot change what is served).
 * cfs_img_open_mem() borrows @data, which must outlive the image.
 * @flags: reserved, pass 0. */
int cfs_img_open_fd(int fd, unsigned flags, struct cfs_image **ret_img);
int cfs_img_open_mem(const void *data, size_t size, unsigned flags, struct cfs_image **ret_img);
/* Why an open failed, for messages: filled by the *_ex variants on error. */
struct cfs_img_diag {
	uint32_t unsupported_incompat; /* EROFS feature_incompat bits we refuse */
	char reason[192];              /* one line, no trailing newline */
};
/* As above; on failure, if @diag is not NULL, it describes the reason.
 * -EOPNOTSUPP with diag->unsupported_incompat != 0 names refused features
 * (see cfs_img_incompat_name()). */
int cfs_img_open_fd_ex(int fd, unsigned flags, struct cfs_img_diag *diag, struct cfs_image **ret_img);
int cfs_img_open_mem_ex(const void *data, size_t size, unsigned flags, struct cfs_img_diag *diag,
			struct cfs_image **ret_img);
/* Name of one EROFS feature_incompat bit ("device_table", ...), or NULL. */
const char *cfs_img_incompat_name(uint32_t bit);
struct cfs_image *cfs_img_ref(struct cfs_image *img);
struct cfs_image *cfs_img_unref(struct cfs_image *img); /* takes NULL, returns NULL */
CFS_DEFINE_CLEANUP(struct cfs_image *, cfs_img_unref)

/* A one-line description of the last -EFSCORRUPTED or -EOPNOTSUPP that a
 * cfs_img_* call returned on the calling thread ("directory nid 36: bad
 * de[0].nameoff 13 in block 0"), for log messages.  Thread-local, valid
 * until the thread's next failing call; "" if there was none. */
const char *cfs_img_error_detail(void);

/* The raw image bytes (for digest checks).  Borrowed. */
const uint8_t *cfs_img_bytes(const struct cfs_image *img, size_t *ret_size);
void cfs_img_get_info(const struct cfs_image *img, struct cfs_img_info *ret_info);
uint64_t cfs_img_root_nid(const struct cfs_image *img);

/* Decode inode @nid.  -EFSCORRUPTED if the nid is out of range or the inode
 * is malformed (bad mode, data or inline tail outside the image or crossing
 * a block, xattr area outside the image), -EOPNOTSUPP for compressed or
 * unknown layouts.  O(1), no allocation.  The kernel's st_ino for an erofs
 * inode is its nid. */
int cfs_img_read_inode(const struct cfs_image *img, uint64_t nid, struct cfs_inode *ret_ino);

/* Directories.  @name is not NUL-terminated.  Lookup is a binary search as
 * in the kernel (fs/erofs/namei.c): over the blocks by their first name,
 * then inside one block, O(log blocks + log entries), no allocation; about
 * 0.2-0.3 us in a 20000-entry directory.  "." and ".." are found like any
 * entry.  Returns 0 and the child's nid and DT_* type (from the dirent, not
 * the inode), -ENOENT, -ENOTDIR, or -EFSCORRUPTED. */
int cfs_img_lookup(const struct cfs_image *img, const struct cfs_inode *dir, const char *name,
		   size_t namelen, uint64_t *ret_nid, unsigned *ret_dtype);

/* Called for each entry, including "." and "..", in on-disk (sorted) order.
 * @name is not NUL-terminated, 1..255 bytes, never contains '/' or NUL (such
 * a directory is -EFSCORRUPTED).  @next_cookie resumes iteration after this
 * entry; it is never 0.  Return 0 to continue, > 0 to stop (returned as
 * is), < 0 to abort with that error. */
typedef int (*cfs_dirent_fn)(void *userdata, const char *name, size_t namelen, uint64_t nid,
			     unsigned dtype, uint64_t next_cookie);
/* Iterate from @cookie (0 = first entry; otherwise a next_cookie seen
 * before).  A cookie is the kernel's readdir position: block * 4096 +
 * dirent index * 12, and the next block's start after a block's last entry,
 * so it stays valid for the life of the image and fits a FUSE readdir
 * offset.  Resuming costs one block header check, not O(entries).  Any other
 * value is safe: it is rounded up to the next entry, and a cookie past the
 * end yields nothing.  Returns 0 at the end of the directory. */
int cfs_img_iterate_dir(const struct cfs_image *img, const struct cfs_inode *dir, uint64_t cookie,
			cfs_dirent_fn fn, void *userdata);

/* Copy up to @len bytes of file data at @off for inodes whose data lives in
 * the image (inline/plain files, symlinks, directories).  Returns bytes
 * copied (short only at EOF, 0 at or past EOF), -EINVAL for devices, fifos
 * and sockets.  Chunk-based (external) files read as plain EROFS would: null
 * chunks are zeros (upstream's files over 8 TiB keep their chunk table
 * where readers do not look, so reading those fails or returns image
 * bytes; the data of an external file comes from its backing object). */
ssize_t cfs_img_read(const struct cfs_image *img, const struct cfs_inode *ino, uint64_t off,
		     void *buf, size_t len);

/* Symlink target, NUL-terminated into @buf.  Returns its length (up to a
 * NUL byte in the stored target, as readlink(2) on the kernel mount shows
 * it), -EINVAL if not a symlink, -ERANGE if @bufsz <= i_size,
 * -EFSCORRUPTED if i_size >= PATH_MAX. */
ssize_t cfs_img_readlink(const struct cfs_image *img, const struct cfs_inode *ino, char *buf,
			 size_t bufsz);

/* Called for each xattr the kernel's erofs would list: inline entries in
 * on-disk order, then shared ones (the kernel's listxattr order); entries
 * with no name prefix index, the lustre index or an unknown one are skipped
 * as the kernel hides them.  @name is the full NUL-terminated name with the
 * prefix expanded ("trusted.overlay.x"); overlay-internal names are NOT
 * filtered here.  @value is borrowed from the image.  Same return
 * convention as above.  A name containing NUL is -EFSCORRUPTED. */
typedef int (*cfs_xattr_fn)(void *userdata, const char *name, const uint8_t *value,
			    size_t value_len);
int cfs_img_iterate_xattrs(const struct cfs_image *img, const struct cfs_inode *ino,
			   cfs_xattr_fn fn, void *userdata);
/* Look one xattr up by full name (a kernel-visible prefix + the rest; any
 * other name is -ENODATA).  Uses the inode's xattr name bloom filter like
 * the kernel, so most misses cost one hash.  Returns 0 with a borrowed value
 * (first match), -ENODATA, or -EFSCORRUPTED. */
int cfs_img_get_xattr(const struct cfs_image *img, const struct cfs_inode *ino, const char *name,
		      const uint8_t **ret_value, size_t *ret_len);

/* Decode trusted.overlay.metacopy / trusted.overlay.redirect of a regular
 * file (other types: all-zero result).  metacopy may be empty (no digest),
 * 4 bytes (header only) or 36 (version 0, len 36, SHA-256, digest); anything
 * else is -EFSCORRUPTED.  The redirect is returned as stored ("/xx/yyyy..."),
 * unchecked: cas/ validates it when opening the object. */
int cfs_img_get_backing(const struct cfs_image *img, const struct cfs_inode *ino,
			struct cfs_backing *ret_backing);

/* Walk the whole tree, depth first in directory order, skipping "." and
 * "..".  @fn is called for every directory entry with the directory's inode,
 * the entry's full path from the root ("/a/b", NUL-terminated, @pathlen
 * bytes), its name (a suffix of @path) and its decoded inode.  A directory
 * is entered only the first time its nid is met (@first_visit), so loops
 * and directory hard links in a hostile image cannot make the walk run
 * forever; the walk uses no recursion.  Return 0 from @fn to continue, > 0
 * to stop (cfs_img_walk returns it), < 0 to abort with that error.  The
 * walk itself fails with -EFSCORRUPTED on a corrupt directory or inode. */
typedef int (*cfs_walk_fn)(void *userdata, const struct cfs_inode *dir, const char *path,
			   size_t pathlen, const char *name, size_t namelen,
			   const struct cfs_inode *ino, bool first_visit);
int cfs_img_walk(const struct cfs_image *img, cfs_walk_fn fn, void *userdata);

/* Print the image as a composefs dump file, exactly as upstream
 * `composefs-info dump` does: cfs_tree_from_image() and cfs_dump_print()
 * (cfs-writer.h), which the other views of `composefs-info` build on. */
int cfs_img_print_dump(const struct cfs_image *img, FILE *out);
