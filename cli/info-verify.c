/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * `composefs-info verify --basedir=DIR IMAGE`: check that every object an
 * image refers to exists in the store and matches its fs-verity digest,
 * filling the persisted Merkle tree cache on the way (so later first opens
 * by the daemon are cheap).  Objects are checked by 2 worker threads (or
 * --threads=N); a progress line is shown on stderr when it is a terminal.
 *
 * Output: one line on stdout per image path whose object is bad:
 *   missing /path/in/image xx/yyyy...
 *   corrupt /path/in/image xx/yyyy...
 *   refused /path/in/image REDIRECT (reason)
 * and a summary on stderr.  Files with no digest in the image can only be
 * checked for existence and size; they are counted, not failed.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cas.h"
#include "cfs-tools.h"
#include "info-verify.h"

enum obj_status {
	OBJ_OK,
	OBJ_NO_DIGEST, /* present with the right size; nothing to verify against */
	OBJ_MISSING,
	OBJ_CORRUPT,
	OBJ_REFUSED,
	OBJ_ERROR,
};

struct vobject {
	char *redirect;          /* normalized for output (no leading '/') */
	size_t redirect_len;
	bool has_digest;
	uint8_t digest[CFS_DIGEST_SIZE];
	uint64_t size;
	enum obj_status status;
	int error;
	size_t hash_next;        /* index + 1 of the next in its bucket, 0: none */
};

struct vref {                    /* one image path using an object */
	char *path;
	size_t obj;
};

struct verify_ctx {
	const struct cfs_image *img;
	struct vobject *objs;
	size_t nobjs, cap_objs;
	struct vref *refs;
	size_t nrefs, cap_refs;
	size_t *buckets;         /* index + 1 of the first object, 0: none */
	size_t nbuckets;
	uint64_t total_bytes;

	struct cfs_cas *cas;
	_Atomic size_t next, done;
	_Atomic uint64_t done_bytes;
};

static uint64_t obj_hash(const char *redirect, size_t len, const uint8_t *digest)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	if (digest) {
		memcpy(&h, digest, sizeof(h));
		return h;
	}
	for (size_t i = 0; i < len; i++)
		h = (h ^ (uint8_t)redirect[i]) * 0x100000001b3ULL;
	return h;
}

static int add_object(struct verify_ctx *c, const struct cfs_backing *b, uint64_t size, size_t *ret_index)
{
	const char *red = b->redirect;
	size_t len = b->redirect_len;
	uint64_t h;
	struct vobject *o;

	if (red && len > 0 && red[0] == '/') {
		red++;
		len--;
	}
	if (!red)
		len = 0;
	h = obj_hash(red, len, b->has_digest ? b->digest : NULL);
	for (size_t i = c->buckets[h % c->nbuckets]; i; i = o->hash_next) {
		o = &c->objs[i - 1];
		if (o->has_digest != b->has_digest || o->size != size || o->redirect_len != len ||
		    memcmp(o->redirect, red ? red : "", len) != 0 ||
		    (b->has_digest && memcmp(o->digest, b->digest, CFS_DIGEST_SIZE) != 0))
			continue;
		*ret_index = i - 1;
		return 0;
	}
	/* the chains hold indexes: a moved array needs no fix-up */
	if (CFS_GROW(c->objs, c->cap_objs, c->nobjs + 1) < 0)
		return -ENOMEM;
	o = &c->objs[c->nobjs];
	memset(o, 0, sizeof(*o));
	o->redirect = red ? strndup(red, len) : strdup("");
	if (!o->redirect)
		return -ENOMEM;
	o->redirect_len = len;
	o->has_digest = b->has_digest;
	if (b->has_digest)
		memcpy(o->digest, b->digest, CFS_DIGEST_SIZE);
	o->size = size;
	o->hash_next = c->buckets[h % c->nbuckets];
	c->buckets[h % c->nbuckets] = c->nobjs + 1;
	c->total_bytes += size;
	*ret_index = c->nobjs++;
	return 0;
}

static int walk_fn(void *userdata, const struct cfs_inode *dir, const char *path, size_t pathlen,
		   const char *name, size_t namelen, const struct cfs_inode *ino, bool first_visit)
{
	struct verify_ctx *c = userdata;
	struct cfs_backing b;
	size_t idx;
	int r;

	if (!S_ISREG(ino->mode))
		return 0;
	r = cfs_img_get_backing(c->img, ino, &b);
	if (r < 0)
		return r;
	if (!b.is_external)
		return 0;
	r = add_object(c, &b, ino->size, &idx);
	if (r < 0)
		return r;
	if (CFS_GROW(c->refs, c->cap_refs, c->nrefs + 1) < 0)
		return -ENOMEM;
	c->refs[c->nrefs].path = strndup(path, pathlen);
	if (!c->refs[c->nrefs].path)
		return -ENOMEM;
	c->refs[c->nrefs].obj = idx;
	c->nrefs++;
	return 0;
}

static void check_object(struct verify_ctx *c, struct vobject *o)
{
	_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;
	int r;

	r = cfs_cas_open_object(c->cas, o->redirect_len ? o->redirect : NULL, o->redirect_len,
				o->has_digest ? o->digest : NULL, o->size, &obj);
	if (r == 0 && o->has_digest)
		r = cfs_object_check_all(obj);
	o->error = r;
	switch (r) {
	case 0:
		o->status = o->has_digest ? OBJ_OK : OBJ_NO_DIGEST;
		break;
	case -ENOENT:
		o->status = OBJ_MISSING;
		break;
	case -EIO:
		o->status = OBJ_CORRUPT;
		break;
	case -EPERM:
	case -EINVAL:
	case -ENAMETOOLONG:
		o->status = OBJ_REFUSED;
		break;
	default:
		o->status = OBJ_ERROR;
		break;
	}
}

static void *worker(void *p)
{
	struct verify_ctx *c = p;

	for (;;) {
		size_t i = atomic_fetch_add(&c->next, 1);

		if (i >= c->nobjs)
			break;
		check_object(c, &c->objs[i]);
		atomic_fetch_add(&c->done_bytes, c->objs[i].size);
		atomic_fetch_add(&c->done, 1);
	}
	return NULL;
}

/* Print a path from the image, escaping bytes a terminal or a line-based
 * reader would misread. */
static void print_escaped(FILE *f, const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p < 0x21 || *p >= 0x7f || *p == '\\')
			fprintf(f, "\\x%02x", *p);
		else
			fputc(*p, f);
	}
}

static void free_ctx(struct verify_ctx *c)
{
	for (size_t i = 0; i < c->nobjs; i++)
		free(c->objs[i].redirect);
	for (size_t i = 0; i < c->nrefs; i++)
		free(c->refs[i].path);
	free(c->objs);
	free(c->refs);
	free(c->buckets);
	cfs_cas_unref(c->cas);
}

static const char *status_word(enum obj_status s)
{
	switch (s) {
	case OBJ_MISSING:
		return "missing";
	case OBJ_CORRUPT:
		return "corrupt";
	case OBJ_REFUSED:
		return "refused";
	default:
		return "error";
	}
}

int cfs_info_verify(struct cfs_image *img, const char *image_path,
		    const struct cfs_info_verify_options *vopts)
{
	struct verify_ctx c = { .img = img };
	/* Trees go beside the objects when the store is writable (where the
	 * daemon looks first, for every user of the store), else to the cache. */
	struct cfs_cas_options opts = { .verify = true, .store_trees = true };
	_cleanup_free_ char *default_cache = NULL;
	const char *basedir = vopts->basedir, *cache = vopts->tree_cache;
	const char *threads_s = vopts->threads;
	size_t counts[OBJ_ERROR + 1] = { 0 };
	bool tty = isatty(STDERR_FILENO);
	pthread_t th[64];
	int nthreads = 2, started = 0, r, bad = 0;

	if (!basedir) {
		fprintf(stderr, "composefs-info: verify needs --basedir=DIR\n");
		return -EINVAL;
	}
	if (threads_s) {
		char *end;
		long n = strtol(threads_s, &end, 10);

		if (*end || n < 1 || n > 64) {
			fprintf(stderr, "composefs-info: invalid --threads '%s' (1-64)\n", threads_s);
			return -EINVAL;
		}
		nthreads = (int)n;
	}
	if (!cache && cfs_tree_cache_default_dir(&default_cache) == 0)
		cache = default_cache;
	opts.tree_cache_dir = cache && cache[0] ? cache : NULL; /* --tree-cache= : none */

	c.nbuckets = 4096;
	c.buckets = calloc(c.nbuckets, sizeof(*c.buckets));
	if (!c.buckets)
		return -ENOMEM;
	r = cfs_img_walk(img, walk_fn, &c);
	if (r < 0) {
		fprintf(stderr, "composefs-info: cannot walk '%s': %s\n", image_path, strerror(-r));
		free_ctx(&c);
		return r;
	}
	r = cfs_cas_open(basedir, &opts, &c.cas);
	if (r < 0 && opts.tree_cache_dir && cache == default_cache) {
		/* the default cache location is a convenience, not a must */
		fprintf(stderr, "composefs-info: not saving Merkle trees in '%s': %s\n", cache,
			cfs_tree_cache_strerror(r));
		opts.tree_cache_dir = NULL;
		r = cfs_cas_open(basedir, &opts, &c.cas);
	}
	if (r < 0 && opts.tree_cache_dir) {
		/* Which of the two: the store, or the tree cache? */
		struct cfs_cas_options plain = opts;
		struct cfs_cas *probe = NULL;

		plain.tree_cache_dir = NULL;
		if (cfs_cas_open(basedir, &plain, &probe) == 0) {
			cfs_cas_unref(probe);
			fprintf(stderr, "composefs-info: --tree-cache '%s': %s\n", opts.tree_cache_dir,
				cfs_tree_cache_strerror(r));
			free_ctx(&c);
			return r;
		}
	}
	if (r < 0) {
		fprintf(stderr, "composefs-info: cannot open object store '%s': %s\n", basedir,
			strerror(-r));
		free_ctx(&c);
		return r;
	}

	for (; started < nthreads; started++) {
		if (pthread_create(&th[started], NULL, worker, &c) != 0)
			break;
	}
	if (started == 0)
		worker(&c);
	if (tty) {
		do {
			struct timespec ts = { .tv_nsec = 200 * 1000 * 1000 };

			fprintf(stderr, "\rverify: %zu/%zu objects, %llu/%llu MiB", atomic_load(&c.done), c.nobjs,
				(unsigned long long)(atomic_load(&c.done_bytes) >> 20),
				(unsigned long long)(c.total_bytes >> 20));
			if (atomic_load(&c.done) < c.nobjs)
				nanosleep(&ts, NULL);
		} while (atomic_load(&c.done) < c.nobjs);
		fprintf(stderr, "\r\033[K"); /* clear the progress line */
	}
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);

	for (size_t i = 0; i < c.nobjs; i++)
		counts[c.objs[i].status]++;
	for (size_t i = 0; i < c.nrefs; i++) {
		const struct vobject *o = &c.objs[c.refs[i].obj];

		if (o->status == OBJ_OK || o->status == OBJ_NO_DIGEST)
			continue;
		bad++;
		printf("%s ", status_word(o->status));
		print_escaped(stdout, c.refs[i].path);
		putchar(' ');
		print_escaped(stdout, o->redirect_len ? o->redirect : "-");
		if (o->status == OBJ_REFUSED || o->status == OBJ_ERROR)
			printf(" (%s)", strerror(-o->error));
		putchar('\n');
	}
	fprintf(stderr,
		"%s: %zu objects (%zu files): %zu ok, %zu missing, %zu corrupt, %zu refused, %zu errors, "
		"%zu without digest (existence and size checked only); io %s\n",
		image_path, c.nobjs, c.nrefs, counts[OBJ_OK], counts[OBJ_MISSING], counts[OBJ_CORRUPT],
		counts[OBJ_REFUSED], counts[OBJ_ERROR], counts[OBJ_NO_DIGEST], cfs_cas_io_backend(c.cas));
	free_ctx(&c);
	return bad > 0 ? 1 : 0;
}
