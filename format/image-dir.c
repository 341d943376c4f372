/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The image reader, directories: validated directory blocks and entries
 * (kernel fs/erofs/dir.c), iteration with resumable cookies, lookup by
 * binary search (namei.c), and the bounded walk over the whole tree.
 */
#include <dirent.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "image-priv.h"

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

	r = cfs_img_map_block(img, dir, lblk, &p, &len);
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

	/* Set on every path, failures included (the callers' compilers
	 * cannot follow the error returns at -O3). */
	*ret_name = NULL;
	*ret_namelen = 0;
	*ret_nid = 0;
	*ret_ft = 0;
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
	if (cfs_img_nid_to_off(img, *ret_nid, &off) < 0)
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
	/* One bit per possible nid: cfs_img_nid_to_off() bounds nids by the image. */
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
