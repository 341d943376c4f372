/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The object store: its base directories and the table of open objects
 * (one shared, refcounted state per object, found by digest, bounded, the
 * least recently used idle one closed first), each object's verification
 * method chosen once when it is set up.  paths.c resolves the paths;
 * verity.c is the read path.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cas-internal.h"

static void object_free(struct cfs_object *obj);

static void cas_free(struct cfs_cas *cas)
{
	/* Only idle objects are left: a referenced one holds the cas. */
	while (cas->idle_head) {
		struct cfs_object *obj = cas->idle_head;

		cas->idle_head = obj->idle_next;
		object_free(obj);
	}
	for (size_t i = 0; i < cas->n_basedirs; i++) {
		if (cas->basedir_fds && cas->basedir_fds[i] >= 0)
			close(cas->basedir_fds[i]);
	}
	cfs_strv_free(cas->basedirs);
	free(cas->basedir_fds);
	cfs_tree_cache_fini(&cas->trees);
	cfs_io_fini(&cas->io);
	free(cas->buckets);
	free((char *)cas->opts.tree_cache_dir);
	pthread_cond_destroy(&cas->init_cond);
	pthread_mutex_destroy(&cas->lock);
	free(cas);
}

int cfs_cas_open(const char *basedirs, const struct cfs_cas_options *opts, struct cfs_cas **ret_cas)
{
	struct cfs_cas *cas;
	char **dirs = NULL;
	size_t n;
	int r;

	if (!basedirs || !opts)
		return -EINVAL;
	r = cfs_basedirs_parse(basedirs, &dirs);
	if (r < 0)
		return r;
	n = (size_t)r;

	cas = calloc(1, sizeof(*cas));
	if (!cas) {
		cfs_strv_free(dirs);
		return -ENOMEM;
	}
	atomic_init(&cas->refcount, 1);
	pthread_mutex_init(&cas->lock, NULL);
	pthread_cond_init(&cas->init_cond, NULL);
	cas->opts = *opts;
	if (!cas->opts.max_idle_objects)
		cas->opts.max_idle_objects = 256;
	cas->opts.tree_cache_dir = NULL;
	cas->trees.dirfd = -1;
	cas->verity = opts->verity ? *opts->verity : cfs_verity_kernel_ops;
	cas->have_openat2 = true;
	cas->basedirs = dirs;
	cas->basedir_fds = malloc(n * sizeof(int));
	cas->nbuckets = 256;
	cas->buckets = calloc(cas->nbuckets, sizeof(*cas->buckets));
	/* from here on cas_free() needs cfs_io_init() to have run: it does,
	 * and leaves @io safe for cfs_io_fini() even when it fails */
	r = cfs_io_init(&cas->io, opts->io);
	if (r < 0)
		goto fail;
	r = -ENOMEM;
	if (!cas->basedirs || !cas->basedir_fds || !cas->buckets)
		goto fail;
	if (opts->tree_cache_dir && !(cas->opts.tree_cache_dir = strdup(opts->tree_cache_dir)))
		goto fail;

	for (size_t i = 0; i < n; i++) {
		cas->n_basedirs = i + 1;
		cas->basedir_fds[i] = open(cas->basedirs[i], O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (cas->basedir_fds[i] < 0) {
			r = -errno;
			goto fail;
		}
	}
	r = cfs_tree_cache_init(&cas->trees, &cas->opts, (const char *const *)cas->basedirs, cas->n_basedirs);
	if (r < 0)
		goto fail;
	*ret_cas = cas;
	return 0;
fail:
	cas_free(cas);
	return r;
}

static struct cfs_cas *cas_ref(struct cfs_cas *cas)
{
	atomic_fetch_add(&cas->refcount, 1);
	return cas;
}

struct cfs_cas *cfs_cas_unref(struct cfs_cas *cas)
{
	if (cas && atomic_fetch_sub(&cas->refcount, 1) == 1)
		cas_free(cas);
	return NULL;
}

bool cfs_cas_kernel_verity_possible(struct cfs_cas *cas)
{
	if (!cas->opts.verify || cas->opts.method == CFS_METHOD_USERSPACE || !cas->verity.measure)
		return false;
	for (size_t i = 0; i < cas->n_basedirs; i++) {
		uint8_t d[CFS_DIGEST_SIZE];
		int fd = openat(cas->basedir_fds[i], ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		int r;

		if (fd < 0)
			return true; /* cannot tell: assume it could */
		/* A directory has no fs-verity: a filesystem that has it says
		 * ENODATA; one without (or a kernel without) says otherwise. */
		r = cas->verity.measure(cas->verity.userdata, fd, d);
		close(fd);
		if (r == 0 || r == -ENODATA)
			return true;
	}
	return false;
}

const char *cfs_cas_io_backend(const struct cfs_cas *cas)
{
	return cas->io.backend == CFS_IO_URING ? "io_uring" : "pread";
}

void cfs_cas_get_stats(struct cfs_cas *cas, struct cfs_cas_stats *ret_stats)
{
	memset(ret_stats, 0, sizeof(*ret_stats));
	ret_stats->objects_opened = atomic_load(&cas->stats.objects_opened);
	ret_stats->objects_evicted = atomic_load(&cas->stats.objects_evicted);
	ret_stats->trees_from_store = atomic_load(&cas->stats.trees_from_store);
	ret_stats->read_io_errors = atomic_load(&cas->stats.read_io_errors);
	ret_stats->objects_mismatched = atomic_load(&cas->stats.objects_mismatched);
	ret_stats->size_mismatches = atomic_load(&cas->stats.size_mismatches);
	ret_stats->bytes_read = atomic_load(&cas->stats.bytes_read);
	ret_stats->blocks_hashed = atomic_load(&cas->stats.blocks_hashed);
	for (int i = 0; i < 3; i++)
		ret_stats->objects_by_method[i] = atomic_load(&cas->stats.by_method[i]);
	ret_stats->trees_built = atomic_load(&cas->stats.trees_built);
	ret_stats->trees_from_memory = atomic_load(&cas->stats.trees_from_memory);
	ret_stats->trees_from_disk = atomic_load(&cas->stats.trees_from_disk);
	ret_stats->trees_rejected = atomic_load(&cas->stats.trees_rejected);
	ret_stats->trees_written = atomic_load(&cas->stats.trees_written);
	ret_stats->tree_write_errors = atomic_load(&cas->stats.tree_write_errors);
	ret_stats->blocks_failed = atomic_load(&cas->stats.blocks_failed);
	pthread_mutex_lock(&cas->lock);
	ret_stats->lru_bytes = cas->trees.bytes;
	ret_stats->idle_objects = cas->n_idle;
	pthread_mutex_unlock(&cas->lock);
}

static int open_beneath(struct cfs_cas *cas, int dirfd, const char *path)
{
	int fd;

	for (int tries = 0;; tries++) {
		fd = cfs_open_beneath(dirfd, path, &cas->have_openat2);
		if ((fd != -EMFILE && fd != -ENFILE) || tries > 0)
			return fd;
		/* Out of descriptors: close idle objects, then try again. */
		pthread_mutex_lock(&cas->lock);
		cfs_cas_trim_idle(cas, cas->n_idle / 2);
		pthread_mutex_unlock(&cas->lock);
	}
}

int cfs_cas_open_beneath(struct cfs_cas *cas, size_t i, const char *path)
{
	if (i >= cas->n_basedirs)
		return -EINVAL;
	return open_beneath(cas, cas->basedir_fds[i], path);
}

/* Open @path in the first base directory that has it. */
static int open_in_store(struct cfs_cas *cas, const char *path, int *ret_fd, size_t *ret_basedir)
{
	for (size_t i = 0; i < cas->n_basedirs; i++) {
		int fd = open_beneath(cas, cas->basedir_fds[i], path);

		if (fd == -ENOENT)
			continue;
		if (fd < 0)
			return fd;
		*ret_fd = fd;
		*ret_basedir = i;
		return 0;
	}
	return -ENOENT;
}

static uint64_t key_hash(const char *key, bool has_digest)
{
	uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */

	for (const char *p = key; *p; p++)
		h = (h ^ (uint8_t)*p) * 0x100000001b3ULL;
	return h ^ has_digest;
}

static void table_remove(struct cfs_cas *cas, struct cfs_object *obj)
{
	struct cfs_object **pp = &cas->buckets[obj->hash % cas->nbuckets];

	for (; *pp; pp = &(*pp)->hash_next) {
		if (*pp == obj) {
			*pp = obj->hash_next;
			obj->hash_next = NULL;
			cas->nobjects--;
			return;
		}
	}
}

static void table_grow(struct cfs_cas *cas)
{
	size_t n = cas->nbuckets * 2;
	struct cfs_object **nb = calloc(n, sizeof(*nb));

	if (!nb)
		return;
	for (size_t i = 0; i < cas->nbuckets; i++) {
		for (struct cfs_object *o = cas->buckets[i], *next; o; o = next) {
			next = o->hash_next;
			o->hash_next = nb[o->hash % n];
			nb[o->hash % n] = o;
		}
	}
	free(cas->buckets);
	cas->buckets = nb;
	cas->nbuckets = n;
}

/* Is the file at @obj's path no longer the one whose data failed?  Only
 * its identity is compared (no content is read); a path that cannot be
 * stat'ed counts as replaced, so that a fresh open reports why. */
static bool failed_file_replaced(struct cfs_cas *cas, const struct cfs_object *obj)
{
	const struct cfs_file_ident *f = &obj->failed_ident;
	struct stat st;

	if (fstatat(cas->basedir_fds[obj->basedir], obj->key, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return true;
	return st.st_dev != f->dev || st.st_ino != f->ino || st.st_size != f->size ||
	       st.st_mtim.tv_sec != f->mtime.tv_sec || st.st_mtim.tv_nsec != f->mtime.tv_nsec ||
	       st.st_ctim.tv_sec != f->ctime.tv_sec || st.st_ctim.tv_nsec != f->ctime.tv_nsec;
}

static void object_free(struct cfs_object *obj)
{
	if (obj->fd >= 0)
		close(obj->fd);
	cfs_merkle_free(atomic_load(&obj->tree));
	free(obj->key);
	pthread_cond_destroy(&obj->cond);
	pthread_mutex_destroy(&obj->lock);
	free(obj);
}

static void idle_unlink(struct cfs_cas *cas, struct cfs_object *obj)
{
	if (obj->idle_prev)
		obj->idle_prev->idle_next = obj->idle_next;
	else
		cas->idle_head = obj->idle_next;
	if (obj->idle_next)
		obj->idle_next->idle_prev = obj->idle_prev;
	else
		cas->idle_tail = obj->idle_prev;
	obj->idle_prev = obj->idle_next = NULL;
	obj->idle = false;
	cas->n_idle--;
}

/* Forget an idle object; its tree goes to the tree LRU.  Under cas->lock. */
static void idle_evict(struct cfs_cas *cas, struct cfs_object *obj)
{
	struct cfs_merkle *t = atomic_load(&obj->tree);

	idle_unlink(cas, obj);
	table_remove(cas, obj);
	if (t && obj->state == CFS_OBJ_READY) {
		cfs_tree_cache_put(&cas->trees, t);
		atomic_store(&obj->tree, NULL);
	}
	object_free(obj);
	atomic_fetch_add(&cas->stats.objects_evicted, 1);
}

void cfs_cas_trim_idle(struct cfs_cas *cas, size_t keep)
{
	while (cas->n_idle > keep)
		idle_evict(cas, cas->idle_tail);
}

struct cfs_object *cfs_object_ref(struct cfs_object *obj)
{
	if (obj)
		atomic_fetch_add(&obj->refcount, 1);
	return obj;
}

struct cfs_object *cfs_object_unref(struct cfs_object *obj)
{
	struct cfs_cas *cas;
	unsigned c;
	bool last;

	if (!obj)
		return NULL;
	/* Not the last reference: no lock.  The last one is dropped under the
	 * cas lock, where lookups take references from 0. */
	c = atomic_load(&obj->refcount);
	while (c > 1 && !atomic_compare_exchange_weak(&obj->refcount, &c, c - 1))
		;
	if (c > 1)
		return NULL;
	cas = obj->cas;
	pthread_mutex_lock(&cas->lock);
	last = atomic_fetch_sub(&obj->refcount, 1) == 1;
	if (last) {
		if (obj->state == CFS_OBJ_READY && cas->opts.max_idle_objects > 0) {
			/* Keep it open, tree and all, for the next use. */
			obj->idle = true;
			obj->idle_prev = NULL;
			obj->idle_next = cas->idle_head;
			if (cas->idle_head)
				cas->idle_head->idle_prev = obj;
			cas->idle_head = obj;
			if (!cas->idle_tail)
				cas->idle_tail = obj;
			cas->n_idle++;
			cfs_cas_trim_idle(cas, cas->opts.max_idle_objects);
		} else {
			struct cfs_merkle *t = atomic_load(&obj->tree);

			table_remove(cas, obj);
			if (t && obj->state == CFS_OBJ_READY) {
				cfs_tree_cache_put(&cas->trees, t);
				atomic_store(&obj->tree, NULL);
			}
			object_free(obj);
		}
	}
	pthread_mutex_unlock(&cas->lock);
	if (last)
		cfs_cas_unref(cas); /* the reference the object in use held */
	return NULL;
}

const char *cfs_verify_method_name(enum cfs_verify_method m)
{
	switch (m) {
	case CFS_VERIFY_OFF:
		return "off";
	case CFS_VERIFY_KERNEL:
		return "kernel";
	case CFS_VERIFY_USERSPACE:
		return "userspace";
	}
	return "unknown";
}

/* Choose and set up the verification method of a freshly opened object. */
static int setup_method(struct cfs_cas *cas, struct cfs_object *obj)
{
	struct cfs_merkle *t;

	if (!cas->opts.verify || !obj->has_digest) {
		/* No digest and not required (the open checked require_digest):
		 * nothing to verify against. */
		obj->method = CFS_VERIFY_OFF;
		return 0;
	}

	if (cas->opts.method != CFS_METHOD_USERSPACE) {
		uint8_t measured[CFS_DIGEST_SIZE];
		int r = cas->verity.measure ? cas->verity.measure(cas->verity.userdata, obj->fd, measured)
					    : -EOPNOTSUPP;

		if (r == 0) {
			/* The kernel checks every block of this file against
			 * its digest; it must be the digest the image wants. */
			if (memcmp(measured, obj->digest, CFS_DIGEST_SIZE) != 0)
				return -EIO;
			obj->method = CFS_VERIFY_KERNEL;
			return 0;
		}
		if (cas->opts.method == CFS_METHOD_KERNEL)
			return r;
	}

	/* The tree comes at the first read that needs it; one still in
	 * memory is free to take now. */
	obj->method = CFS_VERIFY_USERSPACE;
	pthread_mutex_lock(&cas->lock);
	t = cfs_tree_cache_take(&cas->trees, obj->digest);
	pthread_mutex_unlock(&cas->lock);
	if (t && t->data_size != obj->size) {
		/* Cannot be: the digest covers the size.  Do not use it. */
		t = cfs_merkle_free(t);
	}
	if (t) {
		atomic_fetch_add(&cas->stats.trees_from_memory, 1);
		atomic_store_explicit(&obj->tree, t, memory_order_release);
	}
	return 0;
}

static int object_setup(struct cfs_cas *cas, struct cfs_object *obj, uint64_t size)
{
	struct stat st;
	int r, fd = -1;

	r = open_in_store(cas, obj->key, &fd, &obj->basedir);
	if (r < 0)
		return r;
	obj->fd = fd;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EPERM;
	/* Opened O_NONBLOCK so that a FIFO planted in the store cannot block
	 * us; io_uring would honour it on regular files, so clear it. */
	if (fcntl(fd, F_SETFL, 0) < 0)
		return -errno;
	if ((uint64_t)st.st_size != size)
		return -EIO;
	obj->size = size;
	return setup_method(cas, obj);
}

int cfs_cas_open_object(struct cfs_cas *cas, const char *redirect, size_t redirect_len,
			const uint8_t *digest, uint64_t size, struct cfs_object **ret_obj)
{
	_cleanup_free_ char *key = NULL;
	struct cfs_object *obj;
	uint64_t h;
	int r;

	if (redirect) {
		r = cfs_redirect_normalize(redirect, redirect_len, &key);
		if (r < 0)
			return r;
	}
	if (digest) {
		char want[2 * CFS_DIGEST_SIZE + 2];

		cfs_object_path(digest, want);
		if (!key) {
			key = strdup(want);
			if (!key)
				return -ENOMEM;
		} else if (strcmp(key, want) != 0) {
			return -EINVAL;
		}
	} else if (!key) {
		return -EINVAL;
	} else if (cas->opts.verify && cas->opts.require_digest) {
		return -ENOKEY;
	}
	h = key_hash(key, digest != NULL);

	pthread_mutex_lock(&cas->lock);
	for (obj = cas->buckets[h % cas->nbuckets]; obj; obj = obj->hash_next) {
		if (obj->hash == h && obj->has_digest == (digest != NULL) && strcmp(obj->key, key) == 0)
			break;
	}
	if (obj && atomic_load(&obj->refcount) == 0 && obj->idle && obj->failed && failed_file_replaced(cas, obj)) {
		/* Its data failed the digest, and the file at its path is
		 * another one now (the store was repaired): start afresh. */
		idle_evict(cas, obj);
		obj = NULL;
	}
	if (obj) {
		/* References are taken from 0 only here, under the lock; an
		 * object in use holds one reference to the cas. */
		if (atomic_fetch_add(&obj->refcount, 1) == 0) {
			if (obj->idle)
				idle_unlink(cas, obj);
			cas_ref(cas);
		}
		/* Wait for whoever is setting it up. */
		while (obj->state == CFS_OBJ_INIT)
			pthread_cond_wait(&cas->init_cond, &cas->lock);
		r = obj->state == CFS_OBJ_READY ? 0 : obj->init_error < 0 ? obj->init_error : -EIO;
		pthread_mutex_unlock(&cas->lock);
		if (r == 0 && obj->size != size)
			r = -EIO;
		if (r < 0) {
			cfs_object_unref(obj);
			return r;
		}
		*ret_obj = obj;
		return 0;
	}

	obj = calloc(1, sizeof(*obj));
	if (!obj) {
		pthread_mutex_unlock(&cas->lock);
		return -ENOMEM;
	}
	atomic_init(&obj->refcount, 1);
	obj->cas = cas_ref(cas);
	obj->fd = -1;
	pthread_mutex_init(&obj->lock, NULL);
	pthread_cond_init(&obj->cond, NULL);
	obj->hash = h;
	obj->key = steal_ptr(&key);
	obj->has_digest = digest != NULL;
	if (digest)
		memcpy(obj->digest, digest, CFS_DIGEST_SIZE);
	obj->state = CFS_OBJ_INIT;
	if (cas->nobjects >= cas->nbuckets)
		table_grow(cas);
	obj->hash_next = cas->buckets[h % cas->nbuckets];
	cas->buckets[h % cas->nbuckets] = obj;
	cas->nobjects++;
	pthread_mutex_unlock(&cas->lock);

	/* The slow part (hashing the object) runs without any lock held. */
	r = object_setup(cas, obj, size);

	pthread_mutex_lock(&cas->lock);
	if (r < 0) {
		/* Forget the failure for later opens (the store may be fixed),
		 * but let current waiters see it. */
		table_remove(cas, obj);
		obj->init_error = r;
		obj->state = CFS_OBJ_FAILED;
	} else {
		obj->state = CFS_OBJ_READY;
	}
	pthread_cond_broadcast(&cas->init_cond);
	pthread_mutex_unlock(&cas->lock);
	if (r < 0) {
		cfs_object_unref(obj);
		return r;
	}
	atomic_fetch_add(&cas->stats.objects_opened, 1);
	atomic_fetch_add(&cas->stats.by_method[obj->method < 3 ? obj->method : CFS_VERIFY_OFF], 1);
	*ret_obj = obj;
	return 0;
}

enum cfs_verify_method cfs_object_method(const struct cfs_object *obj)
{
	return obj->method;
}

int cfs_object_fd(const struct cfs_object *obj)
{
	return obj->fd;
}

uint64_t cfs_object_size(const struct cfs_object *obj)
{
	return obj->size;
}
