/* The SIGBUS guard of edge_agent.shm._shm (cext/_shm.pyx), in C: it must run inside a signal
   handler, where Python cannot. A POSIX object can be truncated by its owner while the agent
   has it mapped; touching the pages beyond its new end raises SIGBUS. The handler replaces
   such a mapping with anonymous zero pages and flags it, so the copy in flight completes and
   the caller reports the segment as invalid instead of the agent dying.

   Header-only (static functions): one translation unit, _shm.c, includes it. */
#ifndef EDGE_AGENT_SIGBUS_GUARD_H
#define EDGE_AGENT_SIGBUS_GUARD_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define EA_GUARD_SLOTS 1024

/* Registered POSIX mappings. Slots are written with the GIL held; the handler only
   reads them, and a mapping in use by a copy is never unregistered during it. */
typedef struct { volatile uintptr_t start; volatile size_t length; volatile int faulted; } ea_guard_slot;
static ea_guard_slot ea_guard[EA_GUARD_SLOTS];
static struct sigaction ea_previous_sigbus;
static int ea_guard_installed = 0;

static void ea_sigbus(int signum, siginfo_t *info, void *context) {
    uintptr_t addr = (uintptr_t)info->si_addr;
    for (int i = 0; i < EA_GUARD_SLOTS; i++) {
        uintptr_t start = ea_guard[i].start;
        size_t length = ea_guard[i].length;
        if (start && addr >= start && addr - start < length) {
            /* Zero pages in place of the truncated object: the faulting access is
               retried and succeeds; the owner of the mapping sees `faulted`. */
            mmap((void *)start, length, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            ea_guard[i].faulted = 1;
            return;
        }
    }
    /* Not ours: hand over to whoever had SIGBUS before (faulthandler, the default). */
    if (ea_previous_sigbus.sa_flags & SA_SIGINFO) {
        if (ea_previous_sigbus.sa_sigaction) { ea_previous_sigbus.sa_sigaction(signum, info, context); return; }
    } else if (ea_previous_sigbus.sa_handler != SIG_DFL && ea_previous_sigbus.sa_handler != SIG_IGN) {
        ea_previous_sigbus.sa_handler(signum); return;
    }
    sigaction(SIGBUS, &ea_previous_sigbus, NULL);  /* the retried access dies as it should */
}

static int ea_guard_install(void) {
    if (ea_guard_installed) return 0;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = ea_sigbus;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &ea_previous_sigbus) != 0) return -1;
    ea_guard_installed = 1;
    return 0;
}

static int ea_guard_add(void *start, size_t length) {
    for (int i = 0; i < EA_GUARD_SLOTS; i++) {
        if (!ea_guard[i].start) {
            ea_guard[i].faulted = 0;
            ea_guard[i].length = length;
            __atomic_store_n(&ea_guard[i].start, (uintptr_t)start, __ATOMIC_RELEASE);
            return i;
        }
    }
    return -1;
}

static void ea_guard_remove(int slot) {
    __atomic_store_n(&ea_guard[slot].start, (uintptr_t)0, __ATOMIC_RELEASE);
    ea_guard[slot].length = 0;
}

static int ea_guard_faulted(int slot) { return ea_guard[slot].faulted; }

#endif /* EDGE_AGENT_SIGBUS_GUARD_H */
