# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Flatbuffer verification against a schema table: the compiled twin of
edge_agent/models/_flatverify_py.py, which documents the rules and is the reference (the same tests
run on both, messages included).

The walk reads the buffer with explicit little-endian loads through a pointer checked before
every read; a failure raises ValueError with the same text as the twin, built only then (the
path of field names and indexes is kept as numbers while walking)."""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    K_NONE = 0
    K_SCALAR = 1
    K_STRING = 2
    K_TABLE = 3
    K_SCALARS = 4
    K_STRINGS = 5
    K_TABLES = 6
    K_UNION = 7
    C_MAX_DEPTH = 64
    PATH_CAPACITY = 2 * C_MAX_DEPTH + 8

MAX_DEPTH = C_MAX_DEPTH
MAX_TABLES = 1000000


cdef inline uint32_t u16(const uint8_t *b) noexcept nogil:
    return <uint32_t>b[0] | (<uint32_t>b[1] << 8)


cdef inline uint32_t u32(const uint8_t *b) noexcept nogil:
    return (<uint32_t>b[0] | (<uint32_t>b[1] << 8) | (<uint32_t>b[2] << 16)
            | (<uint32_t>b[3] << 24))


cdef inline uint64_t u64(const uint8_t *b) noexcept nogil:
    return <uint64_t>u32(b) | (<uint64_t>u32(b + 4) << 32)


cdef struct Walk:
    const uint8_t *buf
    uint64_t n
    long count
    int path_len
    int path_is_index[PATH_CAPACITY]  # 1: an element index; 0: a field (global index)
    int64_t path_value[PATH_CAPACITY]


cdef class Verifier:
    """verify(data) returns None for a buffer every read of which stays inside it, and raises
    ValueError naming the first field found out of bounds otherwise (the twin's docstring
    says what the constructor takes)."""
    cdef int n_tables
    cdef int n_fields
    cdef int n_unions
    cdef int root
    cdef long max_tables
    cdef int *first       # per table: index of its field 0 in kinds/args
    cdef int *count       # per table: its number of fields
    cdef int *ext_offset  # per table: its external offset field id, or -1
    cdef int *ext_size
    cdef int *kinds       # per field (all tables' fields in a row)
    cdef int *args
    cdef int *union_first
    cdef int *union_count
    cdef int *members     # per union member: a table index or -1
    cdef list table_names
    cdef list field_names
    cdef list union_names

    def __cinit__(self):
        self.first = self.count = self.ext_offset = self.ext_size = NULL
        self.kinds = self.args = self.union_first = self.union_count = self.members = NULL

    def __init__(self, tables, unions, int root, long max_tables=MAX_TABLES):
        tables = [(str(tname), [(str(fname), int(kind), int(arg)) for fname, kind, arg in fs],
                   None if ext is None else (int(ext[0]), int(ext[1])))
                  for tname, fs, ext in tables]
        unions = [(str(uname), [int(member) for member in ms]) for uname, ms in unions]
        if not 0 <= root < len(tables):
            raise ValueError("root is no table of the schema")
        self.n_tables = len(tables)
        self.n_fields = sum(len(row[1]) for row in tables)
        self.n_unions = len(unions)
        self.root = root
        self.max_tables = max_tables
        self.first = self._ints(self.n_tables)
        self.count = self._ints(self.n_tables)
        self.ext_offset = self._ints(self.n_tables)
        self.ext_size = self._ints(self.n_tables)
        self.kinds = self._ints(self.n_fields)
        self.args = self._ints(self.n_fields)
        self.union_first = self._ints(self.n_unions)
        self.union_count = self._ints(self.n_unions)
        self.members = self._ints(sum(len(row[1]) for row in unions))
        self.table_names, self.field_names, self.union_names = [], [], []
        cdef int t = 0, f = 0, u = 0, m = 0
        for name, fields, external in tables:
            self.table_names.append(name)
            self.first[t] = f
            self.count[t] = len(fields)
            self.ext_offset[t] = -1 if external is None else external[0]
            self.ext_size[t] = -1 if external is None else external[1]
            for fname, kind, arg in fields:
                if not 0 <= kind <= K_UNION:
                    raise ValueError(f"field {name}.{fname}: unknown kind {kind}")
                if kind in (K_TABLE, K_TABLES) and not 0 <= arg < self.n_tables:
                    raise ValueError(f"field {name}.{fname}: no table {arg}")
                if kind == K_UNION and not 0 <= arg < self.n_unions:
                    raise ValueError(f"field {name}.{fname}: no union {arg}")
                if kind in (K_SCALAR, K_SCALARS) and arg not in (1, 2, 4, 8):
                    raise ValueError(f"field {name}.{fname}: scalar size {arg}")
                self.field_names.append(fname)
                self.kinds[f] = kind
                self.args[f] = arg
                f += 1
            t += 1
        for name, unit in unions:
            self.union_names.append(name)
            self.union_first[u] = m
            self.union_count[u] = len(unit)
            for member in unit:
                if not -1 <= member < self.n_tables:
                    raise ValueError(f"union {name}: no table {member}")
                self.members[m] = member
                m += 1
            u += 1

    cdef int *_ints(self, Py_ssize_t n) except NULL:
        cdef int *p = <int *>PyMem_Malloc(max(n, 1) * sizeof(int))
        if p == NULL:
            raise MemoryError()
        return p

    def __dealloc__(self):
        PyMem_Free(self.first)
        PyMem_Free(self.count)
        PyMem_Free(self.ext_offset)
        PyMem_Free(self.ext_size)
        PyMem_Free(self.kinds)
        PyMem_Free(self.args)
        PyMem_Free(self.union_first)
        PyMem_Free(self.union_count)
        PyMem_Free(self.members)

    def verify(self, data):
        cdef Py_buffer view
        cdef Walk w
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            w.buf = <const uint8_t *>view.buf
            w.n = <uint64_t>view.len
            w.count = 0
            w.path_len = 0
            if w.n < 8:
                self._fail(&w, f"the file is {w.n} bytes, shorter than a flatbuffer's header "
                               "(8 bytes)")
            self._table(&w, u32(w.buf), self.root, 1)
        finally:
            PyBuffer_Release(&view)

    cdef int _fail(self, Walk *w, str what) except -1:
        parts = [self.table_names[self.root]]
        for i in range(w.path_len):
            if w.path_is_index[i]:
                parts.append(f"[{w.path_value[i]}]")
            else:
                parts.append("." + self.field_names[w.path_value[i]])
        raise ValueError(f"{''.join(parts)}: {what}")

    cdef inline void _push(self, Walk *w, int is_index, int64_t value) noexcept:
        w.path_is_index[w.path_len] = is_index
        w.path_value[w.path_len] = value
        w.path_len += 1

    cdef uint64_t _offset(self, Walk *w, uint64_t q, str what) except? 0:
        cdef uint32_t o
        if q & 3:
            self._fail(w, f"the offset to the {what} at byte {q} is not aligned")
        if q + 4 > w.n:
            self._fail(w, f"the offset to the {what} at byte {q} lies past the end of the "
                          f"file ({w.n} bytes)")
        o = u32(w.buf + q)
        if o >= (<uint32_t>1 << 31) or q + o >= w.n:
            self._fail(w, f"the {what} at byte {q + o} lies past the end of the file "
                          f"({w.n} bytes)")
        return q + o

    cdef uint64_t _vector(self, Walk *w, uint64_t v, uint64_t size, str what) except? 0:
        cdef uint64_t length, end
        if v & 3:
            self._fail(w, f"the {what} at byte {v} is not aligned")
        if v + 4 > w.n:
            self._fail(w, f"the {what}'s length at byte {v} lies past the end of the file "
                          f"({w.n} bytes)")
        length = u32(w.buf + v)
        end = v + 4 + length * size
        if end > w.n:
            self._fail(w, f"the {what} at byte {v} ({length} elements of {size} bytes) ends "
                          f"at byte {end}, past the end of the file ({w.n} bytes)")
        return length

    cdef int _string(self, Walk *w, uint64_t s) except -1:
        cdef uint64_t length = self._vector(w, s, 1, "string")
        cdef uint64_t end = s + 4 + length
        if end >= w.n:
            self._fail(w, f"the string at byte {s} ({length} bytes) has no room for its "
                          f"closing NUL before the end of the file ({w.n} bytes)")
        if w.buf[end]:
            self._fail(w, f"the string at byte {s} ({length} bytes) is not NUL-terminated")
        return 0

    cdef int _table(self, Walk *w, uint64_t p, int t, int depth) except -1:
        cdef const uint8_t *buf = w.buf
        cdef uint64_t n = w.n
        cdef int64_t vt
        cdef uint32_t vsize, tsize, fo, type_fo, member
        cdef int slots, i, kind, arg, f, fields, u
        cdef uint64_t q, v, e, length, j
        if depth > C_MAX_DEPTH:
            self._fail(w, f"tables nest deeper than {C_MAX_DEPTH}")
        w.count += 1
        if w.count > self.max_tables:
            self._fail(w, f"more than {self.max_tables} tables")
        if p & 3:
            self._fail(w, f"the {self.table_names[t]} table at byte {p} is not aligned")
        if p + 4 > n:
            self._fail(w, f"the {self.table_names[t]} table at byte {p} lies past the end of "
                          f"the file ({n} bytes)")
        vt = <int64_t>p - <int64_t><int32_t>u32(buf + p)
        if vt < 0 or vt & 1 or <uint64_t>vt + 4 > n:
            self._fail(w, f"the {self.table_names[t]} table at byte {p} has its vtable at "
                          f"byte {vt}, outside the file ({n} bytes) or not aligned")
        vsize = u16(buf + vt)
        tsize = u16(buf + vt + 2)
        if vsize & 1 or vsize < 4 or <uint64_t>vt + vsize > n:
            self._fail(w, f"the {self.table_names[t]} table's vtable at byte {vt} ({vsize} "
                          f"bytes) is malformed or runs past the end of the file ({n} bytes)")
        if p + tsize > n:
            self._fail(w, f"the {self.table_names[t]} table at byte {p} ({tsize} bytes) runs "
                          f"past the end of the file ({n} bytes)")
        slots = (vsize - 4) >> 1
        fields = self.count[t]
        for i in range(slots if slots < fields else fields):
            f = self.first[t] + i
            kind = self.kinds[f]
            if kind == K_NONE:
                continue
            fo = u16(buf + vt + 4 + 2 * i)
            if not fo:
                continue
            q = p + fo
            arg = self.args[f]
            self._push(w, 0, f)
            if kind == K_SCALAR:
                if q % <uint64_t>arg:
                    self._fail(w, f"the field at byte {q} is not aligned")
                if q + <uint64_t>arg > n:
                    self._fail(w, f"the field at byte {q} ({arg} bytes) runs past the end of "
                                  f"the file ({n} bytes)")
            elif kind == K_STRING:
                self._string(w, self._offset(w, q, "string"))
            elif kind == K_TABLE:
                self._table(w, self._offset(w, q, "table"), arg, depth + 1)
            elif kind == K_SCALARS:
                self._vector(w, self._offset(w, q, "vector"), arg, "vector")
            elif kind == K_STRINGS or kind == K_TABLES:
                v = self._offset(w, q, "vector")
                length = self._vector(w, v, 4, "vector")
                for j in range(length):
                    self._push(w, 1, <int64_t>j)
                    e = self._offset(w, v + 4 + 4 * j,
                                     "string" if kind == K_STRINGS else "table")
                    if kind == K_STRINGS:
                        self._string(w, e)
                    else:
                        self._table(w, e, arg, depth + 1)
                    w.path_len -= 1
            else:  # K_UNION: its type is the field before it (verified above when present)
                type_fo = u16(buf + vt + 2 + 2 * i) if i >= 1 else 0
                member = buf[p + type_fo] if type_fo else 0
                if member:
                    u = arg
                    if member >= <uint32_t>self.union_count[u] or \
                            self.members[self.union_first[u] + member] < 0:
                        self._fail(w, f"union type {member} is not a member of "
                                      f"{self.union_names[u]} in the schema this agent "
                                      "checks models against")
                    self._table(w, self._offset(w, q, "table"),
                                self.members[self.union_first[u] + member], depth + 1)
            w.path_len -= 1
        if self.ext_offset[t] >= 0:
            self._external(w, p, vt, slots, self.ext_offset[t], self.ext_size[t])
        return 0

    cdef int _external(self, Walk *w, uint64_t p, int64_t vt, int slots, int offset_id,
                       int size_id) except -1:
        cdef uint32_t fo
        cdef uint64_t start = 0, size = 0
        if offset_id < slots:
            fo = u16(w.buf + vt + 4 + 2 * offset_id)
            if fo:
                start = u64(w.buf + p + fo)
        if size_id < slots:
            fo = u16(w.buf + vt + 4 + 2 * size_id)
            if fo:
                size = u64(w.buf + p + fo)
        if start > 1 and (start > w.n or size > w.n - start):
            self._fail(w, f"the data at file offset {start} ({size} bytes) runs past the end "
                          f"of the file ({w.n} bytes)")
        return 0
