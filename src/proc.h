/*
 * proc.h: child processes with non-blocking pipes, for an event loop.
 *
 * Owns: one child (started from an argv, never through a shell, in its own
 * process group), the parent's ends of its stdin/stdout/stderr pipes, a
 * pidfd when the kernel has one, the queue of bytes still to write to its
 * stdin, the stdout bytes read but not yet taken, the last bytes of its
 * stderr, and its exit status once reaped.
 * Never: includes lua.h or curl.h, installs a signal handler (no SIGCHLD
 * handler: exits are seen on a pidfd, on stdout's EOF and by polling
 * waitpid(WNOHANG) for this one pid), blocks without a bound, or leaves a
 * zombie or a descriptor behind once proc_close has run.
 *
 * The owner runs the loop: the `watch` hook tells it which descriptors to
 * wait on (and when that changes); it calls proc_on_ready when one is ready.
 */
#ifndef LCHAT_PROC_H
#define LCHAT_PROC_H

#include <stddef.h>
#include <sys/types.h>

#include "buf.h"

#define PROC_DEFAULT_MAX_IN ((size_t)64 << 20)  /* stdin bytes queued and not yet written */
#define PROC_OUT_HIGH_WATER ((size_t)1 << 20)   /* stdout is not read while this much waits untaken */
#define PROC_DEFAULT_ERR_KEEP ((size_t)8 << 10) /* the last stderr bytes kept */
#define PROC_DEFAULT_ERR_LINES 20               /* lines proc_err_tail gives by default */

/* Interest bits for the watch hook; the same values as HTTP_WATCH_READ/WRITE. */
enum { PROC_WATCH_READ = 1, PROC_WATCH_WRITE = 2 };

enum proc_state {
	PROC_RUNNING = 0,   /* not reaped yet */
	PROC_EXITED = 1,    /* exited: proc_status gives the code (-1: reaped by someone else) */
	PROC_SIGNALED = 2   /* killed: proc_status gives the signal */
};

/*
 * Ask the owner's loop to wait for `events` (PROC_WATCH_*) on fd, to change
 * them (same fd), or (events 0) to forget fd; called before any of our
 * descriptors is closed. 0, or -1 with errno.
 */
typedef int (*proc_watch_fn)(void *ud, int fd, int events);

struct proc_opts {
	const char *const *argv;  /* NULL-terminated; argv[0] is looked up in PATH */
	const char *const *env;   /* NULL-terminated "K=V" (set) or "K" (unset) over our environment; may be NULL */
	int env_only;             /* nonzero: env ("K=V" items) is the whole environment, nothing of ours */
	const char *cwd;          /* working directory of the child, NULL = ours */
	size_t max_in;            /* 0 = PROC_DEFAULT_MAX_IN */
	size_t err_keep;          /* 0 = PROC_DEFAULT_ERR_KEEP */
	proc_watch_fn watch;      /* may be NULL (then the owner calls proc_on_ready on its own schedule) */
	void *watch_ud;
};

struct proc;

/*
 * Start a child. Every descriptor we make is close-on-exec, and the child
 * gets only its three pipes (others are closed in it), default signal
 * dispositions and an empty signal mask. A command that cannot be run
 * (not found, not executable, bad cwd) fails here: NULL with a message
 * naming the command and the errno text in err.
 */
struct proc *proc_spawn(const struct proc_opts *o, char *err, size_t errlen);

/* The owner's loop found fd ready (PROC_WATCH_* bits; hang-up and errors come as READ). */
void proc_on_ready(struct proc *p, int fd, int events);
/*
 * Look at the child without being asked: reap it if it has exited (when no
 * pidfd is watched), and without a watch hook also write and read what the
 * pipes take. Cheap; never blocks.
 */
void proc_check(struct proc *p);
/* Whether something the owner may want happened since the last call (output, EOF, exit, a write failure); clears it. */
int proc_take_ready(struct proc *p);

/*
 * Queue n bytes for the child's stdin and write what the pipe takes now.
 * 0, or -1 with a message in err (stdin closed or broken, or more than
 * max_in bytes would be queued; nothing is queued then).
 */
int proc_write(struct proc *p, const void *data, size_t n, char *err, size_t errlen);
/* Bytes queued for stdin and not yet written. */
size_t proc_pending_in(const struct proc *p);
/* Close the child's stdin once the queue is written (at once if it is empty). */
void proc_close_stdin(struct proc *p);

/* stdout bytes read and not yet taken (valid until the next proc_* call). */
const char *proc_out(const struct proc *p, size_t *len);
/* Take the first n of them (resumes reading below the high-water mark). */
void proc_out_consume(struct proc *p, size_t n);
/* Whether stdout reached end of file (there may still be untaken bytes). */
int proc_out_eof(const struct proc *p);
/*
 * The last max_lines lines kept from stderr (0 = PROC_DEFAULT_ERR_LINES),
 * without the final newline; points into p, valid until the next proc_* call.
 */
const char *proc_err_tail(const struct proc *p, int max_lines, size_t *len);

pid_t proc_pid(const struct proc *p);
/* PROC_RUNNING until reaped; then *value is the exit code or the signal. */
enum proc_state proc_status(const struct proc *p, int *value);
/* Reaped and stdout at end of file: nothing more will come. */
int proc_finished(const struct proc *p);
/* The first write failure (e.g. "Broken pipe"), or "" if none. */
const char *proc_error(const struct proc *p);

/* Send sig to the child's process group (while the group may still exist). 0, or -1 with errno. */
int proc_kill(struct proc *p, int sig);
/*
 * Send sig to the process group of every child started here and not reaped
 * yet (each engine's; the first 4096). Async-signal-safe: only atomic loads
 * and kill(2), for a host's signal handler that must exit at once.
 */
void proc_kill_all(int sig);

/*
 * Polite close of n children at once: write what is queued if the pipe
 * takes it, close their stdin, wait up to grace_ms for them to exit, then
 * SIGTERM their process groups, wait up to grace_ms again, then SIGKILL
 * and reap. Output arriving meanwhile is read (stdout dropped, stderr kept).
 * Afterwards every child is reaped and every descriptor closed (the watch
 * hook was told first); proc_status stays readable. Idempotent.
 */
void proc_close_many(struct proc **ps, size_t n, long grace_ms);
void proc_close(struct proc *p, long grace_ms);
/* Whether proc_close has run. */
int proc_closed(const struct proc *p);
/* Close (grace 0) if needed, then free. */
void proc_free(struct proc *p);

#endif
