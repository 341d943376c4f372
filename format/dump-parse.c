/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Parser of composefs dump files (composefs-dump(5)) into a node tree.
 *
 * One file per line: PATH SIZE MODE NLINK UID GID RDEV MTIME PAYLOAD CONTENT
 * DIGEST XATTR..., separated by single spaces.  The input is untrusted: every
 * field is checked, nothing is trusted to be NUL-terminated, and any error
 * rejects the whole file.  Acceptance follows upstream mkcomposefs 1.0.8 (so
 * its images come out the same), except that a few inputs it accepts with
 * undefined results (a malformed digest, an unparsable GID or RDEV, a hard
 * link to a directory) are rejected here.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "writer-internal.h"

enum {
	F_PATH,
	F_SIZE,
	F_MODE,
	F_NLINK,
	F_UID,
	F_GID,
	F_RDEV,
	F_MTIME,
	F_PAYLOAD,
	F_CONTENT,
	F_DIGEST,
	N_FIXED_FIELDS,
};

struct field {
	const char *p;
	size_t len;
};

struct fixup {
	struct cfs_node *node;
	char *target;
};

struct parser {
	unsigned flags;
	struct cfs_node *root;
	struct fixup *fixups;
	size_t n_fixups, fixups_cap;
	char *err;
	size_t lineno;
};

/* Take the text up to the next @sep out of @p and @len (all of it if there
 * is none, setting *@partial). */
static struct field split_at(const char **p, size_t *len, char sep, bool *partial)
{
	struct field f = { .p = *p };
	const char *end = memchr(*p, sep, *len);

	if (!end) {
		f.len = *len;
		*p += *len;
		*len = 0;
		if (partial)
			*partial = true;
		return f;
	}
	f.len = (size_t)(end - *p);
	*p += f.len + 1;
	*len -= f.len + 1;
	if (partial)
		*partial = false;
	return f;
}

static int fail(struct parser *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct parser *ps, const char *fmt, ...)
{
	_cleanup_free_ char *msg = NULL;
	va_list ap;

	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	va_end(ap);
	free(ps->err);
	if (ps->lineno > 0)
		ps->err = cfs_strdup_printf("line %zu: %s", ps->lineno, msg ? msg : "error");
	else
		ps->err = msg ? strdup(msg) : NULL;
	return -EINVAL;
}

/* Decode \\ \n \r \t \xHH.  Returns a NUL-terminated malloc'ed copy (the
 * NUL is not counted in *ret_len) or NULL with an error recorded. */
static char *unescape(struct parser *ps, struct field f, size_t *ret_len, const char *what)
{
	char *out = malloc(f.len + 1), *o = out;
	const char *s = f.p, *end = f.p + f.len;

	if (!out) {
		fail(ps, "out of memory");
		return NULL;
	}
	while (s < end) {
		char c = *s++;
		if (c != '\\') {
			*o++ = c;
			continue;
		}
		if (s >= end) {
			fail(ps, "%s: no character after escape", what);
			goto err;
		}
		c = *s++;
		switch (c) {
		case '\\':
			*o++ = '\\';
			break;
		case 'n':
			*o++ = '\n';
			break;
		case 'r':
			*o++ = '\r';
			break;
		case 't':
			*o++ = '\t';
			break;
		case 'x': {
			int hi, lo;
			if (end - s < 2) {
				fail(ps, "%s: incomplete \\x escape", what);
				goto err;
			}
			hi = cfs_hexval((unsigned char)s[0]);
			lo = cfs_hexval((unsigned char)s[1]);
			if (hi < 0 || lo < 0) {
				fail(ps, "%s: invalid hex digits in \\x escape", what);
				goto err;
			}
			*o++ = (char)(hi << 4 | lo);
			s += 2;
			break;
		}
		default:
			if ((unsigned char)c >= 0x20 && (unsigned char)c < 0x7f)
				fail(ps, "%s: unsupported escape \\%c", what, c);
			else
				fail(ps, "%s: unsupported escape \\x%02x", what, (unsigned char)c);
			goto err;
		}
	}
	*o = '\0';
	if (ret_len)
		*ret_len = (size_t)(o - out);
	return out;
err:
	free(out);
	return NULL;
}

/* "-" means absent: returns NULL without error (*ret_err stays 0). */
static char *unescape_optional(struct parser *ps, struct field f, size_t *ret_len,
			       const char *what, int *ret_err)
{
	char *s;

	*ret_err = 0;
	if (f.len == 1 && f.p[0] == '-')
		return NULL;
	s = unescape(ps, f, ret_len, what);
	if (!s)
		*ret_err = -EINVAL;
	return s;
}

/* An unsigned integer as strtoull() reads it (upstream's rule). */
static int parse_uint(struct parser *ps, struct field f, int base, const char *what,
		      uint64_t *ret)
{
	char buf[64], *end = NULL;
	unsigned long long v;

	if (f.len == 0)
		return fail(ps, "invalid %s: empty", what);
	if (f.len >= sizeof(buf))
		return fail(ps, "invalid %s: too long", what);
	memcpy(buf, f.p, f.len);
	buf[f.len] = '\0';
	v = strtoull(buf, &end, base);
	if (*end != '\0')
		return fail(ps, "invalid %s '%s'", what, buf);
	*ret = (uint64_t)v;
	return 0;
}

static int parse_mtime(struct parser *ps, struct field f, int64_t *ret_sec, uint32_t *ret_nsec)
{
	const char *p = f.p;
	size_t len = f.len;
	struct field sec = split_at(&p, &len, '.', NULL);
	struct field nsec = { .p = p, .len = len };
	uint64_t s, ns;
	int r;

	r = parse_uint(ps, sec, 10, "mtime seconds", &s);
	if (r < 0)
		return r;
	r = parse_uint(ps, nsec, 10, "mtime nanoseconds", &ns);
	if (r < 0)
		return r;
	*ret_sec = (int64_t)s;
	*ret_nsec = (uint32_t)ns;
	return 0;
}

/* Walk @path from @node.  With @ret_name, stop before the last component
 * (returned through it, pointing into @path) and return its directory. */
static struct cfs_node *walk_path(struct cfs_node *node, const char *path, const char **ret_name)
{
	for (;;) {
		const char *start, *end;
		char *comp;

		while (*path == '/')
			path++;
		if (!ret_name && *path == '\0')
			return node;
		start = path;
		end = strchrnul(start, '/');
		if (ret_name && *end == '\0') {
			*ret_name = start;
			return node;
		}
		comp = strndup(start, (size_t)(end - start));
		if (!comp)
			return NULL;
		node = cfs_node_lookup_child(node, comp);
		free(comp);
		if (!node)
			return NULL;
		path = end;
	}
}

/* Insert @node at @path; on success the tree owns it. */
static int tree_add(struct parser *ps, const char *path, struct cfs_node *node)
{
	struct cfs_node *parent;
	const char *name;
	int r;

	if (strcmp(path, "/") == 0) {
		if (!cfs_node_is_dir(node))
			return fail(ps, "the root must be a directory");
		if (ps->root)
			return fail(ps, "more than one root");
		ps->root = node;
		return 0;
	}
	if (!ps->root)
		return fail(ps, "%s comes before the root '/'", path);
	parent = walk_path(ps->root, path, &name);
	if (!parent)
		return fail(ps, "parent directory of %s missing", path);
	if (!cfs_node_is_dir(parent))
		return fail(ps, "parent of %s is not a directory", path);
	if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return fail(ps, "invalid . or .. in path %s", path);
	r = cfs_node_add_child(parent, node, name);
	if (r == -EEXIST)
		return fail(ps, "%s already exists", path);
	if (r == -EINVAL)
		return fail(ps, "empty file name in path %s", path);
	if (r == -ENAMETOOLONG)
		return fail(ps, "file name too long in path %s", path);
	if (r < 0)
		return fail(ps, "cannot add %s: %s", path, strerror(-r));
	return 0;
}

static int add_fixup(struct parser *ps, struct cfs_node *node, char *target)
{
	if (CFS_GROW(ps->fixups, ps->fixups_cap, ps->n_fixups + 1) < 0) {
		free(target);
		return fail(ps, "out of memory");
	}
	ps->fixups[ps->n_fixups++] = (struct fixup){ .node = node, .target = target };
	return 0;
}

static int parse_xattr(struct parser *ps, struct field f, struct cfs_node *node)
{
	const char *p = f.p;
	size_t len = f.len;
	bool partial;
	struct field kf = split_at(&p, &len, '=', &partial);
	struct field vf = { .p = p, .len = len };
	_cleanup_free_ char *key = NULL, *value = NULL;
	size_t vlen;
	int r;

	if (partial)
		return fail(ps, "missing = in xattr");
	key = unescape(ps, kf, NULL, "xattr name");
	if (!key)
		return -EINVAL;
	value = unescape(ps, vf, &vlen, "xattr value");
	if (!value)
		return -EINVAL;
	r = cfs_node_set_xattr(node, key, value, vlen);
	if (r == -ERANGE && (key[0] == '\0' || strlen(key) > CFS_XATTR_NAME_MAX))
		return fail(ps, "invalid xattr name length %zu", strlen(key));
	if (r == -ERANGE)
		return fail(ps, "xattrs too large (limit %d bytes per file)", CFS_XATTR_EXTERNAL_MAX);
	if (r == -EINVAL)
		return fail(ps, "xattr value too large (%zu bytes)", vlen);
	if (r < 0)
		return fail(ps, "cannot set xattr: %s", strerror(-r));
	return 0;
}

static int parse_line(struct parser *ps, const char *line, size_t len)
{
	_cleanup_(cfs_node_freep) struct cfs_node *owned = NULL;
	_cleanup_free_ char *path = NULL, *payload = NULL, *content = NULL, *digest = NULL;
	struct field f[N_FIXED_FIELDS];
	struct cfs_node *node;
	uint64_t mode, size, nlink, uid, gid, rdev;
	size_t content_len = 0;
	bool hardlink = false;
	int r, e;
	const char *nul = memchr(line, '\0', len);

	if (nul)
		return fail(ps, "embedded NUL character at position %zu", (size_t)(nul - line));
	for (int i = 0; i < N_FIXED_FIELDS; i++)
		f[i] = split_at(&line, &len, ' ', NULL);

	path = unescape(ps, f[F_PATH], NULL, "path");
	if (!path)
		return -EINVAL;
	if (path[0] == '\0')
		return fail(ps, "empty path");

	if (f[F_MODE].len > 0 && f[F_MODE].p[0] == '@') {
		hardlink = true;
		f[F_MODE].p++;
		f[F_MODE].len--;
	}
	r = parse_uint(ps, f[F_MODE], 8, "mode", &mode);
	if (r < 0)
		return r;
	if (!cfs_mode_valid((uint32_t)mode))
		return fail(ps, "invalid file type in mode %o", (unsigned)mode);

	owned = cfs_node_new();
	if (!owned)
		return fail(ps, "out of memory");
	owned->mode = (uint32_t)mode;
	r = tree_add(ps, path, owned);
	if (r < 0)
		return r;
	node = steal_ptr(&owned); /* the tree owns it now */

	if (hardlink) {
		char *target;
		if (cfs_node_is_dir(node))
			return fail(ps, "directories can't be hard links: %s", path);
		target = unescape_optional(ps, f[F_PAYLOAD], NULL, "hard link target", &e);
		if (e < 0)
			return e;
		if (!target)
			return fail(ps, "hard link %s has no target", path);
		return add_fixup(ps, node, target);
	}

	if ((r = parse_uint(ps, f[F_SIZE], 10, "size", &size)) < 0 ||
	    (r = parse_uint(ps, f[F_NLINK], 10, "nlink", &nlink)) < 0 ||
	    (r = parse_uint(ps, f[F_UID], 10, "uid", &uid)) < 0 ||
	    (r = parse_uint(ps, f[F_GID], 10, "gid", &gid)) < 0 ||
	    (r = parse_uint(ps, f[F_RDEV], 10, "rdev", &rdev)) < 0 ||
	    (r = parse_mtime(ps, f[F_MTIME], &node->mtime_sec, &node->mtime_nsec)) < 0)
		return r;

	payload = unescape_optional(ps, f[F_PAYLOAD], NULL, "payload", &e);
	if (e < 0)
		return e;
	content = unescape_optional(ps, f[F_CONTENT], &content_len, "content", &e);
	if (e < 0)
		return e;
	if (content && content_len != size)
		return fail(ps, "content size %zu does not match size %" PRIu64, content_len, size);
	digest = unescape_optional(ps, f[F_DIGEST], NULL, "digest", &e);
	if (e < 0)
		return e;

	if ((node->mode & S_IFMT) != S_IFLNK)
		node->size = size;
	node->nlink = (uint32_t)nlink;
	node->uid = (uint32_t)uid;
	node->gid = (uint32_t)gid;
	if ((node->mode & S_IFMT) == S_IFCHR || (node->mode & S_IFMT) == S_IFBLK)
		node->rdev = (uint32_t)rdev;
	else if ((ps->flags & CFS_PARSE_STRICT) && rdev != 0)
		return fail(ps, "non-zero rdev on a non-device");

	if ((node->mode & S_IFMT) == S_IFLNK) {
		if (!payload || payload[0] == '\0')
			return fail(ps, "symlink %s has no target", path);
		if (cfs_node_set_payload(node, payload) < 0)
			return fail(ps, "symlink target of %s too long (%zu bytes, max %d)", path,
				    strlen(payload), CFS_PATH_MAX - 1);
		node->size = strlen(payload);
		if (ps->flags & CFS_PARSE_STRICT) {
			if (size != node->size)
				return fail(ps, "symlink size %" PRIu64 " does not match target length %" PRIu64,
					    size, node->size);
			if (content && content_len > 0)
				return fail(ps, "symlink cannot have content");
		}
	} else {
		if (cfs_node_set_payload(node, payload) < 0)
			return fail(ps, "payload too long (%zu bytes, max %d)", strlen(payload),
				    CFS_PATH_MAX - 1);
		if (content) {
			if (content_len > CFS_INLINE_CONTENT_MAX)
				return fail(ps, "inline content size %zu exceeds maximum %d", content_len,
					    CFS_INLINE_CONTENT_MAX);
			if (cfs_node_set_content(node, content, content_len) < 0)
				return fail(ps, "out of memory");
		}
	}

	/* The digest only matters for a file whose content is external: there
	 * a malformed one is an error (upstream would use undefined bytes);
	 * elsewhere it is ignored, as upstream does. */
	if (digest && digest[0] != '\0') {
		if (strlen(digest) == 2 * CFS_DIGEST_SIZE &&
		    cfs_digest_from_hex(digest, node->digest) >= 0)
			node->digest_set = true;
		else if ((node->mode & S_IFMT) == S_IFREG && node->size > 0 && !node->content)
			return fail(ps, "invalid digest '%.80s': want 64 hex digits", digest);
	}

	/* Setting each xattr scans the previous ones: cap the line. */
	if (len > UINT16_MAX)
		return fail(ps, "too many xattrs");
	while (len > 0) {
		r = parse_xattr(ps, split_at(&line, &len, ' ', NULL), node);
		if (r < 0)
			return r;
	}
	return 0;
}

static int resolve_hardlinks(struct parser *ps)
{
	ps->lineno = 0;
	for (size_t i = 0; i < ps->n_fixups; i++) {
		struct fixup *fx = &ps->fixups[i];
		struct cfs_node *target = walk_path(ps->root, fx->target, NULL);

		if (!target)
			return fail(ps, "no target at %s for hard link %s", fx->target, fx->node->name);
		if (target == fx->node)
			return fail(ps, "self-referential hard link %s", fx->target);
		fx->node->link_to = target;
	}
	for (size_t i = 0; i < ps->n_fixups; i++) {
		struct fixup *fx = &ps->fixups[i];
		struct cfs_node *t = cfs_node_follow(fx->node);

		if (!t)
			return fail(ps, "hard link cycle through %s", fx->target);
		if (cfs_node_is_dir(t))
			return fail(ps, "hard link %s points to a directory (%s)", fx->node->name,
				    fx->target);
		/* Point the whole chain at its inode, so that a long chain of
		 * links to links is followed once, not once per link. */
		for (struct cfs_node *n = fx->node, *next; n != t; n = next) {
			next = n->link_to;
			n->link_to = t;
		}
	}
	return 0;
}

static void parser_done(struct parser *ps)
{
	for (size_t i = 0; i < ps->n_fixups; i++)
		free(ps->fixups[i].target);
	free(ps->fixups);
	cfs_node_free(ps->root);
	free(ps->err);
}

int cfs_dump_parse_mem(const void *data, size_t size, unsigned flags, struct cfs_node **ret_root,
		       char **ret_err)
{
	struct parser ps = { .flags = flags };
	const char *p = data;
	size_t len = size;
	int r = 0;

	while (len > 0) {
		bool partial;
		struct field line = split_at(&p, &len, '\n', &partial);

		ps.lineno++;
		if (partial && (flags & CFS_PARSE_STRICT)) {
			r = fail(&ps, "missing trailing newline");
			break;
		}
		r = parse_line(&ps, line.p, line.len);
		if (r < 0)
			break;
	}
	if (r >= 0 && !ps.root) {
		ps.lineno = 0;
		r = fail(&ps, "no files in dump file");
	}
	if (r >= 0)
		r = resolve_hardlinks(&ps);
	if (r < 0) {
		if (ret_err) {
			*ret_err = ps.err ? ps.err : strdup("out of memory");
			ps.err = NULL;
		}
		parser_done(&ps);
		return r;
	}
	*ret_root = steal_ptr(&ps.root);
	parser_done(&ps);
	return 0;
}

int cfs_dump_parse_file(FILE *in, unsigned flags, struct cfs_node **ret_root, char **ret_err)
{
	_cleanup_free_ char *buf = NULL;
	size_t size = 0, cap = 0;

	for (;;) {
		if (cap - size < 65536) {
			size_t ncap = cap ? cap * 2 : 1 << 20;
			char *n = realloc(buf, ncap);
			if (!n) {
				if (ret_err)
					*ret_err = strdup("out of memory");
				return -ENOMEM;
			}
			buf = n;
			cap = ncap;
		}
		size_t got = fread(buf + size, 1, cap - size, in);
		size += got;
		if (got == 0) {
			if (ferror(in)) {
				int r = errno ? -errno : -EIO;
				if (ret_err)
					*ret_err = cfs_strdup_printf("read error: %s", strerror(-r));
				return r;
			}
			break;
		}
	}
	return cfs_dump_parse_mem(buf, size, flags, ret_root, ret_err);
}
