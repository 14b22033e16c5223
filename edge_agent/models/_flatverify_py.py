"""The pure-Python twin of the compiled flatbuffer verifier (cext/_flatverify.pyx).

Same behaviour, same messages: it is the reference the compiled one is tested against
(tests/unit/test_model_verifier.py runs every case on both), and what
edge_agent.models.verifier uses where the compiled module is missing or EDGE_AGENT_PUREPYTHON=1
asks for it. A change to one is made to the other.

A Verifier holds a schema (built by edge_agent.models.verifier from edge_agent.models.tflite_schema)
and checks that a buffer can be read as the schema's root table without one read leaving the
buffer, the rules of the flatbuffers library's own verifier: every table's offset, vtable and
inline fields inside the buffer and aligned; every offset to a table, vector or string leads
inside it; a vector's elements and a string with its closing NUL fit in it; unions name a
table of the schema; tables nest at most MAX_DEPTH deep and at most MAX_TABLES are visited.
Beyond the flatbuffer rules, a table with external data (a Buffer's offset and size, an
Operator's large custom options) must name a range inside the file, where the runtime reads it.
"""
from __future__ import annotations

import struct

# Field kinds (the compiled module has the same numbers).
NONE, SCALAR, STRING, TABLE, SCALARS, STRINGS, TABLES, UNION = range(8)
MAX_DEPTH = 64  # the flatbuffers library's defaults
MAX_TABLES = 1_000_000

_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_i32 = struct.Struct("<i").unpack_from
_u64 = struct.Struct("<Q").unpack_from


class Verifier:
    """verify(data) returns None for a buffer every read of which stays inside it, and raises
    ValueError naming the first field found out of bounds otherwise.

    tables: (name, fields, external) per table; fields by field id as (name, kind, argument)
    (the argument: a scalar's or vector element's size, a table's or union's index); external
    (offset field id, size field id) or None. unions: (name, member table indexes by type
    value, -1 for none). root: the root table's index. max_tables: how many tables one
    verify() may visit (a table referenced twice counts twice)."""

    def __init__(self, tables, unions, root: int, max_tables: int = MAX_TABLES):
        self._tables = [(str(name), tuple((str(f), int(k), int(a)) for f, k, a in fields),
                         None if external is None else (int(external[0]), int(external[1])))
                        for name, fields, external in tables]
        self._unions = [(str(name), tuple(int(m) for m in members)) for name, members in unions]
        if not 0 <= root < len(self._tables):
            raise ValueError("root is no table of the schema")
        self._root = root
        self._max_tables = max_tables

    def verify(self, data) -> None:
        walk = _Walk(self, memoryview(data).cast("B"))
        walk.verify(self._root)


class _Walk:
    def __init__(self, verifier: Verifier, buf: memoryview):
        self.tables = verifier._tables
        self.unions = verifier._unions
        self.buf = buf
        self.n = len(buf)
        self.count = 0
        self.max_tables = verifier._max_tables
        self.path: list[str] = [verifier._tables[verifier._root][0]]

    def fail(self, what: str):
        raise ValueError(f"{''.join(self.path)}: {what}")

    def verify(self, root: int) -> None:
        n = self.n
        if n < 8:
            self.fail(f"the file is {n} bytes, shorter than a flatbuffer's header (8 bytes)")
        self.table(_u32(self.buf, 0)[0], root, 1)

    def offset(self, q: int, what: str) -> int:
        """Where the offset stored at q leads; it must lie inside the buffer."""
        n = self.n
        if q & 3:
            self.fail(f"the offset to the {what} at byte {q} is not aligned")
        if q + 4 > n:
            self.fail(f"the offset to the {what} at byte {q} lies past the end of the file "
                      f"({n} bytes)")
        o = _u32(self.buf, q)[0]
        if o >= 1 << 31 or q + o >= n:
            self.fail(f"the {what} at byte {q + o} lies past the end of the file ({n} bytes)")
        return q + o

    def vector(self, v: int, size: int, what: str) -> int:
        """The length of the vector (or string) at v, whose elements must fit in the buffer."""
        n = self.n
        if v & 3:
            self.fail(f"the {what} at byte {v} is not aligned")
        if v + 4 > n:
            self.fail(f"the {what}'s length at byte {v} lies past the end of the file "
                      f"({n} bytes)")
        length = _u32(self.buf, v)[0]
        end = v + 4 + length * size
        if end > n:
            self.fail(f"the {what} at byte {v} ({length} elements of {size} bytes) ends at "
                      f"byte {end}, past the end of the file ({n} bytes)")
        return length

    def string(self, s: int) -> None:
        length = self.vector(s, 1, "string")
        end = s + 4 + length
        if end >= self.n:
            self.fail(f"the string at byte {s} ({length} bytes) has no room for its closing "
                      f"NUL before the end of the file ({self.n} bytes)")
        if self.buf[end]:
            self.fail(f"the string at byte {s} ({length} bytes) is not NUL-terminated")

    def table(self, p: int, t: int, depth: int) -> None:
        buf, n = self.buf, self.n
        name, fields, external = self.tables[t]
        if depth > MAX_DEPTH:
            self.fail(f"tables nest deeper than {MAX_DEPTH}")
        self.count += 1
        if self.count > self.max_tables:
            self.fail(f"more than {self.max_tables} tables")
        if p & 3:
            self.fail(f"the {name} table at byte {p} is not aligned")
        if p + 4 > n:
            self.fail(f"the {name} table at byte {p} lies past the end of the file ({n} bytes)")
        vt = p - _i32(buf, p)[0]
        if vt < 0 or vt & 1 or vt + 4 > n:
            self.fail(f"the {name} table at byte {p} has its vtable at byte {vt}, outside "
                      f"the file ({n} bytes) or not aligned")
        vsize = _u16(buf, vt)[0]
        tsize = _u16(buf, vt + 2)[0]
        if vsize & 1 or vsize < 4 or vt + vsize > n:
            self.fail(f"the {name} table's vtable at byte {vt} ({vsize} bytes) is malformed "
                      f"or runs past the end of the file ({n} bytes)")
        if p + tsize > n:
            self.fail(f"the {name} table at byte {p} ({tsize} bytes) runs past the end of "
                      f"the file ({n} bytes)")
        slots = (vsize - 4) >> 1
        path = self.path
        for i in range(min(slots, len(fields))):
            fname, kind, arg = fields[i]
            if kind == NONE:
                continue
            fo = _u16(buf, vt + 4 + 2 * i)[0]
            if not fo:
                continue
            q = p + fo
            path.append("." + fname)
            if kind == SCALAR:
                if q % arg:
                    self.fail(f"the field at byte {q} is not aligned")
                if q + arg > n:
                    self.fail(f"the field at byte {q} ({arg} bytes) runs past the end of the "
                              f"file ({n} bytes)")
            elif kind == STRING:
                self.string(self.offset(q, "string"))
            elif kind == TABLE:
                self.table(self.offset(q, "table"), arg, depth + 1)
            elif kind == SCALARS:
                self.vector(self.offset(q, "vector"), arg, "vector")
            elif kind == STRINGS or kind == TABLES:
                v = self.offset(q, "vector")
                length = self.vector(v, 4, "vector")
                for j in range(length):
                    path.append(f"[{j}]")
                    e = self.offset(v + 4 + 4 * j, "string" if kind == STRINGS else "table")
                    if kind == STRINGS:
                        self.string(e)
                    else:
                        self.table(e, arg, depth + 1)
                    path.pop()
            else:  # UNION: its type is the field before it (verified above when present)
                type_fo = _u16(buf, vt + 2 + 2 * i)[0] if i >= 1 else 0
                member = buf[p + type_fo] if type_fo else 0
                if member:
                    union, members = self.unions[arg]
                    if member >= len(members) or members[member] < 0:
                        self.fail(f"union type {member} is not a member of {union} in the "
                                  "schema this agent checks models against")
                    self.table(self.offset(q, "table"), members[member], depth + 1)
            path.pop()
        if external is not None:
            self.external(p, vt, slots, external)

    def external(self, p: int, vt: int, slots: int, fields: tuple[int, int]) -> None:
        """Data stored outside the flatbuffer (a model larger than 2 GiB, or one written so):
        an offset from the start of the file (0 and 1 mean none) and a size."""
        values = []
        for field_id in fields:
            fo = _u16(self.buf, vt + 4 + 2 * field_id)[0] if field_id < slots else 0
            values.append(_u64(self.buf, p + fo)[0] if fo else 0)
        start, size = values
        if start > 1 and start + size > self.n:
            self.fail(f"the data at file offset {start} ({size} bytes) runs past the end of "
                      f"the file ({self.n} bytes)")
