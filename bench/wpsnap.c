/* wpsnap: what a copy-on-write snapshot of a process's memory costs the process, by fork()
 * (what `cr_checkpoint --cow` does) and by userfaultfd write-protection (the alternative
 * evaluated for issue 11; docs/PERFORMANCE.md, "`--cow` without fork").
 *
 *   cc -O2 -Wall -pthread -o wpsnap bench/wpsnap.c && ./wpsnap GIB [REPS]
 *
 * Touches GIB GiB of private anonymous memory in 4 KiB pages (MADV_NOHUGEPAGE), then, REPS
 * times, one after the other in the same minutes:
 *   fork:      fork() until it returns in the parent (the stop of --cow: the page-table copy),
 *              then the program's first write to each of 16384 pages while the child lives
 *              (one copy-on-write fault each);
 *   wp:        UFFDIO_WRITEPROTECT of the whole range (the stop of a write-protect snapshot),
 *              then the first write to each of 16384 pages, each a synchronous fault that a
 *              handler thread resolves by copying the page aside and un-protecting it;
 *   unwp:      un-protecting the whole range in 1 MiB steps (what a writer does as it goes);
 *   rewp:      write-protecting 16384 single pages one ioctl each (the stop of a variant that
 *              protects ahead of the stop and re-protects only the pages written since), and
 *              the same 64 MiB as one contiguous run (one ioctl).
 * Then checks, on a 1 MiB mapping, how a synchronous write-protect uffd coexists with the
 * asynchronous one of incremental checkpoints, and what an unprivileged one can do.
 * Prints the load average before and after: every figure depends on it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#define FEATURE_WP_UNPOPULATED (1ULL << 13)
#define FEATURE_WP_ASYNC (1ULL << 15)
#define PAGE 4096UL
#define WRITTEN (64UL << 20) /* pages written after each snapshot: 16384 */

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void load(const char *when)
{
	char buf[64] = "?";
	FILE *f = fopen("/proc/loadavg", "r");
	if (f) {
		if (!fgets(buf, sizeof buf, f))
			strcpy(buf, "?\n");
		fclose(f);
	}
	printf("load average %s: %s", when, buf);
}

static int uffd_open(int flags, unsigned long long features)
{
	int fd = syscall(SYS_userfaultfd, O_CLOEXEC | flags);
	if (fd < 0)
		return -errno;
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	if (ioctl(fd, UFFDIO_API, &api)) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

static int uffd_register(int fd, char *p, size_t len)
{
	struct uffdio_register r = { .range = { (unsigned long)p, len },
				     .mode = UFFDIO_REGISTER_MODE_WP };
	return ioctl(fd, UFFDIO_REGISTER, &r) ? errno : 0;
}

static int uffd_unregister(int fd, char *p, size_t len)
{
	struct uffdio_range r = { (unsigned long)p, len };
	return ioctl(fd, UFFDIO_UNREGISTER, &r) ? errno : 0;
}

static int uffd_protect(int fd, char *p, size_t len, int on)
{
	struct uffdio_writeprotect w = { .range = { (unsigned long)p, len },
					 .mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0 };
	return ioctl(fd, UFFDIO_WRITEPROTECT, &w) ? errno : 0;
}

/* The fault handler: copies each page about to be written into a side buffer, un-protects it
 * (which wakes the writer). Its own stack and the side buffer are not protected. */
static int handler_fd;
static char *side;
static void *handler(void *arg)
{
	(void)arg;
	size_t n = 0;
	for (;;) {
		struct uffd_msg m;
		if (read(handler_fd, &m, sizeof m) != sizeof m || m.event != UFFD_EVENT_PAGEFAULT)
			continue;
		unsigned long page = m.arg.pagefault.address & ~(PAGE - 1);
		memcpy(side + (n++ % (WRITTEN / PAGE)) * PAGE, (void *)page, PAGE);
		if (uffd_protect(handler_fd, (char *)page, PAGE, 0)) {
			perror("wpsnap: un-protect in the handler");
			exit(1);
		}
	}
	return NULL;
}

static double write_pages(char *p)
{
	double t = now_ms();
	for (size_t i = 0; i < WRITTEN; i += PAGE)
		p[i]++;
	return (now_ms() - t) * 1000 / (WRITTEN / PAGE);
}

static void *write_one(void *p)
{
	*(char *)p = 2;
	return NULL;
}

static void facts(void)
{
	size_t len = 1 << 20;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(p, 1, len);
	int async = uffd_open(UFFD_USER_MODE_ONLY | O_NONBLOCK,
			      FEATURE_WP_ASYNC | FEATURE_WP_UNPOPULATED);
	int sync = uffd_open(O_NONBLOCK, UFFD_FEATURE_PAGEFAULT_FLAG_WP);
	int user = uffd_open(UFFD_USER_MODE_ONLY | O_NONBLOCK, UFFD_FEATURE_PAGEFAULT_FLAG_WP);
	printf("facts (uid %d):\n", (int)getuid());
	printf("  synchronous uffd that also takes kernel faults: %s\n",
	       sync >= 0 ? "allowed" : strerror(-sync));
	if (async >= 0 && sync >= 0) {
		int ra = uffd_register(async, p, len);
		int rs = uffd_register(sync, p, len);
		printf("  register with the async (incremental) uffd: %s; then with a sync one: %s\n",
		       strerror(ra), strerror(rs));
		uffd_protect(async, p, len, 1);
		uffd_unregister(async, p, len);
		uffd_register(sync, p, len);
		struct pollfd pf = { sync, POLLIN, 0 };
		pthread_t t;
		pthread_create(&t, NULL, write_one, p);
		int n = poll(&pf, 1, 300);
		printf("  async protection after unregistering the async uffd and registering a "
		       "sync one: %s\n",
		       n > 0 ? "kept" : "cleared (writes do not fault)");
		if (n > 0) {
			struct uffd_msg m;
			while (poll(&pf, 1, 100) > 0 && read(sync, &m, sizeof m) == sizeof m)
				uffd_protect(sync, (char *)(m.arg.pagefault.address & ~(PAGE - 1)),
					     PAGE, 0);
		}
		pthread_join(t, NULL);
		uffd_unregister(sync, p, len);
	}
	if (user >= 0) {
		char *q = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			       0);
		memset(q, 1, len);
		uffd_register(user, q, len);
		uffd_protect(user, q, len, 1);
		int z = open("/dev/zero", O_RDONLY);
		ssize_t r = read(z, q, PAGE);
		printf("  read() into a page protected by a user-mode-only sync uffd: %s\n",
		       r < 0 ? strerror(errno) : "succeeded");
		close(z);
	} else {
		printf("  user-mode-only sync uffd: %s\n", strerror(-user));
	}
}

int main(int argc, char **argv)
{
	if (argc < 2 || atoi(argv[1]) < 1) {
		fprintf(stderr, "usage: wpsnap GIB [REPS]\n");
		return 2;
	}
	size_t len = (size_t)atoi(argv[1]) << 30;
	int reps = argc > 2 ? atoi(argv[2]) : 3;
	load("at start");
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	side = mmap(NULL, WRITTEN, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (p == MAP_FAILED || side == MAP_FAILED) {
		perror("wpsnap: mmap");
		return 1;
	}
	madvise(p, len, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < len; i += PAGE)
		p[i] = (char)(i >> 12) | 1;
	handler_fd = uffd_open(0, UFFD_FEATURE_PAGEFAULT_FLAG_WP);
	if (handler_fd < 0)
		printf("synchronous uffd refused (%s): fork only\n", strerror(-handler_fd));
	else if (uffd_register(handler_fd, p, len)) {
		perror("wpsnap: UFFDIO_REGISTER");
		return 1;
	} else {
		pthread_t t;
		pthread_create(&t, NULL, handler, NULL);
	}
	for (int r = 0; r < reps; r++) {
		int pipefd[2];
		if (pipe(pipefd))
			return 1;
		double t0 = now_ms();
		pid_t child = fork();
		if (child == 0) {
			char c;
			close(pipefd[1]);
			(void)!read(pipefd[0], &c, 1);
			_exit(0);
		}
		double fork_ms = now_ms() - t0;
		double cow_us = write_pages(p);
		close(pipefd[1]);
		close(pipefd[0]);
		waitpid(child, NULL, 0);
		printf("%zu GiB: fork %.1f ms, copy-on-write fault %.1f us/page", len >> 30, fork_ms,
		       cow_us);
		if (handler_fd >= 0) {
			t0 = now_ms();
			uffd_protect(handler_fd, p, len, 1);
			double wp_ms = now_ms() - t0;
			double fault_us = write_pages(p);
			t0 = now_ms();
			for (size_t o = 0; o < len; o += 1 << 20)
				uffd_protect(handler_fd, p + o, 1 << 20, 0);
			double unwp_ms = now_ms() - t0;
			t0 = now_ms();
			for (size_t i = 0; i < WRITTEN; i += PAGE)
				uffd_protect(handler_fd, p + i * 7 % WRITTEN, PAGE, 1);
			double rewp_ms = now_ms() - t0;
			uffd_protect(handler_fd, p, WRITTEN, 0);
			t0 = now_ms();
			uffd_protect(handler_fd, p, WRITTEN, 1);
			double rerun_ms = now_ms() - t0;
			uffd_protect(handler_fd, p, WRITTEN, 0);
			printf(" | wp %.1f ms, sync wp fault %.1f us/page, unwp %.1f ms, "
			       "rewp 16384 pages %.1f ms (one run: %.2f ms)",
			       wp_ms, fault_us, unwp_ms, rewp_ms, rerun_ms);
		}
		printf("\n");
		fflush(stdout);
	}
	load("at end");
	facts();
	return 0;
}
