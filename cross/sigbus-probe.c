/* Does the emulator report the faulting address of a SIGBUS right? (docs/CROSS.md, armv7)
 *
 * The same thing edge_agent.shm._shm's SIGBUS guard does: map an 8 KiB POSIX shared-memory object,
 * truncate it to 0, read its second page. The kernel raises SIGBUS with si_addr = that page;
 * the handler recognises its mapping by si_addr, maps zeros over it and the read is retried.
 *
 *   aarch64-linux-gnu-gcc -static -o /tmp/probe-aarch64 cross/sigbus-probe.c && /tmp/probe-aarch64
 *   arm-linux-gnueabihf-gcc -static -o /tmp/probe-armhf cross/sigbus-probe.c && /tmp/probe-armhf
 *
 * (static binaries run through binfmt_misc without a root file system). Exit status 0: right;
 * 5: si_addr is not the faulting page, which qemu-arm 7.2 does.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SIZE 8192
static char *volatile mapping;
static volatile uintptr_t fault_address;

static void on_sigbus(int signum, siginfo_t *info, void *context) {
    (void)signum; (void)context;
    fault_address = (uintptr_t)info->si_addr;
    if (fault_address < (uintptr_t)mapping || fault_address - (uintptr_t)mapping >= SIZE) {
        fprintf(stderr, "wrong si_addr %#lx: the read was at %#lx (mapping %#lx + %d)\n",
                (unsigned long)fault_address, (unsigned long)(mapping + SIZE / 2),
                (unsigned long)mapping, SIZE);
        _exit(5);
    }
    if (mmap(mapping, SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
        _exit(4);
}

int main(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO;
    sigaction(SIGBUS, &action, NULL);

    char name[64];
    snprintf(name, sizeof name, "/sigbus-probe-%d", (int)getpid());
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || ftruncate(fd, SIZE) != 0) { perror("shm_open"); return 1; }
    shm_unlink(name);
    mapping = mmap(NULL, SIZE, PROT_READ, MAP_SHARED, fd, 0);
    if (mapping == MAP_FAILED) { perror("mmap"); return 1; }
    if (ftruncate(fd, 0) != 0) { perror("ftruncate"); return 1; }

    char value = ((volatile char *)mapping)[SIZE / 2];  /* SIGBUS: beyond the new end */
    printf("right: si_addr %#lx is the faulting page; the retried read gave %d\n",
           (unsigned long)fault_address, value);
    return 0;
}
