/* measure.c: the process meter of `make bench` (built by scripts/bench.sh into build/bench/measure).
 *
 * Owns: running a command N times in sequence (fork from this small process,
 * execvp, waitpid; CPU and RSS from getrusage(RUSAGE_CHILDREN), which covers
 * the waited children and their waited descendants) and writing one line: the summed
 * wall seconds, user and system CPU seconds, the largest ru_maxrss (KiB) and
 * the last exit status, with microsecond resolution.
 * Never: forks from the Python harness itself: a child forked from a big
 * process starts with that process's RSS as its ru_maxrss floor, which is why
 * this exists.
 *
 * Usage: measure RESULT_FILE N command [args...]
 *   RESULT_FILE gets "wall user sys maxrss_kib status"; the command's stdout
 *   and stderr are inherited. Stops at the first run that exits non-zero.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double tv_seconds(struct timeval tv)
{
	return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static double now_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: measure RESULT_FILE N command [args...]\n");
		return 2;
	}
	int runs = atoi(argv[2]);
	if (runs < 1)
		runs = 1;
	double wall = 0, user, sys;
	long maxrss;
	int status_code = 0;
	for (int i = 0; i < runs; i++) {
		double t0 = now_seconds();
		pid_t pid = fork();
		if (pid < 0) {
			perror("measure: fork");
			return 1;
		}
		if (pid == 0) {
			execvp(argv[3], argv + 3);
			fprintf(stderr, "measure: %s: %s\n", argv[3], strerror(errno));
			_exit(127);
		}
		int status;
		while (waitpid(pid, &status, 0) < 0) {
			if (errno != EINTR) {
				perror("measure: waitpid");
				return 1;
			}
		}
		wall += now_seconds() - t0;
		status_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		if (status_code != 0)
			break;
	}
	/* Only our own children were waited for: the totals are theirs. maxrss is the largest child's. */
	struct rusage ru;
	getrusage(RUSAGE_CHILDREN, &ru);
	user = tv_seconds(ru.ru_utime);
	sys = tv_seconds(ru.ru_stime);
	maxrss = ru.ru_maxrss;
	FILE *f = fopen(argv[1], "w");
	if (!f) {
		perror("measure: result file");
		return 1;
	}
	fprintf(f, "%.6f %.6f %.6f %ld %d\n", wall, user, sys, maxrss, status_code);
	return fclose(f) == 0 ? 0 : 1;
}
