/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * composefs-fuse: serve a composefs image read-only through FUSE, with the
 * content of external files verified against their fs-verity digests.
 *
 *   composefs-fuse [options] IMAGE MOUNTPOINT
 *   composefs-fuse -o source=IMAGE,basedir=DIR MOUNTPOINT      (upstream form)
 *   mount -t fuse.composefs-fuse IMAGE MNT -o basedir=DIR       (mount.fuse3)
 *
 * Everything that can fail for a reason the user can fix (bad image, digest
 * mismatch, missing basedir, unusable mountpoint, bad option) is checked
 * before mounting, and reported with the cause.
 *
 * This file is the order of things: options (options.c), the image and its
 * digest or signature, the store, the mountpoint and the process around the
 * mount (lifecycle.c), the session, the stats file; the requests are served
 * by ops.c and files.c.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cfs-tools.h"
#include "cfsd.h"
#include "lifecycle.h"
#include "options.h"

/* The stats file and the daemon it describes; under stats_lock, because the
 * SIGUSR1 thread may be writing while main() tears the daemon down. */
static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;
static char *stats_path;
static struct cfsd *stats_d;

static void write_stats_locked(void)
{
	_cleanup_free_ char *tmp = NULL;
	FILE *f;
	int fd;

	if (!stats_path || !stats_d)
		return;
	if (asprintf(&tmp, "%s.tmp.%ld", stats_path, (long)getpid()) < 0)
		return;
	/* The name is predictable and the directory may be shared (/tmp): never
	 * write through a file or symlink someone else put there. */
	(void)unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	f = fd >= 0 ? fdopen(fd, "w") : NULL;
	if (!f) {
		cfsd_log(FUSE_LOG_WARNING, "stats_file '%s': %m\n", tmp);
		if (fd >= 0) {
			close(fd);
			unlink(tmp);
		}
		return;
	}
	cfsd_stats_print(stats_d, f);
	if (fclose(f) != 0 || rename(tmp, stats_path) < 0) {
		cfsd_log(FUSE_LOG_WARNING, "stats_file '%s': %m\n", stats_path);
		unlink(tmp);
	}
}

static void write_stats(void)
{
	pthread_mutex_lock(&stats_lock);
	write_stats_locked();
	pthread_mutex_unlock(&stats_lock);
}

/* Write the stats one last time (@final) or not, and let the SIGUSR1 thread
 * write no more: the daemon is about to be freed. */
static void stop_stats(bool final)
{
	pthread_mutex_lock(&stats_lock);
	if (final)
		write_stats_locked();
	stats_d = NULL;
	pthread_mutex_unlock(&stats_lock);
}

/* SIGUSR1 is blocked in every thread; this one waits for it. */
static void *stats_thread(void *arg)
{
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	for (;;) {
		if (sigwait(&set, &sig) == 0 && sig == SIGUSR1)
			write_stats();
	}
	return NULL;
}

static int open_cas(struct cfsd *d, const char *basedirs, const struct cfs_cas_options *co)
{
	int r = cfs_cas_open(basedirs, co, &d->cas);
	if (r < 0)
		cfsd_log(FUSE_LOG_ERR, "cannot open object store '%s': %s\n", basedirs, strerror(-r));
	return r;
}

/*
 * Open the store for the first time, deciding whether Merkle trees persist.
 * cfs_cas_open() fails when the tree cache directory cannot be created or
 * opened, which it reports as a plain -errno: opening again without it
 * tells a tree cache problem from a store problem.  An unusable default
 * location (a read-only or missing home, as for many service users) costs
 * only persistence, with one warning; a directory the user named is an
 * error naming it.  On return co->tree_cache_dir is what the store uses,
 * for the reopen after daemonizing.
 */
static int open_cas_first(struct cfsd *d, const char *basedirs, struct cfs_cas_options *co,
			  bool explicit_dir)
{
	const char *dir = co->tree_cache_dir, *why;
	int r2, r = cfs_cas_open(basedirs, co, &d->cas);

	if (r >= 0 || !dir)
		goto out;
	co->tree_cache_dir = NULL;
	r2 = cfs_cas_open(basedirs, co, &d->cas);
	if (r2 < 0) {
		r = r2;
		goto out; /* the store itself */
	}
	why = cfs_tree_cache_strerror(r);
	if (explicit_dir) {
		d->cas = cfs_cas_unref(d->cas);
		cfsd_log(FUSE_LOG_ERR, "tree_cache '%s': %s\n", dir, why);
		return r;
	}
	cfsd_log(FUSE_LOG_WARNING, "tree cache '%s' unusable (%s): Merkle trees are not saved "
		 "across mounts\n", dir, why);
	return 0;
out:
	if (r < 0)
		cfsd_log(FUSE_LOG_ERR, "cannot open object store '%s': %s\n", basedirs,
			strerror(-r));
	return r;
}

static int check_digest(struct cfsd *d, const char *image, const struct cfsd_options *o);

static void *scan_thread(void *p)
{
	(void)cfsd_scan_xattrs(p); /* a corrupt image: every request answered */
	return NULL;
}

/* Read the image into memory the daemon owns, so that later changes to the
 * file cannot change what is served, and check its digest there. */
static int load_image(struct cfsd *d, const char *image, const struct cfsd_options *o)
{
	_cleanup_close_ int fd = -EBADF;
	struct cfs_img_diag diag;
	pthread_t scan;
	bool scanning;
	int r;

	fd = open(image, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		cfsd_log(FUSE_LOG_ERR, "image '%s': %s\n", image, strerror(-r));
		return r;
	}
	/* The reader names what is wrong (the corrupt structure, or the
	 * refused incompat features), so the message says more than errno. */
	r = cfs_img_open_fd_ex(fd, 0, &diag, &d->img);
	if (r < 0) {
		cfsd_log(FUSE_LOG_ERR, "image '%s': %s\n", image,
			diag.reason[0] ? diag.reason : strerror(-r));
		return r;
	}
	cfs_img_get_info(d->img, &d->info);
	d->image_fd = steal_fd(&fd);
	/* The walk for xattrs and ACLs runs beside the digest check (half of
	 * the mount time each, on a large image); its answer is used only if
	 * the digest matches. */
	scanning = pthread_create(&scan, NULL, scan_thread, d) == 0;
	if (!scanning)
		(void)cfsd_scan_xattrs(d);
	r = check_digest(d, image, o);
	if (scanning)
		pthread_join(scan, NULL);
	return r;
}

/* An fs-verity signature over the image's digest, by a key of @certs. */
static int check_signature(const char *image, const uint8_t digest[CFS_DIGEST_SIZE], const uint8_t *bytes,
			   size_t size, const char *sig_path, const char *certs)
{
	char reason[512] = "";
	int r;

	if (!certs) {
		cfsd_log(FUSE_LOG_ERR, "signature= needs cert=FILE[:FILE...], the certificates "
				"to trust\n");
		return -EINVAL;
	}
	r = cfs_signature_verify_file(sig_path, certs, digest, bytes, size, reason, sizeof(reason));
	if (r < 0) {
		cfsd_log(FUSE_LOG_ERR, "image '%s': signature '%s' refused: %s\n", image, sig_path,
			reason[0] ? reason : strerror(-r));
		return r;
	}
	cfsd_log(FUSE_LOG_NOTICE, "image '%s': signature '%s' verified\n", image, sig_path);
	return 0;
}

static int check_digest(struct cfsd *d, const char *image, const struct cfsd_options *o)
{
	uint8_t want[CFS_DIGEST_SIZE], got[CFS_DIGEST_SIZE];
	char hex[2 * CFS_DIGEST_SIZE + 1];
	size_t size;
	const uint8_t *bytes = cfs_img_bytes(d->img, &size);
	int r;

	if (!o->digest && !o->signature) {
		if (o->cert) {
			cfsd_log(FUSE_LOG_ERR, "cert= is only used with signature=FILE\n");
			return -EINVAL;
		}
		return 0;
	}
	if (o->digest && cfs_digest_from_hex(o->digest, want) < 0) {
		cfsd_log(FUSE_LOG_ERR, "digest=%s: expected 64 hex digits\n", o->digest);
		return -EINVAL;
	}
	r = cfs_fsverity_digest_mem(bytes, size, got);
	if (r < 0) {
		cfsd_log(FUSE_LOG_ERR, "image '%s': computing its digest: %s\n", image, strerror(-r));
		return -EINVAL;
	}
	if (o->digest && memcmp(want, got, sizeof(want)) != 0) {
		cfs_digest_to_hex(got, hex);
		cfsd_log(FUSE_LOG_ERR, "image '%s': fs-verity digest %s does not match "
				"digest=%s\n", image, hex, o->digest);
		return -EINVAL;
	}
	/* Both may be given: both must hold. */
	if (o->signature)
		return check_signature(image, got, bytes, size, o->signature, o->cert) < 0 ? -EINVAL : 0;
	return 0;
}

/* Read-only, permissions checked by the kernel (as overlayfs does), the
 * image as the source, allow_other for root (unless private), auto_unmount
 * for ordinary users; then the
 * mountpoint, for fuse_parse_cmdline(). */
static int add_mount_options(struct fuse_args *args, const char *image, const char *mnt,
			     bool auto_unmount, bool allow_other)
{
	_cleanup_free_ char *escaped = NULL, *fsname = NULL;

	if (fuse_opt_add_arg(args, "-oro,default_permissions,subtype=composefs-fuse") < 0 ||
	    (allow_other && fuse_opt_add_arg(args, "-oallow_other") < 0) ||
	    fuse_opt_add_opt_escaped(&escaped, image) < 0 ||
	    asprintf(&fsname, "-ofsname=%s", escaped) < 0 || fuse_opt_add_arg(args, fsname) < 0 ||
	    (auto_unmount && fuse_opt_add_arg(args, "-oauto_unmount") < 0) ||
	    fuse_opt_add_arg(args, mnt) < 0)
		return -ENOMEM;
#if FUSE_MAJOR_VERSION == 3 && FUSE_MINOR_VERSION >= 18
	/* libfuse 3.18 and later serve FUSE over io_uring themselves (and
	 * fall back to /dev/fuse): uring.c is only for 3.14. */
	if (cfsd_global->uring && fuse_opt_add_arg(args, "-oio_uring") < 0)
		return -ENOMEM;
#endif
	return 0;
}

/* Returns 0 on unmount, the signal number after SIGTERM/SIGINT/SIGHUP, or
 * -errno. */
static int run_loop(struct fuse_session *se, const struct fuse_cmdline_opts *cl)
{
	struct fuse_loop_config *cfg;
	int r;

	if (cl->singlethread)
		return fuse_session_loop(se);
	cfg = fuse_loop_cfg_create();
	if (!cfg)
		return -ENOMEM;
	fuse_loop_cfg_set_clone_fd(cfg, (unsigned)cl->clone_fd);
	fuse_loop_cfg_set_max_threads(cfg, cl->max_threads);
	if (cl->max_idle_threads != UINT_MAX)
		fuse_loop_cfg_set_idle_threads(cfg, cl->max_idle_threads);
	r = fuse_session_loop_mt(se, cfg);
	fuse_loop_cfg_destroy(cfg);
	return r;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct cfsd_options o = { 0 };
	struct fuse_cmdline_opts cl = { 0 };
	struct cfs_cas_options co = { .verify = true, .io = CFS_IO_AUTO };
	_cleanup_free_ char *basedirs = NULL, *tree_cache = NULL;
	const char *image, *mnt;
	struct cfsd d = { .timeout = 86400.0, .image_fd = -1 };
	bool mounted = false, sig_installed = false;
	int r, ret = 1;

	cfsd_global = &d;
	cfsd_log_init();
	if (fuse_opt_parse(&args, &o, cfsd_opts, cfsd_opt_proc) < 0)
		goto out_args;

	if (o.help) {
		cfsd_usage(argv[0]);
		printf("FUSE options:\n");
		fuse_cmdline_help();
		fuse_lowlevel_help();
		ret = 0;
		goto out_args;
	}
	if (o.version) {
		printf("composefs-fuse %s (libfuse %s, passthrough: %s)\n", PACKAGE_VERSION,
		       fuse_pkgversion(), HAVE_FUSE_PASSTHROUGH ? "libfuse API" : "custom-io shim");
		ret = 0;
		goto out_args;
	}

	/* IMAGE MOUNTPOINT, or source=IMAGE and MOUNTPOINT. */
	if (o.n_positional == 2 && !o.source) {
		image = o.positional[0];
		mnt = o.positional[1];
	} else if (o.n_positional == 1 && o.source) {
		image = o.source;
		mnt = o.positional[0];
	} else {
		cfsd_log(FUSE_LOG_ERR, "expected IMAGE MOUNTPOINT (or -o source=IMAGE "
				"MOUNTPOINT); see --help\n");
		goto out_args;
	}

	if (cfsd_apply_options(&o, &d, &co) < 0)
		goto out_args;

	if (load_image(&d, image, &o) < 0)
		goto out_img;

	if (o.basedir && cfsd_resolve_basedirs(o.basedir, &basedirs) < 0)
		goto out_img;

	if (cfsd_check_mountpoint(mnt) < 0)
		goto out_img;

	if (o.tree_cache && !strcmp(o.tree_cache, "none")) {
		tree_cache = NULL;
	} else if (o.tree_cache) {
		tree_cache = cfsd_absolute_path(o.tree_cache);
		if (!tree_cache) {
			cfsd_log(FUSE_LOG_ERR, "tree_cache '%s': %m\n", o.tree_cache);
			goto out_img;
		}
	} else if (cfsd_default_tree_cache(&tree_cache) < 0) {
		goto out_img;
	}
	co.tree_cache_dir = tree_cache;
	co.max_idle_objects = cfsd_setup_fd_limit(d.max_threads);

	/* Open the store before mounting so that its errors stop us here.
	 * A daemon opens it again after fork(): io_uring rings and threads do
	 * not survive fork. */
	if (basedirs && open_cas_first(&d, basedirs, &co, o.tree_cache != NULL) < 0)
		goto out_img;

	/* Root's mount serves everyone, as the kernel's composefs mount does
	 * (default_permissions: the kernel checks modes and ACLs). */
	if (add_mount_options(&args, image, mnt, geteuid() != 0 && !o.noauto_unmount,
			      geteuid() == 0 && !o.private_mount) < 0)
		goto out_cas;
	if (fuse_parse_cmdline(&args, &cl) != 0)
		goto out_cas;
	if (d.max_threads)
		cl.max_threads = d.max_threads;
	d.single_thread = cl.singlethread || cl.max_threads == 1;

	d.notify = getenv("NOTIFY_SOCKET") != NULL;
	if (cfsd_handlers_new(&d) < 0)
		goto out_cas;
	d.se = fuse_session_new(&args, &cfsd_ops, sizeof(cfsd_ops), &d);
	if (!d.se)
		goto out_cas; /* libfuse printed why (e.g. an unknown option) */
	if (fuse_set_signal_handlers(d.se) != 0)
		goto out_session;
	sig_installed = true;
	/* Started before mounting, so that no moment exists where the mount is
	 * up and nothing would clean it up; it outlives fuse_daemonize()'s
	 * parent because the daemon inherits its pipe. */
	if (geteuid() != 0 && !o.noauto_unmount && strncmp(cl.mountpoint, "/dev/fd/", 8) != 0) {
		r = cfsd_start_unmount_watchdog(cl.mountpoint);
		if (r < 0)
			cfsd_log(FUSE_LOG_WARNING, "auto_unmount watchdog: %s\n", strerror(-r));
	}
	if (fuse_session_mount(d.se, cl.mountpoint) != 0) {
		cfsd_log(FUSE_LOG_ERR, "cannot mount on '%s'\n", cl.mountpoint);
		goto out_session;
	}
	mounted = true;

	/* The custom-io shim: passthrough and FUSE over io_uring both need it. */
	if (d.passthrough != CFSD_PT_OFF || d.uring) {
		r = cfsd_pt_setup(&d, d.se);
		if (r < 0 && r != -EOPNOTSUPP)
			cfsd_log(FUSE_LOG_WARNING, "passthrough unavailable: %s\n", strerror(-r));
	}

	if (!cl.foreground) {
		d.cas = cfs_cas_unref(d.cas);
		if (fuse_daemonize(0) != 0)
			goto out_unmount;
		cfsd_log_to_syslog();
		if (basedirs && open_cas(&d, basedirs, &co) < 0)
			goto out_unmount;
	}

	if (geteuid() == 0 && !o.keep_caps) {
		r = cfsd_drop_privileges();
		if (r < 0)
			cfsd_log(FUSE_LOG_WARNING, "cannot drop capabilities: %s\n", strerror(-r));
	}

	pthread_mutex_lock(&stats_lock);
	stats_path = o.stats_file;
	stats_d = &d;
	pthread_mutex_unlock(&stats_lock);
	if (stats_path) {
		pthread_t t;
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGUSR1);
		pthread_sigmask(SIG_BLOCK, &set, NULL);
		if (pthread_create(&t, NULL, stats_thread, NULL) == 0)
			pthread_detach(t);
	}

	cfsd_log(FUSE_LOG_NOTICE,
		 "serving '%s' on '%s': format %u, %llu inodes, verity=%s, passthrough=%s (%s), "
		 "io=%s, tree cache %s, xattrs: %s\n",
		 image, cl.mountpoint, d.info.composefs_version, (unsigned long long)d.info.inodes,
		 cfsd_verity_name(d.verity), cfsd_passthrough_name(d.passthrough),
		 cfsd_pt_describe(), d.cas ? cfs_cas_io_backend(d.cas) : "none",
		 d.cas && co.tree_cache_dir ? co.tree_cache_dir : "off",
		 !d.image_has_xattrs && d.xattrs == CFSD_XATTRS_AUTO ? "none in the image (not asked for)" :
		 d.image_has_acls ? "served, with POSIX ACLs" : "served");

	r = run_loop(d.se, &cl);
	/* 0 on unmount, the signal number on SIGTERM/SIGINT/SIGHUP. */
	if (r < 0)
		cfsd_log(FUSE_LOG_ERR, "session loop failed: %s\n", strerror(-r));
	else
		ret = 0;
	if (d.notify) {
		(void)cfsd_notify("STOPPING=1");
		cfsd_notify_status(&d, "stopping");
	}
	stop_stats(true);

out_unmount:
	stop_stats(false);
	if (mounted)
		fuse_session_unmount(d.se);
	cfsd_uring_stop(); /* its threads end with the connection */
	cfsd_handlers_stop(&d);
out_session:
	if (sig_installed)
		fuse_remove_signal_handlers(d.se);
	fuse_session_destroy(d.se);
out_cas:
	cfsd_handlers_free(&d);
	d.cas = cfs_cas_unref(d.cas);
out_img:
	d.img = cfs_img_unref(d.img);
	if (d.image_fd >= 0)
		close(d.image_fd);
out_args:
	free(cl.mountpoint);
	fuse_opt_free_args(&args);
	for (int i = 0; i < o.n_positional; i++)
		free(o.positional[i]);
	free(o.source);
	free(o.basedir);
	free(o.digest);
	free(o.verity);
	free(o.passthrough);
	free(o.tree_cache);
	free(o.tree_cache_size);
	free(o.threads);
	free(o.xattrs);
	free(o.signature);
	free(o.cert);
	free(o.uring);
	free(o.upperdir);
	free(o.workdir);
	free(o.idmap);
	free(o.io);
	free(o.stats_file);
	free(o.timeout);
	return ret;
}
