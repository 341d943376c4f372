/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The content-addressed object store and the verification engine.
 * No byte of an object is returned by cfs_object_pread() unless it has been
 * verified against the fs-verity digest the caller expects (kernel fs-verity,
 * or the userspace Merkle tree), unless verification was turned off.
 * Thread-safe: a cas and its objects may be used from many threads.
 * Errors are negative errno values.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cfs-util.h"

#define CFS_VERITY_BLOCK_SIZE 4096

enum cfs_verify_method {
	CFS_VERIFY_OFF,       /* caller asked for no verification */
	CFS_VERIFY_KERNEL,    /* backing file has fs-verity, measured digest matched */
	CFS_VERIFY_USERSPACE, /* our Merkle tree, checked per block on read */
};
const char *cfs_verify_method_name(enum cfs_verify_method m);

/* The kernel fs-verity interface, replaceable so tests can stand in for it. */
struct cfs_verity_ops {
	/* FS_IOC_MEASURE_VERITY: 0 and the SHA-256 digest; -ENODATA if verity
	 * is not enabled on the file; -EOPNOTSUPP/-ENOTTY if unsupported. */
	int (*measure)(void *userdata, int fd, uint8_t ret_digest[CFS_DIGEST_SIZE]);
	/* FS_IOC_ENABLE_VERITY (SHA-256, 4096-byte blocks). */
	int (*enable)(void *userdata, int fd);
	void *userdata;
};
extern const struct cfs_verity_ops cfs_verity_kernel_ops;

enum cfs_io_backend {
	CFS_IO_AUTO,    /* io_uring if it works, else pread */
	CFS_IO_URING,
	CFS_IO_PREAD,
};

struct cfs_cas;
struct cfs_object;

/* Which verification method to try (with verify = true). */
enum cfs_method_choice {
	CFS_METHOD_AUTO,       /* kernel fs-verity if measurable, else userspace */
	CFS_METHOD_USERSPACE,  /* never ask the kernel */
	CFS_METHOD_KERNEL,     /* kernel only: objects it cannot measure fail */
};

struct cfs_cas_options {
	bool verify;                          /* false: method OFF for every object */
	const struct cfs_verity_ops *verity;  /* NULL: cfs_verity_kernel_ops */
	const char *tree_cache_dir;           /* NULL: do not persist Merkle trees;
	                                         created (0700) if missing; must not be
	                                         inside a basedir (-EXDEV) nor have '.' or
	                                         '..' past its existing part (-EINVAL); see
	                                         cfs_tree_cache_strerror(); if it cannot
	                                         be created or opened cfs_cas_open()
	                                         fails with that -errno: retry with NULL
	                                         to run without persistence */
	uint64_t tree_cache_bytes;            /* in-memory tree LRU bound; 0: 64 MiB */
	enum cfs_io_backend io;
	/* Added by the cas module (zero = the defaults): */
	enum cfs_method_choice method;
	bool require_digest;                  /* verify + no digest in the image: refuse
	                                         (-ENOKEY) instead of method OFF */
	uint64_t tree_cache_min_size;         /* persist trees of objects larger
	                                         than this (cache and store); 0: 128 KiB */
	size_t max_idle_objects;              /* objects kept open with their trees
	                                         while nobody uses them (one file
	                                         descriptor each); 0: 256 */
	bool store_trees;                     /* write trees built from data into
	                                         the store (BASEDIR/.cfs-trees) when it
	                                         is writable, else the tree cache */
};

/* The reason cfs_cas_open() refused a tree_cache_dir, in words: its -EXDEV
 * and -EINVAL are specific (see struct cfs_cas_options), the rest strerror(). */
const char *cfs_tree_cache_strerror(int r);

/* Counters for logs and tests (monotonic, read without a lock). */
struct cfs_cas_stats {
	uint64_t objects_opened;     /* object states set up (not counting reuse) */
	uint64_t objects_evicted;    /* idle objects closed to stay within the bound */
	uint64_t trees_built;        /* Merkle trees computed from object data */
	uint64_t trees_from_memory;  /* trees reused from the in-memory LRU */
	uint64_t trees_from_store;   /* trees stored beside the objects that passed the check */
	uint64_t trees_from_disk;    /* trees from the tree cache that passed the check */
	uint64_t trees_rejected;     /* stored or cached trees found corrupt */
	uint64_t trees_written;      /* trees written (store or cache) */
	uint64_t tree_write_errors;  /* persisting failed (not fatal) */
	uint64_t blocks_failed;      /* data blocks refused on read */
	uint64_t read_io_errors;     /* reads of the store that failed (I/O errors) */
	uint64_t objects_mismatched; /* objects whose data did not give their digest
	                                when their tree was built */
	uint64_t size_mismatches;    /* reads that found an object of another size */
	uint64_t bytes_read;         /* bytes read from object files */
	uint64_t blocks_hashed;      /* data blocks hashed */
	uint64_t lru_bytes;          /* bytes held by the in-memory tree LRU now */
	uint64_t idle_objects;       /* objects kept open, unused, now */
	uint64_t objects_by_method[3]; /* objects set up, by enum cfs_verify_method */
};
void cfs_cas_get_stats(struct cfs_cas *cas, struct cfs_cas_stats *ret_stats);

struct cfs_cas;
struct cfs_object;

/* A list of store directories as every tool reads it: one or more names
 * separated by ':', searched in order, none empty; a whole @spec that names
 * an existing directory is that one directory, ':' and all (upstream's
 * tools take one directory).  Returns the count and a NULL-terminated array
 * (free with cfs_strv_free()), -EINVAL for an empty list or name. */
int cfs_basedirs_parse(const char *spec, char ***ret_dirs);
void cfs_strv_free(char **v);

/* @basedirs: as cfs_basedirs_parse() reads it.
 * Each is opened now (O_PATH); -ENOENT/-ENOTDIR/... if one cannot be,
 * -EINVAL for an empty list or component.  @opts is copied.  The cas is freed when
 * the last of its own reference and its objects' references goes.  Do not
 * drop the last reference while other threads still use objects. */
int cfs_cas_open(const char *basedirs, const struct cfs_cas_options *opts, struct cfs_cas **ret_cas);
struct cfs_cas *cfs_cas_unref(struct cfs_cas *cas); /* takes NULL, returns NULL */
CFS_DEFINE_CLEANUP(struct cfs_cas *, cfs_cas_unref)
/* "io_uring" or "pread": the backend chosen at run time (io_uring when
 * io_uring_setup works: one ring per calling thread, created on first use
 * and freed at thread exit or by the last cfs_cas_unref()). */
const char *cfs_cas_io_backend(const struct cfs_cas *cas);
/* Could any basedir hold files with kernel fs-verity?  False when the
 * kernel or every basedir's filesystem lacks it (measured on the
 * directories), so that no object can use the kernel method. */
bool cfs_cas_kernel_verity_possible(struct cfs_cas *cas);

/* Open the object at @redirect (image path, "/xx/yyyy..." or "xx/yyyy...",
 * not NUL-terminated) beneath one of the base directories, never outside
 * them.  @digest is the expected fs-verity digest or NULL if the image has
 * none; @size is the file size recorded in the image.  Objects with the same
 * path share one verified state.  Errors: -ENOENT (missing), -EPERM (path
 * escapes the store or is a symlink), -EIO (digest or size mismatch),
 * -EINVAL (redirect and digest disagree).
 * More precisely (cas module):
 * - @redirect may be NULL when @digest is given: the path is then the
 *   digest's ("xx/yyyy...").  With both, the redirect must be that path.
 * - The verification method is chosen here, once per object state
 *   (kernel fs-verity is measured); nothing is read or hashed: the
 *   userspace method gets its tree at the first read that needs one.
 * - An object nobody holds stays open, with its tree, among the last
 *   max_idle_objects used: opening it again costs no I/O.
 * - -EPERM also for an object that is not a regular file (or a path with
 *   "..", "." or empty components); -ENAMETOOLONG for an oversized path.
 * - -ENOKEY: verify and require_digest are set and @digest is NULL.
 * - -EIO: size differs from @size, the data is already known not to hash
 *   to @digest (an unchanged file that failed before), or kernel fs-verity
 *   measured another digest.
 * - -EOPNOTSUPP/-ENODATA/-ENOTTY: method KERNEL forced, kernel cannot measure.
 * Thread-safe; concurrent opens of one object wait for a single setup. */
int cfs_cas_open_object(struct cfs_cas *cas, const char *redirect, size_t redirect_len,
			const uint8_t *digest, uint64_t size, struct cfs_object **ret_obj);
struct cfs_object *cfs_object_ref(struct cfs_object *obj);
struct cfs_object *cfs_object_unref(struct cfs_object *obj); /* takes NULL, returns NULL */
CFS_DEFINE_CLEANUP(struct cfs_object *, cfs_object_unref)

/* Read verified data.  Returns bytes read (short only at EOF), or -EIO if
 * any covered block fails verification (no data from it is returned).
 * (cas module) Lock-free; a warm read costs one SHA-256 per 4096-byte block
 * plus a bitmap test.  -EIO also when the backing file was truncated (or,
 * for its last partial block, extended) after open; other -errno from the
 * read itself.  A failed read leaves @buf zeroed or untouched, never with
 * unverified bytes, and does not poison the object: other blocks still
 * read.  Reads wider than 2 MiB are split; any bad block fails the call. */
ssize_t cfs_object_pread(struct cfs_object *obj, void *buf, size_t len, uint64_t off);
/* The same; and when serving it meant reading and hashing the whole object
 * to build its tree (no tree stored or cached), *@ret_whole receives that
 * verified copy (malloc'ed, cfs_object_size() bytes, the caller frees it)
 * so that the caller can hand it on instead of reading it again; else NULL.
 * Only objects up to 16 MiB are kept whole; larger ones are hashed once to
 * build the tree and again, block by block, as they are read. */
/* What made a read fail, for logs: the reader gets -EIO for all of them. */
enum cfs_fault_kind {
	CFS_FAULT_NONE,
	CFS_FAULT_MISMATCH, /* data do not match the digest (a block, or the whole
	                       object when its tree had to be built from them) */
	CFS_FAULT_SIZE,     /* the object is shorter or longer than recorded */
	CFS_FAULT_IO,       /* reading the store failed (@err, at @off) */
};
struct cfs_read_fault {
	enum cfs_fault_kind kind;
	int err;            /* errno of CFS_FAULT_IO */
	uint64_t off;       /* where: the block or the read that failed */
	bool whole;         /* it happened while building the tree from the data */
};
/* One line for a log: "I/O error from the object store at offset 8192:
 * Input/output error", "block at offset 4096 does not match ...". */
const char *cfs_fault_describe(const struct cfs_read_fault *f, char *buf, size_t bufsz);
ssize_t cfs_object_pread_whole(struct cfs_object *obj, void *buf, size_t len, uint64_t off, void **ret_whole,
			       struct cfs_read_fault *ret_fault);
enum cfs_verify_method cfs_object_method(const struct cfs_object *obj);
/* fsck: make sure every byte of the object matches its digest.  Builds the
 * tree from the data if there is none (and then that pass is the check);
 * otherwise (tree from a cache, or kernel fs-verity) reads and checks every
 * block.  0, -EIO, or -errno. */
int cfs_object_check_all(struct cfs_object *obj);
int cfs_object_fd(const struct cfs_object *obj); /* borrowed, O_RDONLY */
uint64_t cfs_object_size(const struct cfs_object *obj);

/* fs-verity digest (SHA-256, 4096-byte blocks, no salt) via libfsverity. */
int cfs_fsverity_digest_fd(int fd, uint8_t ret_digest[CFS_DIGEST_SIZE]);
int cfs_fsverity_digest_mem(const void *data, size_t size, uint8_t ret_digest[CFS_DIGEST_SIZE]);

/*
 * fs-verity built-in signatures (the format `fsverity sign` writes and the
 * kernel checks: detached PKCS#7 SignedData in DER over the "FSVerity"
 * formatted SHA-256 digest), checked with OpenSSL against the certificate
 * files @cert_paths (PEM, possibly several per file, or DER).  The signer
 * must be one of them; certificates inside the signature are never trusted;
 * validity dates are checked.  @data/@data_size (the signed file's bytes,
 * may be NULL) only serve to name a signature made over the SHA-512 digest.
 * 0, or -EKEYREJECTED (does not verify: wrong key, other content, expired
 * certificate...), -EBADMSG (not a PKCS#7 SignedData), -EOPNOTSUPP
 * (SHA-512), -EINVAL/-ENOENT (certificates); @reason says why in one line.
 */
int cfs_signature_verify(const void *sig, size_t sig_len, const char *const *cert_paths, size_t n_certs,
			 const uint8_t digest[CFS_DIGEST_SIZE], const void *data, size_t data_size,
			 char *reason, size_t reasonlen);
/* The same for the signature file @sig_path (at most 64 KiB) and the
 * colon-separated certificate files @cert_list (at most 16). */
#define CFS_SIGNATURE_MAX_CERTS 16
int cfs_signature_verify_file(const char *sig_path, const char *cert_list, const uint8_t digest[CFS_DIGEST_SIZE],
			      const void *data, size_t data_size, char *reason, size_t reasonlen);
/* Sign @digest with the PEM key and certificate (libfsverity): a DER
 * signature the kernel and cfs_signature_verify() accept; free() it. */
int cfs_signature_sign(const uint8_t digest[CFS_DIGEST_SIZE], const char *key_path, const char *cert_path,
		       uint8_t **ret_sig, size_t *ret_len);

/* Put the content of @src_fd into the store at @store_dir under @digest
 * (xx/yyyy...): reflink where possible, else copy; write a temporary file
 * then rename, never overwrite an existing object; enable fs-verity where
 * the filesystem supports it (failure to do so is not an error).  The copy
 * is hashed before it is linked in: -ESTALE, and nothing left in the store,
 * when its content is not the one @digest names (the source changed). */
int cfs_store_import(const char *store_dir, int src_fd, const uint8_t digest[CFS_DIGEST_SIZE]);
