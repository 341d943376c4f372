/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The daemon's process around its mount (lifecycle.h): the mountpoint
 * check and the replacement of a dead mount of ours, the auto_unmount
 * watchdog of an ordinary user's daemon, dropping capabilities as root and
 * the descriptor limit.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cfsd.h"
#include "lifecycle.h"

static char *find_in_path(const char *name)
{
	const char *path = getenv("PATH");
	_cleanup_free_ char *copy = strdup(path && *path ? path : "/usr/bin:/bin");
	char *save = NULL;

	if (!copy)
		return NULL;
	for (char *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
		char *p = NULL;
		if (asprintf(&p, "%s/%s", dir, name) < 0)
			return NULL;
		if (access(p, X_OK) == 0)
			return p;
		free(p);
	}
	return NULL;
}

/*
 * auto_unmount for ordinary users.  libfuse hands it to fusermount3, but
 * fusermount3 before libfuse 3.15 (Debian 12 ships 3.14) checks for a dead
 * filesystem by opening the mountpoint as root, which a FUSE mount without
 * allow_other refuses with EACCES, so a killed daemon leaves a dead mount.
 * This watchdog, a child that holds nothing but one end of a pipe, wakes up
 * when the daemon is gone (the other end closes, even on SIGKILL), checks as
 * the mount's owner that the mountpoint is dead and runs
 * `fusermount3 -u -z` on it.  After a clean unmount it finds nothing to do.
 */
int cfsd_start_unmount_watchdog(const char *mnt)
{
	_cleanup_free_ char *fusermount = find_in_path("fusermount3");
	_cleanup_free_ char *abs = realpath(mnt, NULL);
	int pfd[2];
	pid_t pid;

	if (!fusermount || !abs)
		return -ENOENT;
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		int r = -errno;
		close(pfd[0]);
		close(pfd[1]);
		return r;
	}
	if (pid == 0) {
		/* Only async-signal-safe calls from here: the parent has threads. */
		char *argv[] = { "fusermount3", "-u", "-z", "-q", "--", abs, NULL };
		char c;
		int fd = open("/dev/null", O_RDWR);

		/* Signals meant for the daemon reach the whole unit or process
		 * group (systemctl kill -s USR1, a terminal's Ctrl-C): the
		 * watchdog must outlive them, to clean up if the daemon dies. */
		static const int ignored[] = { SIGUSR1, SIGUSR2, SIGHUP, SIGINT, SIGTERM, SIGQUIT, SIGPIPE };
		for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++)
			signal(ignored[i], SIG_IGN);
		setsid();
		if (fd >= 0) {
			dup2(fd, 0);
			dup2(fd, 1);
			dup2(fd, 2);
		}
		/* Keep no copy of /dev/fuse: it would keep a dead mount alive. */
		close_range(3, (unsigned)pfd[0] - 1, 0);
		close_range((unsigned)pfd[0] + 1, ~0U, 0);
		while (read(pfd[0], &c, 1) < 0 && errno == EINTR)
			;
		/* A dead connection answers ENOTCONN, or ECONNABORTED to a
		 * request that was waiting for it (an INIT never answered). */
		fd = open(abs, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd >= 0 || (errno != ENOTCONN && errno != ECONNABORTED))
			_exit(0);
		execv(fusermount, argv);
		_exit(127);
	}
	close(pfd[0]);
	/* pfd[1] stays open (close-on-exec) for as long as this process lives. */
	return 0;
}

/*
 * As root, keep after mounting only the capabilities still needed: reading
 * objects and the tree cache whatever their modes (CAP_DAC_OVERRIDE,
 * CAP_DAC_READ_SEARCH), registering passthrough backing files and unmounting
 * at exit (CAP_SYS_ADMIN).  Everything else leaves the bounding, permitted
 * and effective sets, and no exec can gain privileges again, which limits
 * what a daemon subverted by a hostile image could do.
 */
int cfsd_drop_privileges(void)
{
	uint64_t keep = (1ULL << CAP_SYS_ADMIN) | (1ULL << CAP_DAC_OVERRIDE) |
			(1ULL << CAP_DAC_READ_SEARCH);
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[2] = { 0 };

	for (int cap = 0; cap < 64; cap++) {
		if (keep & (1ULL << cap))
			continue;
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
			if (errno == EINVAL)
				break; /* past the last capability this kernel knows */
			return -errno;
		}
	}
	data[0].effective = data[0].permitted = (uint32_t)keep;
	data[1].effective = data[1].permitted = (uint32_t)(keep >> 32);
	if (syscall(SYS_capset, &hdr, data) < 0)
		return -errno;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return -errno;
	return 0;
}

/*
 * Raise the soft RLIMIT_NOFILE to the hard limit (the soft one is often
 * 1024, or lower in containers) and return how many idle objects the store
 * may keep open: most of the limit, less a reserve for /dev/fuse, io_uring
 * rings (one per thread), the image, basedirs, tree files being read and
 * the stats file; at most 4096 (about 1 KiB of memory each, and a tree
 * of a small object is rebuilt from the one read a cache miss costs
 * anyway).  The store closes idle objects, least recently used first, and
 * retries once when an open still meets EMFILE.
 */
size_t cfsd_setup_fd_limit(unsigned max_threads)
{
	const size_t reserve = 32 + 2 * (size_t)(max_threads ? max_threads : 10);
	struct rlimit rl;
	size_t cur;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 256;
	if (rl.rlim_cur < rl.rlim_max) {
		rlim_t old = rl.rlim_cur;

		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			rl.rlim_cur = old;
	}
	cur = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1U << 20) ? (1U << 20) : (size_t)rl.rlim_cur;
	cur = cur > 2 * reserve ? cur - reserve : cur / 2;
	return cur < 8 ? 8 : cur > 4096 ? 4096 : cur;
}


/* Undo the octal escapes of /proc/self/mountinfo (\040 for a space...). */
static void unescape_octal(char *s)
{
	char *w = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*w++ = (char)((s[1] - '0') << 6 | (s[2] - '0') << 3 | (s[3] - '0'));
			s += 3;
		} else {
			*w++ = *s;
		}
	}
	*w = '\0';
}

/* Is the topmost mount on @abs (an absolute path) one of ours? */
static bool is_our_mount(const char *abs)
{
	_cleanup_fclose_ FILE *f = fopen("/proc/self/mountinfo", "re");
	_cleanup_free_ char *line = NULL;
	size_t cap = 0;
	bool ours = false;

	if (!f)
		return false;
	while (getline(&line, &cap, f) > 0) {
		char *save = NULL, *mp = NULL, *sep = strstr(line, " - "), *tok;
		int i = 0;

		if (!sep)
			continue;
		for (tok = strtok_r(line, " ", &save); tok && i < 4; tok = strtok_r(NULL, " ", &save))
			i++;
		mp = tok;
		if (!mp || mp > sep)
			continue;
		unescape_octal(mp);
		if (strcmp(mp, abs) != 0)
			continue;
		/* The last mount on the path wins: the one a lookup meets. */
		ours = strncmp(sep + 3, "fuse.composefs-fuse ", 20) == 0;
	}
	return ours;
}

/*
 * A daemon killed without unmounting (SIGKILL, a crash) leaves a dead mount
 * that answers ENOTCONN; a restart (Restart=on-failure) would stack a second
 * mount on it.  A dead mount of ours is detached and replaced, with a
 * warning; anything else on the mountpoint is left alone.
 */
static int replace_dead_mount(const char *mnt)
{
	_cleanup_free_ char *abs = NULL, *fusermount = NULL;
	char cwd[PATH_MAX];
	int status;
	pid_t pid;

	if (mnt[0] == '/')
		abs = strdup(mnt);
	else if (getcwd(cwd, sizeof(cwd)))
		(void)asprintf(&abs, "%s/%s", cwd, mnt);
	if (!abs)
		return -ENOMEM;
	for (size_t n = strlen(abs); n > 1 && abs[n - 1] == '/'; n--)
		abs[n - 1] = '\0';
	if (!is_our_mount(abs))
		return -ENOTCONN;
	cfsd_log(FUSE_LOG_WARNING, "mountpoint '%s': a dead composefs-fuse mount (its daemon died); "
		 "replacing it\n", mnt);
	if (geteuid() == 0)
		return umount2(abs, MNT_DETACH) < 0 ? -errno : 0;
	/* An ordinary user's own mount: fusermount3 may unmount it. */
	fusermount = find_in_path("fusermount3");
	if (!fusermount)
		return -ENOENT;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		char *argv[] = { "fusermount3", "-u", "-z", "-q", "--", abs, NULL };
		execv(fusermount, argv);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EBUSY;
}

int cfsd_check_mountpoint(const char *mnt)
{
	struct statfs sfs;
	struct stat st;
	int r;

	if (strncmp(mnt, "/dev/fd/", 8) == 0)
		return 0; /* a /dev/fuse descriptor from a parent that mounts */
	/* statfs() always asks the filesystem (a stat() of a dead FUSE
	 * mount's root may be answered from the attribute cache). */
	if (statfs(mnt, &sfs) < 0 || stat(mnt, &st) < 0) {
		r = -errno;
		if (r == -ENOTCONN) {
			r = replace_dead_mount(mnt);
			if (r < 0) {
				cfsd_log(FUSE_LOG_ERR, "mountpoint '%s': a dead FUSE mount %s\n", mnt,
					 r == -ENOTCONN ? "not made by composefs-fuse (umount -l it first)" :
							  "that could not be unmounted");
				return r;
			}
			r = stat(mnt, &st) < 0 ? -errno : 0;
		}
		if (r < 0) {
			cfsd_log(FUSE_LOG_ERR, "mountpoint '%s': %s\n", mnt, strerror(-r));
			return r;
		}
	}
	if (!S_ISDIR(st.st_mode)) {
		cfsd_log(FUSE_LOG_ERR, "mountpoint '%s': not a directory\n", mnt);
		return -ENOTDIR;
	}
	return 0;
}
