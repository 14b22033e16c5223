/* What Linux C libraries spell differently, for edge_agent.shm._shm (cext/_shm.pyx). */
#ifndef EDGE_AGENT_SHM_COMPAT_H
#define EDGE_AGENT_SHM_COMPAT_H

#include <sys/shm.h>

#ifndef SHM_DEST
#define SHM_DEST 01000  /* Linux: the segment is marked for removal */
#endif

/* ipc_perm's sequence number is a glibc field name; other libcs call it otherwise. */
#ifdef __GLIBC__
#define EA_IPC_SEQ(perm) ((perm).__seq)
#else
#define EA_IPC_SEQ(perm) 0
#endif

#endif /* EDGE_AGENT_SHM_COMPAT_H */
