/* LD_PRELOAD shim: every fsync/fdatasync takes at least SLOW_FSYNC_MS
 * (default 10) milliseconds longer, as on an SD card or a USB stick where a
 * flush costs 5 to 50 ms. For benchmarks of group commit only:
 *
 *   gcc -O2 -shared -fPIC -o slow-fsync.so .ci/bench/slow-fsync.c -ldl
 *   LD_PRELOAD=$PWD/slow-fsync.so SLOW_FSYNC_MS=10 cargo bench -p tracegate --bench store
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void slow(void) {
    const char *v = getenv("SLOW_FSYNC_MS");
    long ms = v ? atol(v) : 10;
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow();
    return real(fd);
}
