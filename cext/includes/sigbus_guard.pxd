# The SIGBUS guard (sigbus_guard.h): registers POSIX mappings whose pages a truncation of
# the object would turn into SIGBUS, and replaces them with zero pages when it happens.

cdef extern from "sigbus_guard.h":
    int EA_GUARD_SLOTS
    int ea_guard_install()
    int ea_guard_add(void* start, size_t length)
    void ea_guard_remove(int slot)
    int ea_guard_faulted(int slot)
