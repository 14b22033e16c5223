# cython: language_level=3, boundscheck=False, wraparound=False
"""A model's per-prediction counters in C: what edge_agent.observe.metrics.ModelMetrics adds up for
each successful prediction, for the price of one call that makes no Python object.

succeeded() runs from start to end holding the GIL (it calls nothing that could release it),
so a reader, who needs the GIL too, sees all of one prediction's updates or none of them.
"""
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cdef enum:
    MAX_BOUNDS = 32


cpdef double now():
    """Seconds on CLOCK_MONOTONIC: the clock of time.perf_counter() on Linux, so a start
    taken with either can be ended with the other."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class PredictCounters:
    """Two latency histograms (end to end, invoke) over the same upper bounds, and the bytes
    and shared-memory inputs of successful predictions."""
    cdef double bounds[MAX_BOUNDS]
    cdef int nbounds
    cdef unsigned long long predict_counts[MAX_BOUNDS + 1]
    cdef unsigned long long invoke_counts[MAX_BOUNDS + 1]
    cdef readonly double predict_sum, invoke_sum
    cdef readonly unsigned long long input_bytes, output_bytes, shared_inputs

    def __cinit__(self, bounds):
        """`bounds`: the histograms' upper bounds in seconds, ascending (at most 32). The
        counts start at zero: Cython allocates the object zero-filled."""
        if len(bounds) > MAX_BOUNDS:
            raise ValueError(f"at most {MAX_BOUNDS} bucket bounds, got {len(bounds)}")
        self.nbounds = len(bounds)
        for i, bound in enumerate(bounds):
            self.bounds[i] = bound

    cdef inline int _bucket(self, double seconds) noexcept:
        """The first bound >= seconds (bisect_left); nbounds, the +Inf bucket, above all."""
        cdef int low = 0, high = self.nbounds, middle
        while low < high:
            middle = (low + high) >> 1
            if self.bounds[middle] < seconds:
                low = middle + 1
            else:
                high = middle
        return low

    def succeeded(self, double started, double invoke_seconds, unsigned long long shared,
                  unsigned long long input_bytes, unsigned long long output_bytes):
        """A prediction whose outputs are in the reply; `started`: time.perf_counter() when
        the agent had the decoded request."""
        cdef double seconds = now() - started
        self.predict_counts[self._bucket(seconds)] += 1
        self.predict_sum += seconds
        self.invoke_counts[self._bucket(invoke_seconds)] += 1
        self.invoke_sum += invoke_seconds
        self.input_bytes += input_bytes
        self.output_bytes += output_bytes
        self.shared_inputs += shared

    def state(self) -> tuple:
        """(predict bucket counts, predict sum, invoke bucket counts, invoke sum, input
        bytes, output bytes, shared inputs), all as of one moment (see the module doc).
        Bucket counts are per bucket, not cumulative, the last one +Inf."""
        return ([self.predict_counts[i] for i in range(self.nbounds + 1)], self.predict_sum,
                [self.invoke_counts[i] for i in range(self.nbounds + 1)], self.invoke_sum,
                self.input_bytes, self.output_bytes, self.shared_inputs)


cdef enum:
    MAX_RPCS = 32
    CODES = 17  # gRPC status codes 0 (OK) to 16 (UNAUTHENTICATED)


cdef class CallCounts:
    """Calls by RPC name and status code, for one front. count() holds the GIL throughout, so
    calls from any number of threads add up exactly, with no lock. The RPC names are the
    program's own (its RPC table and "unknown"), so their rows are few and fixed."""
    cdef dict _rows  # rpc name → row
    cdef list _names
    cdef unsigned long long counts[MAX_RPCS][CODES]

    def __cinit__(self):
        self._rows = {}
        self._names = []

    def count(self, str rpc, int code):
        row = self._rows.get(rpc)
        if row is None:
            if len(self._names) == MAX_RPCS:
                raise ValueError(f"more than {MAX_RPCS} RPC names counted")
            row = self._rows[rpc] = len(self._names)
            self._names.append(rpc)
        if 0 <= code < CODES:
            self.counts[<int>row][code] += 1

    def counted(self) -> dict:
        """{(rpc, code): calls} for every count that is not zero."""
        result = {}
        for row, name in enumerate(self._names):
            for code in range(CODES):
                if self.counts[row][code]:
                    result[name, code] = self.counts[row][code]
        return result
