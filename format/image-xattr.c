/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The image reader, extended attributes (kernel fs/erofs/xattr.c): inline
 * and shared entries, the name bloom filter, the names readers see, and the
 * overlay metadata (redirect, metacopy digest) of external files.
 */
#include <dirent.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "image-priv.h"

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

	*ret = (struct xentry){ 0 }; /* on every path (see dir_entry()) */
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
