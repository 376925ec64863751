/*
 * proc.c: child processes with non-blocking pipes (see proc.h).
 *
 * Owns: the child's pid and process group, the parent's pipe ends and
 * pidfd (all close-on-exec), the stdin queue, the untaken stdout bytes and
 * the kept stderr tail. The child is started with posix_spawnp, which
 * reports an exec failure as its result (glibc: CLONE_VFORK), so "command
 * not found" is an error here, not a dead child later.
 * Never: includes lua.h or curl.h, installs a signal handler or changes a
 * signal's disposition (SIGPIPE is blocked around our own writes only, and
 * a SIGPIPE we caused is consumed), waits for any pid but ours, or blocks
 * except inside proc_close (bounded by its grace times, then SIGKILL).
 */
#define _GNU_SOURCE /* pipe2, posix_spawn_file_actions_add{chdir,closefrom}_np, syscall */

#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* glibc 2.29 has addchdir_np, 2.34 addclosefrom_np; elsewhere: no cwd, and CLOEXEC alone. */
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 29))
#define PROC_HAVE_ADDCHDIR 1
#else
#define PROC_HAVE_ADDCHDIR 0
#endif
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
#define PROC_HAVE_CLOSEFROM 1
#else
#define PROC_HAVE_CLOSEFROM 0
#endif

#define READ_CHUNK ((size_t)64 << 10)
#define READS_PER_WAKE 16 /* bound the work of one wake-up on a chatty child */

struct proc {
	pid_t pid;
	int in_fd, out_fd, err_fd, pid_fd;     /* -1 once closed */
	int in_ev, out_ev, err_ev, pid_ev;     /* interest the owner was told about */
	enum proc_state state;
	int value;                             /* exit code or signal */
	struct buf in;                         /* queued for stdin; bytes before in_off are written */
	size_t in_off, max_in;
	struct buf out;                        /* read from stdout, not yet taken */
	struct buf err;                        /* the last err_keep bytes of stderr */
	size_t err_keep;
	int err_cut;                           /* err lost its beginning */
	int out_eof, in_close_pending, ready, closed;
	char error[160];                       /* first failure, "" if none */
	char name[96];                         /* argv[0], for messages */
	proc_watch_fn watch;
	void *watch_ud;
};

/*
 * The live children of this process (every engine's), for proc_kill_all: a
 * host's last resort when it must exit at once (a second SIGTERM). Slots are
 * lock-free atomics, so a signal handler can read them while the main flow
 * or another thread edits them. A pid is entered at spawn and removed when
 * it is reaped, before the pid can be used again. Past PROC_LIVE_MAX live
 * children the rest are not entered (the polite close still reaches them).
 */
#define PROC_LIVE_MAX 4096
static atomic_int proc_live[PROC_LIVE_MAX];

static void live_add(pid_t pid)
{
	size_t i;
	for (i = 0; i < PROC_LIVE_MAX; i++) {
		int zero = 0;
		if (atomic_load_explicit(&proc_live[i], memory_order_relaxed) == 0 &&
		    atomic_compare_exchange_strong(&proc_live[i], &zero, (int)pid))
			return;
	}
}

static void live_remove(pid_t pid)
{
	size_t i;
	for (i = 0; i < PROC_LIVE_MAX; i++) {
		int want = (int)pid;
		if (atomic_load_explicit(&proc_live[i], memory_order_relaxed) == want &&
		    atomic_compare_exchange_strong(&proc_live[i], &want, 0))
			return;
	}
}

void proc_kill_all(int sig)
{
	size_t i;
	for (i = 0; i < PROC_LIVE_MAX; i++) {
		int pid = atomic_load(&proc_live[i]);
		/* The group only: a child that left it (setsid) still leads a group
		 * of its pid, and a bare kill(pid) could hit a stranger if that pid
		 * was reaped behind our back and reused. */
		if (pid > 0)
			kill(-pid, sig);
	}
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* Tell the owner our interest in *fd changed (nothing if it did not). */
static void set_interest(struct proc *p, int fd, int *ev, int events)
{
	if (fd < 0 || *ev == events)
		return;
	if (p->watch && p->watch(p->watch_ud, fd, events) != 0 && events != 0) {
		if (p->error[0] == '\0')
			snprintf(p->error, sizeof p->error, "cannot watch a pipe of '%s': %s", p->name,
			         strerror(errno));
		p->ready = 1;
		return;
	}
	*ev = events;
}

/* Forget and close one of our descriptors. */
static void close_fd(struct proc *p, int *fd, int *ev)
{
	if (*fd < 0)
		return;
	set_interest(p, *fd, ev, 0);
	*ev = 0;
	close(*fd);
	*fd = -1;
}

static void update_out_interest(struct proc *p)
{
	set_interest(p, p->out_fd, &p->out_ev, p->out.len < PROC_OUT_HIGH_WATER ? PROC_WATCH_READ : 0);
}

/* Reap the child if it has exited (options 0: wait for it). 1 once reaped. */
static int reap(struct proc *p, int options)
{
	int st = 0;
	pid_t r;
	if (p->state != PROC_RUNNING)
		return 1;
	do
		r = waitpid(p->pid, &st, options);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return 0;
	live_remove(p->pid); /* reaped (or gone): its pid may be anyone's from now on */
	if (r < 0) {
		/* ECHILD: reaped by someone else (SIGCHLD ignored, or an application's own handler). */
		p->state = PROC_EXITED;
		p->value = -1;
	} else if (WIFEXITED(st)) {
		p->state = PROC_EXITED;
		p->value = WEXITSTATUS(st);
	} else if (WIFSIGNALED(st)) {
		p->state = PROC_SIGNALED;
		p->value = WTERMSIG(st);
	} else {
		return 0; /* stopped or continued: not reported without WUNTRACED, but be safe */
	}
	p->ready = 1;
	close_fd(p, &p->pid_fd, &p->pid_ev);
	return 1;
}

/*
 * write(2) without a process-wide SIGPIPE: the signal is blocked in this
 * thread for the call and, if our write raised it, consumed before the mask
 * is restored. A SIGPIPE that was already pending stays pending.
 */
static ssize_t write_nosigpipe(int fd, const void *data, size_t n)
{
	sigset_t pipe_set, old, pending;
	int was_pending, saved;
	ssize_t w;
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	sigpending(&pending);
	was_pending = sigismember(&pending, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
	w = write(fd, data, n);
	saved = errno;
	if (w < 0 && saved == EPIPE && !was_pending) {
		struct timespec zero = { 0, 0 };
		while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
			;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	errno = saved;
	return w;
}

/* Write what the pipe takes; watch for writability only while something is left. */
static void flush_in(struct proc *p)
{
	while (p->in_fd >= 0 && p->in_off < p->in.len) {
		ssize_t w = write_nosigpipe(p->in_fd, p->in.data + p->in_off, p->in.len - p->in_off);
		if (w > 0) {
			p->in_off += (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (p->error[0] == '\0')
			snprintf(p->error, sizeof p->error, "cannot write to '%s': %s", p->name,
			         w < 0 ? strerror(errno) : "no progress");
		p->ready = 1;
		buf_free(&p->in);
		p->in_off = 0;
		close_fd(p, &p->in_fd, &p->in_ev);
		return;
	}
	if (p->in_fd < 0)
		return;
	if (p->in_off >= p->in.len) {
		if (p->in.cap > READ_CHUNK)
			buf_free(&p->in); /* do not keep a big queue's storage */
		else
			buf_reset(&p->in);
		p->in_off = 0;
		if (p->in_close_pending)
			close_fd(p, &p->in_fd, &p->in_ev);
		else
			set_interest(p, p->in_fd, &p->in_ev, 0);
		return;
	}
	if (p->in_off >= READ_CHUNK && p->in_off >= p->in.len / 2) { /* compact: keep the queue bounded */
		memmove(p->in.data, p->in.data + p->in_off, p->in.len - p->in_off);
		p->in.len -= p->in_off;
		p->in_off = 0;
	}
	set_interest(p, p->in_fd, &p->in_ev, PROC_WATCH_WRITE);
}

/* Keep the last err_keep bytes of stderr. */
static void err_add(struct proc *p, const char *d, size_t n)
{
	size_t keep = p->err_keep;
	if (n >= keep) {
		d += n - keep;
		n = keep;
		if (p->err.len)
			p->err_cut = 1;
		p->err.len = 0;
	} else if (p->err.len + n > keep) {
		size_t drop = p->err.len + n - keep;
		memmove(p->err.data, p->err.data + drop, p->err.len - drop);
		p->err.len -= drop;
		p->err_cut = 1;
	}
	if (buf_append(&p->err, d, n) != BUF_OK)
		p->err_cut = 1; /* out of memory: the tail just stays shorter */
}

static void read_err(struct proc *p)
{
	char scratch[4096];
	int i;
	for (i = 0; p->err_fd >= 0 && i < READS_PER_WAKE; i++) {
		ssize_t r = read(p->err_fd, scratch, sizeof scratch);
		if (r > 0) {
			err_add(p, scratch, (size_t)r);
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		close_fd(p, &p->err_fd, &p->err_ev); /* EOF or error */
	}
}

/* Read stdout into p->out up to the high-water mark (or drop it: closing). */
static void read_out(struct proc *p, int discard)
{
	int i;
	for (i = 0; p->out_fd >= 0 && i < READS_PER_WAKE; i++) {
		char scratch[4096];
		char *dst = scratch;
		size_t room = sizeof scratch;
		ssize_t r;
		if (!discard) {
			if (p->out.len >= PROC_OUT_HIGH_WATER)
				break;
			if (buf_reserve(&p->out, READ_CHUNK) != BUF_OK) {
				if (p->error[0] == '\0')
					snprintf(p->error, sizeof p->error,
					         "out of memory reading the output of '%s'", p->name);
				p->ready = 1;
				break;
			}
			dst = p->out.data + p->out.len;
			room = p->out.cap - p->out.len - 1;
		}
		r = read(p->out_fd, dst, room);
		if (r > 0) {
			if (!discard) {
				p->out.len += (size_t)r;
				p->out.data[p->out.len] = '\0';
				p->ready = 1;
			}
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		/* EOF (or a read error, which ends the stream all the same) */
		close_fd(p, &p->out_fd, &p->out_ev);
		p->out_eof = 1;
		p->ready = 1;
		reap(p, WNOHANG); /* usually exited; if not yet, the pidfd or proc_check sees it */
	}
	if (!discard)
		update_out_interest(p);
}

void proc_on_ready(struct proc *p, int fd, int events)
{
	if (p == NULL || p->closed || fd < 0)
		return;
	if (fd == p->in_fd && events)
		flush_in(p);
	else if (fd == p->out_fd)
		read_out(p, 0);
	else if (fd == p->err_fd)
		read_err(p);
	else if (fd == p->pid_fd)
		reap(p, WNOHANG);
}

void proc_check(struct proc *p)
{
	if (p == NULL || p->closed)
		return;
	if (p->watch == NULL) { /* nobody watches: do the I/O here */
		flush_in(p);
		read_out(p, 0);
		read_err(p);
	}
	if (p->pid_fd < 0 || p->watch == NULL) /* nobody waits on the pidfd */
		reap(p, WNOHANG);
}

int proc_take_ready(struct proc *p)
{
	int r = p->ready;
	p->ready = 0;
	return r;
}

/* A pipe with both ends close-on-exec, the child's end at 3 or above (never one of 0-2). */
static int make_pipe(int fds[2], int child_end)
{
	if (pipe2(fds, O_CLOEXEC) != 0)
		return -1;
	if (fds[child_end] < 3) {
		int moved = fcntl(fds[child_end], F_DUPFD_CLOEXEC, 3);
		if (moved < 0)
			return -1;
		close(fds[child_end]);
		fds[child_end] = moved;
	}
	/* Only our end is non-blocking: the child's stdio stays ordinary. */
	return fcntl(fds[!child_end], F_SETFL, O_NONBLOCK | fcntl(fds[!child_end], F_GETFL));
}

static void close_pair(int fds[2])
{
	if (fds[0] >= 0)
		close(fds[0]);
	if (fds[1] >= 0)
		close(fds[1]);
	fds[0] = fds[1] = -1;
}

static size_t key_len(const char *kv)
{
	const char *eq = strchr(kv, '=');
	return eq ? (size_t)(eq - kv) : strlen(kv);
}

/* Our environment with the additions applied ("K=V" sets, "K" unsets), or with
 * only: the additions alone; NULL on no memory. */
static char **build_env(const char *const *add, int only)
{
	size_t ne = 0, na = 0, i, j, k = 0;
	char **envp;
	while (!only && environ && environ[ne])
		ne++;
	while (add && add[na])
		na++;
	envp = malloc((ne + na + 1) * sizeof *envp);
	if (envp == NULL)
		return NULL;
	for (i = 0; i < ne; i++) {
		size_t kl = key_len(environ[i]);
		int replaced = 0;
		for (j = 0; j < na && !replaced; j++)
			replaced = key_len(add[j]) == kl && strncmp(add[j], environ[i], kl) == 0;
		if (!replaced)
			envp[k++] = environ[i];
	}
	for (j = 0; j < na; j++) {
		size_t l;
		if (strchr(add[j], '=') == NULL)
			continue; /* an unset */
		for (l = j + 1; l < na; l++) /* the last of duplicates wins */
			if (key_len(add[l]) == key_len(add[j]) &&
			    strncmp(add[l], add[j], key_len(add[j])) == 0)
				break;
		if (l == na)
			envp[k++] = (char *)add[j];
	}
	envp[k] = NULL;
	return envp;
}

struct proc *proc_spawn(const struct proc_opts *o, char *err, size_t errlen)
{
	int in[2] = { -1, -1 }, out[2] = { -1, -1 }, errp[2] = { -1, -1 };
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, all;
	char **envp = NULL;
	struct proc *p;
	pid_t pid;
	int rc = 0, fa_ok = 0, attr_ok = 0;
	const char *what = "cannot start";

	if (o == NULL || o->argv == NULL || o->argv[0] == NULL || o->argv[0][0] == '\0') {
		snprintf(err, errlen, "cannot start a process: empty command");
		return NULL;
	}
	p = calloc(1, sizeof *p);
	if (p == NULL) {
		snprintf(err, errlen, "cannot start '%s': out of memory", o->argv[0]);
		return NULL;
	}
	snprintf(p->name, sizeof p->name, "%s", o->argv[0]);
	p->in_fd = p->out_fd = p->err_fd = p->pid_fd = -1;
	p->max_in = o->max_in ? o->max_in : PROC_DEFAULT_MAX_IN;
	p->err_keep = o->err_keep ? o->err_keep : PROC_DEFAULT_ERR_KEEP;
	buf_init(&p->in, 0);
	buf_init(&p->out, PROC_OUT_HIGH_WATER + 2 * READ_CHUNK);
	buf_init(&p->err, p->err_keep);
	p->watch = o->watch;
	p->watch_ud = o->watch_ud;

	if (o->cwd) {
		struct stat st;
		int e = stat(o->cwd, &st) != 0 ? errno : !S_ISDIR(st.st_mode) ? ENOTDIR : 0;
		if (e != 0) {
			snprintf(err, errlen, "cannot start '%s' in '%s': %s", p->name, o->cwd, strerror(e));
			goto fail;
		}
	}
	if (make_pipe(in, 0) != 0 || make_pipe(out, 1) != 0 || make_pipe(errp, 1) != 0) {
		rc = errno;
		goto fail_rc;
	}
	envp = build_env(o->env, o->env_only);
	if (envp == NULL) {
		rc = ENOMEM;
		goto fail_rc;
	}
	if ((rc = posix_spawn_file_actions_init(&fa)) != 0)
		goto fail_rc;
	fa_ok = 1;
	if ((rc = posix_spawnattr_init(&attr)) != 0)
		goto fail_rc;
	attr_ok = 1;
	if ((rc = posix_spawn_file_actions_adddup2(&fa, in[0], 0)) != 0 ||
	    (rc = posix_spawn_file_actions_adddup2(&fa, out[1], 1)) != 0 ||
	    (rc = posix_spawn_file_actions_adddup2(&fa, errp[1], 2)) != 0)
		goto fail_rc;
#if PROC_HAVE_ADDCHDIR
	if (o->cwd && (rc = posix_spawn_file_actions_addchdir_np(&fa, o->cwd)) != 0)
		goto fail_rc;
#else
	if (o->cwd) {
		rc = ENOSYS; /* no posix_spawn_file_actions_addchdir_np in this C library */
		goto fail_rc;
	}
#endif
#if PROC_HAVE_CLOSEFROM
	/* Nothing else reaches the child, even descriptors others opened without CLOEXEC. */
	if ((rc = posix_spawn_file_actions_addclosefrom_np(&fa, 3)) != 0)
		goto fail_rc;
#endif
	sigemptyset(&none);
	sigfillset(&all);
	sigdelset(&all, SIGKILL);
	sigdelset(&all, SIGSTOP);
	/* Own process group (the terminal's Ctrl-C is ours to handle, close kills the group),
	 * default dispositions (the host ignores SIGPIPE), nothing blocked. */
	if ((rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
	                                               POSIX_SPAWN_SETSIGDEF)) != 0 ||
	    (rc = posix_spawnattr_setpgroup(&attr, 0)) != 0 ||
	    (rc = posix_spawnattr_setsigmask(&attr, &none)) != 0 ||
	    (rc = posix_spawnattr_setsigdefault(&attr, &all)) != 0)
		goto fail_rc;
	rc = posix_spawnp(&pid, o->argv[0], &fa, &attr, (char *const *)o->argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	fa_ok = attr_ok = 0;
	free(envp);
	envp = NULL;
	if (rc != 0) {
		if (o->cwd)
			snprintf(err, errlen, "cannot start '%s' in '%s': %s", p->name, o->cwd, strerror(rc));
		else
			snprintf(err, errlen, "cannot start '%s': %s", p->name, strerror(rc));
		goto fail;
	}
	p->pid = pid;
	live_add(pid);
	close(in[0]);
	close(out[1]);
	close(errp[1]);
	p->in_fd = in[1];
	p->out_fd = out[0];
	p->err_fd = errp[0];
	in[0] = in[1] = out[0] = out[1] = errp[0] = errp[1] = -1;
#ifdef SYS_pidfd_open
	/* Readable once the child exits (Linux 5.3+; close-on-exec by default). */
	p->pid_fd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (p->pid_fd < 0)
		p->pid_fd = -1;
#endif
	set_interest(p, p->out_fd, &p->out_ev, PROC_WATCH_READ);
	set_interest(p, p->err_fd, &p->err_ev, PROC_WATCH_READ);
	set_interest(p, p->pid_fd, &p->pid_ev, PROC_WATCH_READ);
	if (p->error[0] != '\0') { /* the loop cannot watch us: stop it again */
		snprintf(err, errlen, "%s", p->error);
		proc_close(p, 0);
		proc_free(p);
		return NULL;
	}
	p->ready = 0;
	return p;

fail_rc:
	snprintf(err, errlen, "%s '%s': %s", what, p->name, strerror(rc));
fail:
	if (fa_ok)
		posix_spawn_file_actions_destroy(&fa);
	if (attr_ok)
		posix_spawnattr_destroy(&attr);
	free(envp);
	close_pair(in);
	close_pair(out);
	close_pair(errp);
	buf_free(&p->in);
	buf_free(&p->out);
	buf_free(&p->err);
	free(p);
	return NULL;
}

int proc_write(struct proc *p, const void *data, size_t n, char *err, size_t errlen)
{
	if (p->closed || p->in_fd < 0 || p->in_close_pending) {
		snprintf(err, errlen, "cannot write to '%s': %s", p->name,
		         p->error[0] ? p->error : "its input is closed");
		return -1;
	}
	if (n > p->max_in || p->in.len - p->in_off > p->max_in - n) {
		snprintf(err, errlen, "cannot write to '%s': more than %zu bytes would wait for it to read",
		         p->name, p->max_in);
		return -1;
	}
	if (n == 0)
		return 0;
	if (buf_append(&p->in, data, n) != BUF_OK) {
		snprintf(err, errlen, "cannot write to '%s': out of memory", p->name);
		return -1;
	}
	flush_in(p);
	if (p->in_fd < 0) { /* the write failed at once (e.g. the child is gone) */
		snprintf(err, errlen, "%s", p->error);
		return -1;
	}
	return 0;
}

size_t proc_pending_in(const struct proc *p)
{
	return p->in.len - p->in_off;
}

void proc_close_stdin(struct proc *p)
{
	if (p->closed || p->in_fd < 0)
		return;
	p->in_close_pending = 1;
	if (p->in_off >= p->in.len)
		close_fd(p, &p->in_fd, &p->in_ev);
}

const char *proc_out(const struct proc *p, size_t *len)
{
	*len = p->out.len;
	return p->out.data ? p->out.data : "";
}

void proc_out_consume(struct proc *p, size_t n)
{
	if (n >= p->out.len) {
		if (p->out.cap > 2 * READ_CHUNK)
			buf_free(&p->out); /* a burst's storage is not kept */
		else
			buf_reset(&p->out);
	} else {
		memmove(p->out.data, p->out.data + n, p->out.len - n);
		p->out.len -= n;
		p->out.data[p->out.len] = '\0';
	}
	if (!p->closed)
		update_out_interest(p);
}

int proc_out_eof(const struct proc *p)
{
	return p->out_eof;
}

const char *proc_err_tail(const struct proc *p, int max_lines, size_t *len)
{
	const char *s = p->err.data ? p->err.data : "";
	size_t n = p->err.len, start;
	int lines = 0;
	if (max_lines <= 0)
		max_lines = PROC_DEFAULT_ERR_LINES;
	while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
		n--;
	start = n;
	while (start > 0) {
		if (s[start - 1] == '\n' && ++lines >= max_lines)
			break;
		start--;
	}
	if (start == 0 && p->err_cut) { /* the first line lost its beginning: drop it */
		const char *nl = memchr(s, '\n', n);
		start = nl ? (size_t)(nl - s) + 1 : 0;
	}
	*len = n - start;
	return s + start;
}

pid_t proc_pid(const struct proc *p)
{
	return p->pid;
}

enum proc_state proc_status(const struct proc *p, int *value)
{
	if (value)
		*value = p->value;
	return p->state;
}

int proc_finished(const struct proc *p)
{
	return p->state != PROC_RUNNING && p->out_eof;
}

const char *proc_error(const struct proc *p)
{
	return p->error;
}

int proc_kill(struct proc *p, int sig)
{
	int r;
	if (p->pid <= 0) {
		errno = ESRCH;
		return -1;
	}
	r = kill(-p->pid, sig);
	/* No such group (the child moved itself to another one): the child at least. */
	if (r != 0 && errno == ESRCH && p->state == PROC_RUNNING)
		r = kill(p->pid, sig);
	return r;
}

/* Nothing of the child is left for us: reaped, and nobody holds its output pipes. */
static int gone(const struct proc *p)
{
	return p->state != PROC_RUNNING && p->out_fd < 0 && p->err_fd < 0;
}

/* Read (stdout dropped) and reap until every child is gone or ms pass. */
static void wait_gone(struct proc **ps, size_t n, long ms)
{
	double deadline = now_ms() + (double)(ms > 0 ? ms : 0);
	struct pollfd *fds = malloc((3 * n + 1) * sizeof *fds);
	for (;;) {
		size_t i, k = 0;
		double left;
		int all = 1;
		for (i = 0; i < n; i++) {
			struct proc *p = ps[i];
			if (p == NULL || p->closed || gone(p))
				continue;
			read_out(p, 1);
			read_err(p);
			reap(p, WNOHANG);
			if (gone(p))
				continue;
			all = 0;
			if (fds) {
				if (p->out_fd >= 0)
					fds[k++] = (struct pollfd){ p->out_fd, POLLIN, 0 };
				if (p->err_fd >= 0)
					fds[k++] = (struct pollfd){ p->err_fd, POLLIN, 0 };
				if (p->pid_fd >= 0)
					fds[k++] = (struct pollfd){ p->pid_fd, POLLIN, 0 };
			}
		}
		left = deadline - now_ms();
		if (all || left <= 0)
			break;
		/* Slices of 10 ms: without a pidfd an exit shows only through waitpid. */
		if (fds)
			poll(fds, (nfds_t)k, left < 10 ? (int)left + 1 : 10);
		else
			poll(NULL, 0, left < 10 ? (int)left + 1 : 10);
	}
	free(fds);
}

void proc_close_many(struct proc **ps, size_t n, long grace_ms)
{
	size_t i;
	for (i = 0; i < n; i++) {
		struct proc *p = ps[i];
		if (p == NULL || p->closed)
			continue;
		flush_in(p); /* what the pipe takes now; the rest is dropped */
		buf_free(&p->in);
		p->in_off = 0;
		close_fd(p, &p->in_fd, &p->in_ev);
		/* Our interest in the rest ends; the descriptors close below. */
		set_interest(p, p->out_fd, &p->out_ev, 0);
		set_interest(p, p->err_fd, &p->err_ev, 0);
		set_interest(p, p->pid_fd, &p->pid_ev, 0);
	}
	wait_gone(ps, n, grace_ms);
	for (i = 0; i < n; i++)
		if (ps[i] && !ps[i]->closed && !gone(ps[i]))
			proc_kill(ps[i], SIGTERM);
	wait_gone(ps, n, grace_ms);
	for (i = 0; i < n; i++) {
		struct proc *p = ps[i];
		if (p == NULL || p->closed)
			continue;
		if (!gone(p))
			proc_kill(p, SIGKILL); /* the group: grandchildren holding our pipes too */
		reap(p, 0);
		close_fd(p, &p->out_fd, &p->out_ev);
		close_fd(p, &p->err_fd, &p->err_ev);
		close_fd(p, &p->pid_fd, &p->pid_ev);
		p->out_eof = 1;
		buf_free(&p->out);
		p->closed = 1;
	}
}

void proc_close(struct proc *p, long grace_ms)
{
	proc_close_many(&p, 1, grace_ms);
}

int proc_closed(const struct proc *p)
{
	return p->closed;
}

void proc_free(struct proc *p)
{
	if (p == NULL)
		return;
	if (!p->closed)
		proc_close(p, 0);
	buf_free(&p->in);
	buf_free(&p->out);
	buf_free(&p->err);
	free(p);
}
