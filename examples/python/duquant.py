"""A ctypes binding of libduquant (no compiled module; numpy optional).

Load the shared library with ``Library(path)``: ``path`` defaults to the DUQUANT_LIB environment
variable, then to "libduquant.so.1" on the loader's search path. Matrices are row-major float32:
numpy arrays (any float dtype/layout, converted) or, without numpy, ``Matrix`` objects holding
a flat ``array('f')`` with rows and cols. Every library error raises ``DuquantError`` carrying the
status code and its name. Objects free their handles when garbage-collected, or on ``close()``.

The params structs mirror include/duquant.h member by member (struct_size first); the library is
told the size Python built, so it never writes past it.
"""
import ctypes as C
import os
from array import array

try:
    import numpy as np
except ImportError:  # the binding works without numpy; only the conversions need it
    np = None

# Status codes and constants from duquant.h.
DQ_OK = 0
DQ_ERR_BUFFER = -11
DQ_PLAN_F_SMOOTH, DQ_PLAN_F_ROTATE, DQ_PLAN_F_PERMUTE = 1, 2, 4
DQ_PLAN_F_DEFAULT = DQ_PLAN_F_SMOOTH | DQ_PLAN_F_ROTATE | DQ_PLAN_F_PERMUTE
DQ_ROT_METHOD_GREEDY, DQ_ROT_METHOD_HADAMARD, DQ_ROT_METHOD_RANDOM = 0, 1, 2
DQ_QUANT_ASYM, DQ_QUANT_SYM = 0, 1
DQ_FILE_F_BORROW = 1
DQ_DTYPE_F32 = 9
DQ_FILE_MAX_DIMS = 8


class PlanParams(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("flags", C.c_uint32), ("seed", C.c_uint64),
                ("method", C.c_int32), ("block_size", C.c_int32),
                ("max_rotation_step", C.c_int32), ("permutation_times", C.c_int32),
                ("smooth_alpha", C.c_float), ("refine", C.c_void_p)]


class QuantParams(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("flags", C.c_uint32), ("bits", C.c_int32),
                ("scheme", C.c_int32), ("group_size", C.c_int32), ("clip_ratio", C.c_float)]


class FileParams(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("flags", C.c_uint32),
                ("max_header_bytes", C.c_uint64)]


class DuquantError(RuntimeError):
    def __init__(self, status, name, what):
        super().__init__("%s failed: %s (%d)" % (what, name, status))
        self.status = status
        self.name = name


class Matrix:
    """A row-major float32 matrix without numpy: data is an array('f') of rows * cols."""

    def __init__(self, rows, cols, data=None):
        self.rows, self.cols = rows, cols
        self.data = array("f", data if data is not None else bytes(4 * rows * cols))
        if len(self.data) != rows * cols:
            raise ValueError("data holds %d values, not %d" % (len(self.data), rows * cols))


def _as_matrix(x):
    """(owner, pointer, rows, cols) of a float32 row-major copy of x."""
    if isinstance(x, Matrix):
        buf = array("f", x.data)
        addr, _ = buf.buffer_info()
        return buf, C.cast(addr, C.POINTER(C.c_float)), x.rows, x.cols
    if np is None:
        raise TypeError("without numpy, pass duquant.Matrix objects")
    a = np.array(x, dtype=np.float32, order="C")  # a copy: the library works in place
    if a.ndim != 2:
        raise ValueError("expected a 2-D matrix")
    return a, a.ctypes.data_as(C.POINTER(C.c_float)), a.shape[0], a.shape[1]


def _from_buffer(buf, rows, cols, like):
    if isinstance(like, Matrix) or np is None:
        return Matrix(rows, cols, buf)
    return np.frombuffer(buf, dtype=np.float32).reshape(rows, cols).copy()


def _vector(values):
    a = array("f", [float(v) for v in values])
    return a, C.cast(a.buffer_info()[0], C.POINTER(C.c_float))


class Library:
    def __init__(self, path=None):
        path = path or os.environ.get("DUQUANT_LIB") or "libduquant.so.1"
        self.lib = L = C.CDLL(path)
        st, i32, i64, sz = C.c_int32, C.c_int32, C.c_int64, C.c_size_t
        vp, fp, cp = C.c_void_p, C.POINTER(C.c_float), C.c_char_p
        sigs = {
            "dq_status_name": (cp, [st]),
            "dq_version_string": (cp, []),
            "dq_plan_params_init": (st, [vp, sz]),
            "dq_quant_params_init": (st, [vp, sz]),
            "dq_file_params_init": (st, [vp, sz]),
            "dq_plan_build_from_sample": (st, [vp, vp, fp, fp, i64, i64, i64, fp, C.POINTER(vp)]),
            "dq_plan_free": (None, [vp]),
            "dq_plan_width": (st, [vp, C.POINTER(i64)]),
            "dq_plan_apply_act": (st, [vp, fp, i64, i64, i64, vp, sz]),
            "dq_plan_transform_weight": (st, [vp, fp, i64, i64, i64]),
            "dq_smooth_weight_absmax": (st, [fp, i64, i64, i64, i32, fp]),
            "dq_qmatrix_pack": (st, [vp, vp, fp, i64, i64, i64, fp, fp, C.POINTER(vp)]),
            "dq_qmatrix_free": (None, [vp]),
            "dq_qmatrix_layout": (st, [vp, C.POINTER(i64), C.POINTER(i64), C.POINTER(i32),
                                       C.POINTER(i32), C.POINTER(i32), C.POINTER(i64),
                                       C.POINTER(sz)]),
            "dq_qmatrix_dequantize": (st, [vp, fp, i64]),
            "dq_file_writer_create": (st, [vp, C.POINTER(vp)]),
            "dq_file_writer_free": (None, [vp]),
            "dq_file_writer_add_metadata": (st, [vp, cp, cp]),
            "dq_file_writer_add_tensor_f32": (st, [vp, cp, fp, i32, C.POINTER(i64)]),
            "dq_file_writer_add_plan": (st, [vp, cp, vp]),
            "dq_file_writer_add_qmatrix": (st, [vp, cp, vp]),
            "dq_file_writer_to_buffer": (st, [vp, vp, sz, C.POINTER(sz)]),
            "dq_file_writer_save": (st, [vp, cp]),
            "dq_file_reader_open": (st, [vp, vp, cp, C.POINTER(vp)]),
            "dq_file_reader_from_buffer": (st, [vp, vp, vp, sz, C.POINTER(vp)]),
            "dq_file_reader_free": (None, [vp]),
            "dq_file_reader_metadata": (st, [vp, cp, cp, sz, C.POINTER(sz)]),
            "dq_file_reader_tensor_info": (st, [vp, cp, C.POINTER(i32), C.POINTER(i32),
                                                C.POINTER(i64)]),
            "dq_file_reader_get_tensor_f32": (st, [vp, cp, fp, i64]),
            "dq_file_reader_get_plan": (st, [vp, vp, cp, C.POINTER(vp)]),
            "dq_file_reader_get_qmatrix": (st, [vp, vp, cp, C.POINTER(vp)]),
        }
        for name, (res, args) in sigs.items():
            f = getattr(L, name)
            f.restype, f.argtypes = res, args

    def version(self):
        return self.lib.dq_version_string().decode()

    def check(self, status, what):
        if status != DQ_OK:
            raise DuquantError(status, self.lib.dq_status_name(status).decode(), what)

    def init(self, struct_type, init_fn):
        p = struct_type()
        self.check(getattr(self.lib, init_fn)(C.byref(p), C.sizeof(p)), init_fn)
        return p

    def plan_params(self, **kw):
        p = self.init(PlanParams, "dq_plan_params_init")
        for k, v in kw.items():
            setattr(p, k, v)
        return p

    def quant_params(self, **kw):
        p = self.init(QuantParams, "dq_quant_params_init")
        for k, v in kw.items():
            setattr(p, k, v)
        return p

    def weight_absmax(self, w):
        owner, ptr, rows, cols = _as_matrix(w)
        out, optr = _vector([0.0] * cols)
        self.check(self.lib.dq_smooth_weight_absmax(ptr, rows, cols, cols, 0, optr),
                   "dq_smooth_weight_absmax")
        return list(out)


class _Handle:
    _free = None
    h = None  # set once creation succeeded

    def __init__(self, lib, handle):
        self.L, self.h = lib, handle

    def close(self):
        if self.h:
            getattr(self.L.lib, self._free)(self.h)
            self.h = None

    def __del__(self):
        self.close()


class Plan(_Handle):
    _free = "dq_plan_free"

    @classmethod
    def from_sample(cls, lib, sample, w_absmax, params=None, act_absmax=None):
        owner, ptr, rows, cols = _as_matrix(sample)
        wa, waptr = _vector(w_absmax)
        aa, aaptr = _vector(act_absmax) if act_absmax is not None else (None, None)
        out = C.c_void_p()
        lib.check(lib.lib.dq_plan_build_from_sample(None, C.byref(params) if params else None,
                                                    aaptr, ptr, rows, cols, cols, waptr,
                                                    C.byref(out)), "dq_plan_build_from_sample")
        return cls(lib, out)

    def width(self):
        n = C.c_int64()
        self.L.check(self.L.lib.dq_plan_width(self.h, C.byref(n)), "dq_plan_width")
        return n.value

    def apply(self, x):
        """x * G (a new matrix)."""
        owner, ptr, rows, cols = _as_matrix(x)
        self.L.check(self.L.lib.dq_plan_apply_act(self.h, ptr, rows, cols, cols, None, 0),
                     "dq_plan_apply_act")
        return _from_buffer(bytes(memoryview(owner).cast("B")), rows, cols, x)

    def transform_weight(self, w):
        """W * G^-T (a new matrix)."""
        owner, ptr, rows, cols = _as_matrix(w)
        self.L.check(self.L.lib.dq_plan_transform_weight(self.h, ptr, rows, cols, cols),
                     "dq_plan_transform_weight")
        return _from_buffer(bytes(memoryview(owner).cast("B")), rows, cols, w)


class QMatrix(_Handle):
    _free = "dq_qmatrix_free"

    @classmethod
    def pack(cls, lib, w, params=None):
        owner, ptr, rows, cols = _as_matrix(w)
        out = C.c_void_p()
        lib.check(lib.lib.dq_qmatrix_pack(None, C.byref(params) if params else None, ptr, rows,
                                          cols, cols, None, None, C.byref(out)),
                  "dq_qmatrix_pack")
        return cls(lib, out)

    def shape(self):
        r, c = C.c_int64(), C.c_int64()
        self.L.check(self.L.lib.dq_qmatrix_layout(self.h, C.byref(r), C.byref(c), None, None,
                                                  None, None, None), "dq_qmatrix_layout")
        return r.value, c.value

    def dequantize(self, like=None):
        rows, cols = self.shape()
        out = array("f", bytes(4 * rows * cols))
        ptr = C.cast(out.buffer_info()[0], C.POINTER(C.c_float))
        self.L.check(self.L.lib.dq_qmatrix_dequantize(self.h, ptr, cols),
                     "dq_qmatrix_dequantize")
        return _from_buffer(out, rows, cols, like if like is not None else Matrix(0, 0))


class FileWriter(_Handle):
    _free = "dq_file_writer_free"

    def __init__(self, lib):
        out = C.c_void_p()
        lib.check(lib.lib.dq_file_writer_create(None, C.byref(out)), "dq_file_writer_create")
        super().__init__(lib, out)

    def add_metadata(self, key, value):
        self.L.check(self.L.lib.dq_file_writer_add_metadata(self.h, key.encode(),
                                                            value.encode()),
                     "dq_file_writer_add_metadata")

    def add_tensor(self, name, values, shape):
        a, ptr = _vector(values)
        dims = (C.c_int64 * max(len(shape), 1))(*shape)
        self.L.check(self.L.lib.dq_file_writer_add_tensor_f32(self.h, name.encode(), ptr,
                                                              len(shape), dims),
                     "dq_file_writer_add_tensor_f32")

    def add_plan(self, prefix, plan):
        self.L.check(self.L.lib.dq_file_writer_add_plan(self.h, prefix.encode(), plan.h),
                     "dq_file_writer_add_plan")

    def add_qmatrix(self, prefix, q):
        self.L.check(self.L.lib.dq_file_writer_add_qmatrix(self.h, prefix.encode(), q.h),
                     "dq_file_writer_add_qmatrix")

    def to_bytes(self):
        n = C.c_size_t()
        self.L.check(self.L.lib.dq_file_writer_to_buffer(self.h, None, 0, C.byref(n)),
                     "dq_file_writer_to_buffer")
        buf = C.create_string_buffer(n.value)
        self.L.check(self.L.lib.dq_file_writer_to_buffer(self.h, buf, n.value, C.byref(n)),
                     "dq_file_writer_to_buffer")
        return buf.raw[:n.value]

    def save(self, path):
        self.L.check(self.L.lib.dq_file_writer_save(self.h, os.fsencode(path)),
                     "dq_file_writer_save")


class FileReader(_Handle):
    _free = "dq_file_reader_free"

    def __init__(self, lib, path=None, data=None):
        out = C.c_void_p()
        if path is not None:
            lib.check(lib.lib.dq_file_reader_open(None, None, os.fsencode(path), C.byref(out)),
                      "dq_file_reader_open")
        else:  # the library copies the bytes (no DQ_FILE_F_BORROW), so they may go away
            lib.check(lib.lib.dq_file_reader_from_buffer(None, None, data, len(data),
                                                         C.byref(out)),
                      "dq_file_reader_from_buffer")
        super().__init__(lib, out)

    def metadata(self, key):
        n = C.c_size_t()
        self.L.check(self.L.lib.dq_file_reader_metadata(self.h, key.encode(), None, 0,
                                                        C.byref(n)), "dq_file_reader_metadata")
        buf = C.create_string_buffer(n.value + 1)
        self.L.check(self.L.lib.dq_file_reader_metadata(self.h, key.encode(), buf, n.value + 1,
                                                        C.byref(n)), "dq_file_reader_metadata")
        return buf.value.decode()

    def tensor(self, name):
        dtype, ndim = C.c_int32(), C.c_int32()
        shape = (C.c_int64 * DQ_FILE_MAX_DIMS)()
        self.L.check(self.L.lib.dq_file_reader_tensor_info(self.h, name.encode(), C.byref(dtype),
                                                           C.byref(ndim), shape),
                     "dq_file_reader_tensor_info")
        dims = list(shape[:ndim.value])
        count = 1
        for d in dims:
            count *= d
        out = array("f", bytes(4 * count))
        ptr = C.cast(out.buffer_info()[0], C.POINTER(C.c_float))
        self.L.check(self.L.lib.dq_file_reader_get_tensor_f32(self.h, name.encode(), ptr, count),
                     "dq_file_reader_get_tensor_f32")
        return list(out), dims

    def plan(self, prefix):
        out = C.c_void_p()
        self.L.check(self.L.lib.dq_file_reader_get_plan(self.h, None, prefix.encode(),
                                                        C.byref(out)), "dq_file_reader_get_plan")
        return Plan(self.L, out)

    def qmatrix(self, prefix):
        out = C.c_void_p()
        self.L.check(self.L.lib.dq_file_reader_get_qmatrix(self.h, None, prefix.encode(),
                                                           C.byref(out)),
                     "dq_file_reader_get_qmatrix")
        return QMatrix(self.L, out)
