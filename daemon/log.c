/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Where the daemon's messages go (stderr, or syslog once daemonized), the
 * table that keeps one failure from being logged on every request, and the
 * sd_notify protocol.  Kept apart from main.c so that the request handlers
 * can be linked without the startup code (fuzz/fuzz-daemon.c does).
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include "cfsd.h"

struct cfsd *cfsd_global;

static bool log_to_syslog;
static bool log_priority; /* stderr is the journal: "<N>" before each line */

__attribute__((format(printf, 2, 0)))
static void vlog(enum fuse_log_level lvl, const char *fmt, va_list ap)
{
	static const char hex[] = "0123456789abcdef";
	char buf[2048], out[4 * sizeof(buf)];
	size_t j = 0;

	vsnprintf(buf, sizeof(buf), fmt, ap);
	/* Paths and redirects in messages come from the image and may hold
	 * any byte: show control characters as \xHH so that one message stays
	 * one line and no escape sequence reaches a terminal or the journal. */
	for (const unsigned char *p = (const unsigned char *)buf; *p; p++) {
		if ((*p < 0x20 && !(*p == '\n' && p[1] == '\0')) || *p == 0x7f) {
			out[j++] = '\\';
			out[j++] = 'x';
			out[j++] = hex[*p >> 4];
			out[j++] = hex[*p & 15];
		} else {
			out[j++] = (char)*p;
		}
	}
	out[j] = '\0';
	if (log_to_syslog)
		fuse_log(lvl, "%s", out);
	else
		fuse_log(lvl, "composefs-fuse: %s", out);
}

void cfsd_log(enum fuse_log_level lvl, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog(lvl, fmt, ap);
	va_end(ap);
}

int cfsd_log_errno(enum fuse_log_level lvl, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog(lvl, fmt, ap);
	va_end(ap);
	return err;
}

__attribute__((format(printf, 2, 0)))
static void syslog_func(enum fuse_log_level level, const char *fmt, va_list ap)
{
	vsyslog((int)level, fmt, ap);
}

int cfsd_notify(const char *msg)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	_cleanup_close_ int fd = -EBADF;
	size_t len;
	socklen_t salen;

	if (!path || !*path)
		return 1;
	len = strlen(path);
	if (len >= sizeof(sa.sun_path) || (path[0] != '/' && path[0] != '@'))
		return -EINVAL;
	memcpy(sa.sun_path, path, len);
	if (path[0] == '@')
		sa.sun_path[0] = '\0'; /* abstract namespace */
	salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] == '/'));
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen) < 0)
		return -errno;
	return 0;
}

/* stderr as the journal reads it: each line led by its syslog priority
 * (sd-daemon(3)); fuse_log_level values are syslog's. */
__attribute__((format(printf, 2, 0)))
static void stderr_func(enum fuse_log_level level, const char *fmt, va_list ap)
{
	char buf[8192];

	vsnprintf(buf, sizeof(buf), fmt, ap);
	if (log_priority)
		fprintf(stderr, "<%d>%s", (int)level, buf);
	else
		fputs(buf, stderr);
}

void cfsd_log_init(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	/* systemd sets JOURNAL_STREAM to the device and inode of the stream
	 * it connected to stdout/stderr; a match means the journal reads it
	 * (not a redirection made since, nor a pipe a script reads). */
	log_priority = js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 &&
		       fstat(STDERR_FILENO, &st) == 0 && (unsigned long long)st.st_dev == dev &&
		       (unsigned long long)st.st_ino == ino;
	fuse_set_log_func(stderr_func);
}

void cfsd_log_to_syslog(void)
{
	log_to_syslog = true;
	openlog("composefs-fuse", LOG_PID, LOG_DAEMON);
	fuse_set_log_func(syslog_func);
}

/* Keys already logged (cfsd_first_error()): one line per object or inode. */
#define LOGGED_MAX 4096

struct cfsd_logged {
	pthread_mutex_t lock;
	uint64_t logged[LOGGED_MAX];
	size_t n_logged;
};

int cfsd_logged_new(struct cfsd *d)
{
	struct cfsd_logged *l = calloc(1, sizeof(*l));

	if (!l)
		return -ENOMEM;
	pthread_mutex_init(&l->lock, NULL);
	d->logged = l;
	return 0;
}

void cfsd_logged_free(struct cfsd *d)
{
	if (!d->logged)
		return;
	pthread_mutex_destroy(&d->logged->lock);
	free(d->logged);
	d->logged = NULL;
}

bool cfsd_first_error(struct cfsd *d, uint64_t key)
{
	struct cfsd_logged *f = d->logged;
	bool first = true, now_full = false;

	pthread_mutex_lock(&f->lock);
	for (size_t i = 0; i < f->n_logged; i++) {
		if (f->logged[i] == key) {
			first = false;
			break;
		}
	}
	if (first && f->n_logged < LOGGED_MAX) {
		f->logged[f->n_logged++] = key;
		now_full = f->n_logged == LOGGED_MAX;
	} else if (first) {
		/* Full: log no more, or a hostile image with many bad inodes
		 * would have every request log and walk the tree for a name. */
		first = false;
	}
	pthread_mutex_unlock(&f->lock);
	if (now_full)
		cfsd_log(FUSE_LOG_WARNING, "%d objects with errors logged: no more are\n", LOGGED_MAX);
	if (first)
		cfsd_notify_status(d, "serving");
	return first;
}

void cfsd_notify_status(struct cfsd *d, const char *state)
{
	struct cfs_cas_stats cs = { 0 };
	unsigned long long logged;
	char msg[256];

	if (!d->notify)
		return;
	if (d->cas)
		cfs_cas_get_stats(d->cas, &cs);
	pthread_mutex_lock(&d->logged->lock);
	logged = d->logged->n_logged;
	pthread_mutex_unlock(&d->logged->lock);
	snprintf(msg, sizeof(msg), "STATUS=%s; %llu objects opened with verification; %llu files or objects with errors%s",
		 state,
		 (unsigned long long)(cs.objects_by_method[CFS_VERIFY_KERNEL] +
				      cs.objects_by_method[CFS_VERIFY_USERSPACE]),
		 logged, logged ? " (see the log)" : "");
	(void)cfsd_notify(msg);
}
