"""A ctypes binding of libduquant: no compiled module, numpy the only dependency.

    import duquant as dq
    lib = dq.Library()                      # $DUQUANT_LIB, else libduquant.so.1 on the search path
    ctx = dq.Context(lib, log=print, log_level=dq.DQ_LOG_INFO, n_threads=2)
    calib = dq.Calibrator(lib, width, ctx=ctx, sample_tokens=256)
    ...

Conventions (those of include/duquant.h):
- Matrices are 2-D numpy float32 arrays, rows = tokens (activations) or output channels
  (weights). Inputs of another dtype or layout are copied to C-contiguous float32; a row-major
  view with a row stride (``a[:, :k]`` of a float32 array) is passed as is, its leading dimension
  taken from the strides. Functions that work in place (``inplace=True``) need a writeable
  float32 array with unit column stride and raise ``ValueError`` otherwise.
- Every object wraps one handle and frees it with its own ``dq_*_free`` on ``close()``, at the
  end of a ``with`` block, or when garbage-collected. Objects keep a reference to what they
  borrow (a layer its plan, everything its context, a layer loaded through a borrowing reader
  that reader's mapping or buffer), so Python never frees those too early.
- Callbacks (log, LWC epochs, the engine's parallel_for) are CFUNCTYPE objects held by the
  object that registered them; exceptions raised in them never unwind through the library.
- Errors raise ``DuquantError`` with ``status`` (the dq_status code), ``name``
  (``dq_status_name``, e.g. "DQ_ERR_SHAPE"), ``function`` and ``log`` (the last error message
  the context's log callback received during the call, or None).
- Params structs are declared once each below, member by member as in the header, and filled by
  their ``dq_*_params_init(byref(p), sizeof(p))``; ``lib.params(PlanParams, block_size=64)``.
- Adding a C function is one line in ``_SIGNATURES``; functions the loaded library lacks (an
  older release) are left out, and calling them raises ``AttributeError``.
"""
import collections
import ctypes as C
import os
import threading

import numpy as np

# ---------------------------------------------------------------------------------------------
# Constants from duquant.h
# ---------------------------------------------------------------------------------------------
DQ_OK = 0
DQ_ERR_INVALID_ARG, DQ_ERR_NOMEM, DQ_ERR_SHAPE, DQ_ERR_BAD_STATE = -1, -2, -3, -4
DQ_ERR_STRUCT_SIZE, DQ_ERR_UNSUPPORTED, DQ_ERR_BLAS, DQ_ERR_FORMAT = -5, -6, -7, -8
DQ_ERR_NONFINITE, DQ_ERR_OVERFLOW, DQ_ERR_BUFFER = -9, -10, -11
DQ_ERR_MISMATCH, DQ_ERR_IO = -12, -13  # since 1.2
DQ_LOG_ERROR, DQ_LOG_WARN, DQ_LOG_INFO, DQ_LOG_DEBUG = 0, 1, 2, 3
DQ_CALIB_SAMPLE_NONE, DQ_CALIB_SAMPLE_FIRST, DQ_CALIB_SAMPLE_SEQ_MEAN = 0, 1, 2
DQ_ROT_METHOD_GREEDY, DQ_ROT_METHOD_HADAMARD, DQ_ROT_METHOD_RANDOM = 0, 1, 2
DQ_ROT_METHOD_RANDOM_HADAMARD = 3  # since 1.2
DQ_ROT_F_ROW_RULE, DQ_ROT_F_PER_BLOCK, DQ_ROT_F_RANDOM_QPRIME, DQ_ROT_F_HADAMARD_BASE = 1, 2, 4, 8
DQ_PLAN_F_SMOOTH, DQ_PLAN_F_ROTATE, DQ_PLAN_F_PERMUTE, DQ_PLAN_F_ROW_RULE = 1, 2, 4, 8
DQ_PLAN_F_PER_BLOCK_R, DQ_PLAN_F_RANDOM_QPRIME, DQ_PLAN_F_HADAMARD_BASE = 16, 32, 64
DQ_PLAN_F_DEFAULT = DQ_PLAN_F_SMOOTH | DQ_PLAN_F_ROTATE | DQ_PLAN_F_PERMUTE
DQ_QUANT_ASYM, DQ_QUANT_SYM = 0, 1
DQ_LWC_F_QUANT_ACT = 1
DQ_REFINE_NONE, DQ_REFINE_DFROT, DQ_REFINE_DARTQUANT = 0, 1, 2
DQ_FILE_F_BORROW = 1
DQ_GPTQ_F_ACT_ORDER, DQ_GPTQ_F_STATIC_GROUPS, DQ_GPTQ_F_CLIP_SEARCH = 1, 2, 4  # since 1.2
DQ_KV_F_ROTATE = 1  # since 1.2
DQ_CONTEXT_F_HALF_MATRICES = 1  # since 1.2
DQ_FILE_F_TRUSTED = 2
DQ_FILE_MAX_DIMS = 8
DQ_DTYPE_F32, DQ_DTYPE_U8, DQ_DTYPE_I64 = 9, 1, 11

# ---------------------------------------------------------------------------------------------
# Callback types and params structs (struct_size first; members in header order)
# ---------------------------------------------------------------------------------------------
_i32, _u32, _i64, _u64, _f32, _sz = C.c_int32, C.c_uint32, C.c_int64, C.c_uint64, C.c_float, \
    C.c_size_t
_vp, _cp = C.c_void_p, C.c_char_p
_fp, _ip, _lp = C.POINTER(_f32), C.POINTER(_i32), C.POINTER(_i64)

ALLOC_FN = C.CFUNCTYPE(_vp, _vp, _sz, _sz)
FREE_FN = C.CFUNCTYPE(None, _vp, _vp)
LOG_FN = C.CFUNCTYPE(None, _vp, _i32, _cp)
LWC_EPOCH_FN = C.CFUNCTYPE(_i32, _vp, _i32, _f32)
TASK_FN = C.CFUNCTYPE(None, _vp, _i32, _i32)  # dq_task_fn, since 1.2
PARALLEL_FN = C.CFUNCTYPE(None, _vp, _vp, _vp, _i32)  # dq_parallel_fn (fn as an address)


class _Params(C.Structure):
    _init = None  # name of the dq_*_params_init function


class ContextParams(_Params):
    _init = "dq_context_params_init"
    _fields_ = [("struct_size", _u32), ("flags", _u32), ("alloc", ALLOC_FN), ("free", FREE_FN),
                ("alloc_user", _vp), ("log", LOG_FN), ("log_user", _vp), ("log_level", _i32),
                ("n_threads", _i32),
                ("parallel_for", PARALLEL_FN), ("parallel_user", _vp)]  # since 1.2


class CalibParams(_Params):
    _init = "dq_calib_params_init"
    _fields_ = [("struct_size", _u32), ("flags", _u32), ("sample_tokens", _i64),
                ("sample_mode", _i32)]


class RotationParams(_Params):
    _init = "dq_rotation_params_init"
    _fields_ = [("struct_size", _u32), ("flags", _u32), ("seed", _u64), ("qprime", _fp),
                ("method", _i32), ("block_size", _i32), ("max_steps", _i32)]


class RefineParams(_Params):
    _init = "dq_refine_params_init"
    _fields_ = [("struct_size", _u32), ("flags", _u32), ("seed", _u64), ("method", _i32),
                ("iterations", _i32), ("learning_rate", _f32), ("weight_exponent", _f32),
                ("batch_rows", _i64), ("act_bits", _i32), ("act_scheme", _i32),
                ("act_clip_ratio", _f32)]


class PlanParams(_Params):
    _init = "dq_plan_params_init"
    _fields_ = [("struct_size", _u32), ("flags", _u32), ("seed", _u64), ("method", _i32),
                ("block_size", _i32), ("max_rotation_step", _i32), ("permutation_times", _i32),
                ("smooth_alpha", _f32), ("refine", C.POINTER(RefineParams))]


class QuantParams(_Params):
    _init = "dq_quant_params_init"
    _fields_ = [("struct_size", _u32), ("flags", _u32), ("bits", _i32), ("scheme", _i32),
                ("group_size", _i32), ("clip_ratio", _f32),
                ("plan_fingerprint", _u64)]  # since 1.2


class LwcParams(_Params):
    _init = "dq_lwc_params_init"
    _fields_ = [("struct_size", _u32), ("flags", _u32), ("seed", _u64), ("epochs", _i32),
                ("batch_tokens", _i32), ("learning_rate", _f32), ("init_value", _f32),
                ("act_bits", _i32), ("act_scheme", _i32), ("act_clip_ratio", _f32),
                ("on_epoch", LWC_EPOCH_FN), ("on_epoch_user", _vp)]


class LinearParams(_Params):
    _init = "dq_linear_params_init"
    _fields_ = [("struct_size", _u32), ("flags", _u32), ("act_bits", _i32),
                ("act_scheme", _i32), ("act_clip_ratio", _f32), ("act_group_size", _i32)]


class FileParams(_Params):
    _init = "dq_file_params_init"
    _fields_ = [("struct_size", _u32), ("flags", _u32), ("max_header_bytes", _u64),
                ("max_alloc_bytes", _u64)]


class GptqParams(_Params):  # since 1.2
    _init = "dq_gptq_params_init"
    _fields_ = [("struct_size", _u32), ("flags", _u32), ("damp", _f32), ("block_size", _i32),
                ("clip_grid", _i32), ("clip_max_shrink", _f32), ("clip_norm", _f32)]


class KvParams(_Params):  # since 1.2
    _init = "dq_kv_params_init"
    _fields_ = [("struct_size", _u32), ("flags", _u32), ("bits", _i32), ("head_size", _i32),
                ("n_heads", _i32), ("clip_ratio", _f32)]


_PARAMS = (ContextParams, CalibParams, RotationParams, RefineParams, PlanParams, QuantParams,
           LwcParams, LinearParams, FileParams, GptqParams, KvParams)

# ---------------------------------------------------------------------------------------------
# Signatures: one line per C function, name: (result type, argument types)
# ---------------------------------------------------------------------------------------------
_st = _i32
_SIGNATURES = {
    "dq_version_number": (_i32, []),
    "dq_version_string": (_cp, []),
    "dq_status_name": (_cp, [_st]),
    "dq_status_string": (_cp, [_st]),
    "dq_context_create": (_st, [_vp, C.POINTER(_vp)]),
    "dq_context_free": (None, [_vp]),
    "dq_context_parallel": (_st, [_vp, TASK_FN, _vp, _i32]),
    "dq_calib_create": (_st, [_vp, _vp, _i64, C.POINTER(_vp)]),
    "dq_calib_free": (None, [_vp]),
    "dq_calib_observe": (_st, [_vp, _fp, _i64, _i64, _i64]),
    "dq_calib_merge": (_st, [_vp, _vp]),
    "dq_calib_tokens": (_st, [_vp, _lp]),
    "dq_calib_absmax": (_st, [_vp, _fp, _i64]),
    "dq_calib_minmax": (_st, [_vp, _fp, _fp, _i64]),
    "dq_calib_sample": (_st, [_vp, _fp, _i64, _lp]),
    "dq_smooth_factors": (_st, [_fp, _fp, _i64, _f32, _fp]),
    "dq_smooth_weight_absmax": (_st, [_fp, _i64, _i64, _i64, _i32, _fp]),
    "dq_rotation_create": (_st, [_vp, _vp, _fp, _i64, _i64, _i64, C.POINTER(_vp)]),
    "dq_rotation_from_matrices": (_st, [_vp, _i64, _i32, _i32, _fp, _i64, C.POINTER(_vp)]),
    "dq_rotation_free": (None, [_vp]),
    "dq_rotation_layout": (_st, [_vp, _lp, _ip, _lp, _lp]),
    "dq_rotation_block": (_st, [_vp, _i64, _ip, _lp]),
    "dq_rotation_matrix": (_st, [_vp, _i64, _fp, _i64, _ip]),
    "dq_rotation_trace": (_st, [_vp, _i64, _ip, _ip, _lp, _ip, _fp, _i64]),
    "dq_rotation_apply": (_st, [_vp, _fp, _i64, _i64, _i64]),
    "dq_rotation_base": (_st, [_i32, _fp, _fp, _i64]),
    "dq_rotation_hadamard": (_st, [_i32, _fp, _i64]),
    "dq_rotation_random_orthogonal": (_st, [_i32, _u64, _fp, _i64]),
    "dq_rotation_refine": (_st, [_vp, _vp, _vp, _fp, _i64, _i64, _i64, C.POINTER(_vp)]),
    "dq_permutation_zigzag": (_st, [_fp, _i64, _i32, _lp]),
    "dq_plan_build": (_st, [_vp, _vp, _vp, _fp, _i64, C.POINTER(_vp)]),
    "dq_plan_build_from_sample": (_st, [_vp, _vp, _fp, _fp, _i64, _i64, _i64, _fp,
                                        C.POINTER(_vp)]),
    "dq_plan_assemble": (_st, [_vp, _i64, _fp, _i32, C.POINTER(_vp), C.POINTER(_lp),
                               C.POINTER(_vp)]),
    "dq_plan_free": (None, [_vp]),
    "dq_plan_width": (_st, [_vp, _lp]),
    "dq_plan_workspace_size": (_st, [_vp, _i64, C.POINTER(_sz)]),
    "dq_plan_apply_act": (_st, [_vp, _fp, _i64, _i64, _i64, _vp, _sz]),
    "dq_plan_apply_act_to": (_st, [_vp, _fp, _i64, _i64, _i64, _fp, _i64, _vp, _sz]),
    "dq_plan_transform_weight": (_st, [_vp, _fp, _i64, _i64, _i64]),
    "dq_plan_layout": (_st, [_vp, _ip, _ip]),
    "dq_plan_smooth_scales": (_st, [_vp, _fp, _i64]),
    "dq_plan_rotation": (_st, [_vp, _i32, C.POINTER(_vp)]),
    "dq_plan_permutation": (_st, [_vp, _i32, _lp, _i64]),
    "dq_int4_packed_size": (_sz, [_i64]),
    "dq_int4_pack": (_st, [_ip, _i64, C.POINTER(C.c_uint8), _sz]),
    "dq_int4_unpack": (_st, [C.POINTER(C.c_uint8), _sz, _i64, _i32, _ip]),
    "dq_qmatrix_pack": (_st, [_vp, _vp, _fp, _i64, _i64, _i64, _fp, _fp, C.POINTER(_vp)]),
    "dq_qmatrix_free": (None, [_vp]),
    "dq_qmatrix_layout": (_st, [_vp, _lp, _lp, _ip, _ip, _ip, _lp, C.POINTER(_sz)]),
    "dq_qmatrix_view": (_st, [_vp, C.POINTER(C.POINTER(C.c_uint8)), C.POINTER(_sz),
                              C.POINTER(_fp), C.POINTER(_fp)]),
    "dq_qmatrix_unpack_codes": (_st, [_vp, _ip, _i64]),
    "dq_qmatrix_dequantize": (_st, [_vp, _fp, _i64]),
    "dq_lwc_create": (_st, [_vp, _vp, _vp, _fp, _i64, _i64, _i64, _fp, _i64, _i64,
                            C.POINTER(_vp)]),
    "dq_lwc_free": (None, [_vp]),
    "dq_lwc_train": (_st, [_vp, _fp]),
    "dq_lwc_loss": (_st, [_vp, _fp, _fp, _fp, _i64]),
    "dq_lwc_layout": (_st, [_vp, _lp, _ip]),
    "dq_lwc_get_params": (_st, [_vp, _fp, _fp, _i64]),
    "dq_lwc_set_params": (_st, [_vp, _fp, _fp, _i64]),
    "dq_lwc_best": (_st, [_vp, _fp, _fp, _i64, _fp]),
    "dq_lwc_factors": (_st, [_vp, _fp, _fp, _i64]),
    "dq_linear_create": (_st, [_vp, _vp, _vp, _vp, _fp, C.POINTER(_vp)]),
    "dq_linear_free": (None, [_vp]),
    "dq_linear_create_like": (_st, [_vp, _vp, _vp, C.POINTER(_vp)]),  # since 1.2
    "dq_linear_layout": (_st, [_vp, _lp, _lp]),
    "dq_linear_workspace_size": (_st, [_vp, _i64, C.POINTER(_sz)]),
    "dq_linear_forward": (_st, [_vp, _fp, _i64, _i64, _i64, _fp, _i64, _vp, _sz]),
    "dq_file_writer_create": (_st, [_vp, C.POINTER(_vp)]),
    "dq_file_writer_free": (None, [_vp]),
    "dq_file_writer_add_metadata": (_st, [_vp, _cp, _cp]),
    "dq_file_writer_add_tensor_f32": (_st, [_vp, _cp, _fp, _i32, _lp]),
    "dq_file_writer_add_plan": (_st, [_vp, _cp, _vp]),
    "dq_file_writer_add_qmatrix": (_st, [_vp, _cp, _vp]),
    "dq_file_writer_add_linear": (_st, [_vp, _cp, _vp, _cp, _vp, _fp]),
    "dq_file_writer_to_buffer": (_st, [_vp, _vp, _sz, C.POINTER(_sz)]),
    "dq_file_writer_save": (_st, [_vp, _cp]),
    "dq_file_reader_open": (_st, [_vp, _vp, _cp, C.POINTER(_vp)]),
    "dq_file_reader_from_buffer": (_st, [_vp, _vp, _vp, _sz, C.POINTER(_vp)]),
    "dq_file_reader_free": (None, [_vp]),
    "dq_file_reader_count": (_st, [_vp, _lp, _lp]),
    "dq_file_reader_tensor_name": (_st, [_vp, _i64, _cp, _sz, C.POINTER(_sz)]),
    "dq_file_reader_metadata_key": (_st, [_vp, _i64, _cp, _sz, C.POINTER(_sz)]),
    "dq_file_reader_metadata": (_st, [_vp, _cp, _cp, _sz, C.POINTER(_sz)]),
    "dq_file_reader_tensor_info": (_st, [_vp, _cp, _ip, _ip, _lp]),
    "dq_file_reader_get_tensor_f32": (_st, [_vp, _cp, _fp, _i64]),
    "dq_file_reader_get_plan": (_st, [_vp, _vp, _cp, C.POINTER(_vp)]),
    "dq_file_reader_get_qmatrix": (_st, [_vp, _vp, _cp, C.POINTER(_vp)]),
    "dq_file_reader_get_linear": (_st, [_vp, _vp, _cp, _vp, C.POINTER(_vp)]),
    # since 1.2
    "dq_plan_fingerprint": (_st, [_vp, C.POINTER(_u64)]),
    "dq_qmatrix_plan_fingerprint": (_st, [_vp, C.POINTER(_u64)]),
    "dq_qmatrix_pack_transformed": (_st, [_vp, _vp, _vp, _fp, _i64, _i64, _i64, _fp, _fp,
                                          C.POINTER(_vp)]),
    "dq_qmatrix_pack_clipped": (_st, [_vp, _vp, _fp, _i64, _i64, _i64, _fp, _fp, _i64,
                                      C.POINTER(_vp)]),
    "dq_linear_group_workspace_size": (_st, [C.POINTER(_vp), _i32, _i64, C.POINTER(_sz)]),
    "dq_linear_forward_group": (_st, [C.POINTER(_vp), _i32, _fp, _i64, _i64, _i64,
                                      C.POINTER(_fp), _lp, _i32, _vp, _sz]),
    "dq_file_writer_add_linear_layer": (_st, [_vp, _cp, _vp, _cp]),
    "dq_hessian_create": (_st, [_vp, _vp, _i64, C.POINTER(_vp)]),
    "dq_hessian_free": (None, [_vp]),
    "dq_hessian_observe": (_st, [_vp, _fp, _i64, _i64, _i64]),
    "dq_hessian_merge": (_st, [_vp, _vp]),
    "dq_hessian_tokens": (_st, [_vp, _lp]),
    "dq_hessian_matrix": (_st, [_vp, C.POINTER(C.c_double), _i64]),
    "dq_gptq_pack": (_st, [_vp, _vp, _vp, _vp, _fp, _i64, _i64, _i64, _fp, _fp, _i64,
                           C.POINTER(_vp)]),
    "dq_kv_size": (_st, [_vp, _i64, C.POINTER(_sz)]),
    "dq_kv_rotate": (_st, [_vp, _fp, _i64, _i64]),
    "dq_kv_quantize": (_st, [_vp, _fp, _i64, _i64, _vp, _sz, _i64]),
    "dq_kv_dequantize": (_st, [_vp, _vp, _sz, _i32, _i64, _i64, _fp, _i64]),
}
_SIGNATURES.update({cls._init: (_st, [_vp, _sz]) for cls in _PARAMS})


class DuquantError(RuntimeError):
    """A library call returned an error: status (code), name, function, log (message or None)."""

    def __init__(self, status, name, function, log=None):
        text = "%s failed: %s (%d)" % (function, name, status)
        super().__init__(text + (": " + log if log else ""))
        self.status, self.name, self.function, self.log = status, name, function, log


# ---------------------------------------------------------------------------------------------
# numpy <-> C
# ---------------------------------------------------------------------------------------------
def _fptr(a):
    return a.ctypes.data_as(_fp) if a is not None else None


def _matrix(x, name="x", cols=None):
    """(array, rows, cols, ld) for a read-only matrix argument (copied when the layout needs it)."""
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError("%s: expected a 2-D matrix, got shape %s" % (name, a.shape))
    if cols is not None and a.shape[1] != cols:
        raise ValueError("%s: expected %d columns, got %d" % (name, cols, a.shape[1]))
    if not _strided_ok(a):
        a = np.ascontiguousarray(a, dtype=np.float32)
    return a, a.shape[0], a.shape[1], _ld(a)


def _strided_ok(a):
    return (a.dtype == np.float32 and a.strides[1] == 4 and a.strides[0] > 0
            and a.strides[0] % 4 == 0 and a.strides[0] >= 4 * a.shape[1])


def _ld(a):
    return a.strides[0] // 4 if a.shape[0] > 1 else max(a.shape[1], 1)


def _inplace(x, name="x"):
    """(rows, cols, ld) of a matrix the library writes into."""
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError("%s: expected a 2-D numpy array" % name)
    if not ((_strided_ok(x) or (x.size == 0 and x.dtype == np.float32))
            and x.flags.writeable):
        raise ValueError("%s: in place needs a writeable float32 array with unit column stride "
                         "(dtype %s, strides %s)" % (name, x.dtype, x.strides))
    return x.shape[0], x.shape[1], _ld(x)


def _vector(v, n=None, dtype=np.float32, name="vector"):
    if v is None:
        return None
    a = np.ascontiguousarray(v, dtype=dtype).reshape(-1)
    if n is not None and a.size != n:
        raise ValueError("%s: expected %d values, got %d" % (name, n, a.size))
    return a


def _text(s):
    return s.encode() if isinstance(s, str) else s


# ---------------------------------------------------------------------------------------------
# Library
# ---------------------------------------------------------------------------------------------
class Library:
    """The loaded shared object: path, else $DUQUANT_LIB, else libduquant.so.1."""

    def __init__(self, path=None):
        path = path or os.environ.get("DUQUANT_LIB") or "libduquant.so.1"
        self.path = path
        self.lib = C.CDLL(path)
        self.missing = []
        for name, (res, args) in _SIGNATURES.items():
            try:
                f = getattr(self.lib, name)
            except AttributeError:
                self.missing.append(name)
                continue
            f.restype, f.argtypes = res, args

    def call(self, fname, *args, ctx=None):
        """Call a status-returning function; raise DuquantError when it fails."""
        tls = ctx._tls if ctx is not None else None
        if tls is not None:
            tls.error = None
        try:
            st = getattr(self.lib, fname)(*args)
        except C.ArgumentError as e:  # e.g. a closed handle
            raise ValueError("%s: %s" % (fname, e)) from None
        if st != DQ_OK:
            raise DuquantError(st, self.status_name(st), fname,
                               tls.error if tls is not None else None)
        return st

    def version(self):
        return self.lib.dq_version_string().decode()

    def version_number(self):
        return self.lib.dq_version_number()

    def status_name(self, st):
        return self.lib.dq_status_name(st).decode()

    def status_string(self, st):
        return self.lib.dq_status_string(st).decode()

    def params(self, cls, **kw):
        """A params struct filled by its *_params_init, then the given members set."""
        p = cls()
        self.call(cls._init, C.byref(p), C.sizeof(p))
        names = {f[0] for f in cls._fields_}
        for k, v in kw.items():
            if k not in names or k == "struct_size":
                raise AttributeError("%s has no settable member %r" % (cls.__name__, k))
            setattr(p, k, v)
        return p

    def _params_arg(self, cls, p, kw):
        """byref(params) for p (a struct, or None) plus keyword members; None when neither."""
        if p is None and not kw:
            return None, None
        if p is None:
            p = self.params(cls, **kw)
        elif kw:
            raise TypeError("pass either a params struct or keyword members, not both")
        if not isinstance(p, cls):
            raise TypeError("expected %s, got %s" % (cls.__name__, type(p).__name__))
        return p, C.byref(p)

    # Pure functions -----------------------------------------------------------------------------
    def smooth_factors(self, act_absmax, w_absmax, alpha):
        a = _vector(act_absmax, name="act_absmax")
        w = _vector(w_absmax, a.size, name="w_absmax")
        s = np.empty(a.size, np.float32)
        self.call("dq_smooth_factors", _fptr(a), _fptr(w), a.size, alpha, _fptr(s))
        return s

    def weight_absmax(self, w, accumulate=None):
        """Per-input-channel max |W|; with accumulate (an earlier result) the max with it."""
        a, rows, cols, ld = _matrix(w, "w")
        out = (np.array(_vector(accumulate, cols, name="accumulate")) if accumulate is not None
               else np.empty(cols, np.float32))
        self.call("dq_smooth_weight_absmax", _fptr(a), rows, cols, ld,
                  int(accumulate is not None), _fptr(out))
        return out

    def zigzag(self, key, block_size):
        k = _vector(key, name="key")
        perm = np.empty(k.size, np.int64)
        self.call("dq_permutation_zigzag", _fptr(k), k.size, block_size,
                  perm.ctypes.data_as(_lp))
        return perm

    def rotation_base(self, n, qprime=None):
        q = _vector(qprime, (n - 1) * (n - 1), name="qprime")
        out = np.empty((n, n), np.float32)
        self.call("dq_rotation_base", n, _fptr(q), _fptr(out), n)
        return out

    def hadamard(self, n):
        out = np.empty((n, n), np.float32)
        self.call("dq_rotation_hadamard", n, _fptr(out), n)
        return out

    def random_orthogonal(self, n, seed):
        out = np.empty((n, n), np.float32)
        self.call("dq_rotation_random_orthogonal", n, seed, _fptr(out), n)
        return out

    def int4_packed_size(self, n):
        return self.lib.dq_int4_packed_size(n)

    def int4_pack(self, codes):
        c = _vector(codes, dtype=np.int32, name="codes")
        out = np.zeros(self.int4_packed_size(c.size), np.uint8)
        self.call("dq_int4_pack", c.ctypes.data_as(_ip), c.size,
                  out.ctypes.data_as(C.POINTER(C.c_uint8)), out.size)
        return out

    def int4_unpack(self, packed, n, signed=False):
        b = _vector(packed, dtype=np.uint8, name="packed")
        out = np.empty(n, np.int32)
        self.call("dq_int4_unpack", b.ctypes.data_as(C.POINTER(C.c_uint8)), b.size, n,
                  int(signed), out.ctypes.data_as(_ip))
        return out


# ---------------------------------------------------------------------------------------------
# Handles
# ---------------------------------------------------------------------------------------------
class _Handle:
    """One C handle, freed once by _free (None: borrowed from _owner, never freed here)."""
    _free = None
    h = None

    def __init__(self, lib, handle, ctx=None, owner=None):
        self.L, self.ctx, self._owner = lib, ctx, owner
        self.h = handle.value if isinstance(handle, C.c_void_p) else handle

    def _call(self, fname, *args):
        if not self.h:
            raise ValueError("%s is closed" % type(self).__name__)
        return self.L.call(fname, *args, ctx=self.ctx)

    def close(self):
        h, self.h = self.h, None
        if h and self._free and self._owner is None:
            getattr(self.L.lib, self._free)(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: ctypes may already be gone
            pass

    @property
    def _as_parameter_(self):
        if not self.h:
            raise ValueError("%s is closed" % type(self).__name__)
        return C.c_void_p(self.h)


def _create(lib, fname, *args, ctx=None):
    out = C.c_void_p()
    lib.call(fname, *args, C.byref(out), ctx=ctx)
    return out


class Context(_Handle):
    """Logging and thread policy (default allocator). log: a callable (level, message).

    parallel_for (since 1.2): a callable (run_task, n_tasks) that runs the library's parallel
    loops on the engine's threads instead of the context's pool: it must call run_task(t) once
    for every t in range(n_tasks), on any threads in any order, and return when all returned,
    e.g. ``lambda run, n: list(executor.map(run, range(n)))``. The library may call it from
    inside a task (nested loops): a fixed-size pool must then not wait on itself. n_threads is
    the most tasks of one loop. Tasks the callable left out (or did not reach because it
    raised) run on the calling thread before the library continues; parallel_errors keeps
    what it raised. Results are the same bit for bit as with the context's own pool.

    flags (since 1.2): DQ_CONTEXT_F_* (DQ_CONTEXT_F_HALF_MATRICES: layers on plans made or
    loaded with this context read half-precision copies of the rotation matrices)."""
    _free = "dq_context_free"

    def __init__(self, lib, log=None, log_level=DQ_LOG_WARN, n_threads=0, keep=64,
                 parallel_for=None, flags=0):
        self.messages = collections.deque(maxlen=keep)  # (level, message), newest last
        self.parallel_errors = collections.deque(maxlen=keep)
        self._tls = threading.local()
        self._user_log = log
        self._log_cb = LOG_FN(self._on_log)  # alive as long as this object (objects keep it)
        p = lib.params(ContextParams, log_level=log_level, n_threads=n_threads, flags=flags)
        p.log = self._log_cb
        self._parallel = parallel_for
        self._parallel_cb = None
        if parallel_for is not None:
            self._parallel_cb = PARALLEL_FN(self._on_parallel)  # alive as long as the context
            p.parallel_for = self._parallel_cb
        super().__init__(lib, _create(lib, "dq_context_create", C.byref(p)), ctx=self)
        self.ctx = None  # no cycle: calls on the context itself need no capture

    def _on_parallel(self, user, fn, task_arg, n_tasks):
        try:
            task = TASK_FN(fn)
            started, done, cond = [False] * n_tasks, [0], threading.Condition()

            def run_task(t):
                t = int(t)
                with cond:
                    if not 0 <= t < n_tasks or started[t]:
                        raise ValueError("run_task(%d): not a task left of %d" % (t, n_tasks))
                    started[t] = True
                try:
                    task(task_arg, t, n_tasks)  # releases the GIL while the task runs
                finally:
                    with cond:
                        done[0] += 1
                        cond.notify_all()
            try:
                self._parallel(run_task, n_tasks)
            except BaseException as e:  # never unwind through the library
                self.parallel_errors.append(e)
            for t in range(n_tasks):  # the contract: every task runs before the loop returns
                if not started[t]:
                    run_task(t)
            with cond:  # and has returned (a callable that raised may have left some running)
                cond.wait_for(lambda: done[0] == n_tasks)
        except BaseException as e:
            self.parallel_errors.append(e)

    def parallel(self, fn, n_tasks):
        """Run fn(t, n_tasks) once for every t in range(n_tasks) on the context's threads
        (dq_context_parallel, since 1.2) and return when all have returned. Tasks run at once
        only while they release the GIL (numpy, library calls). What a task raises is kept
        from the library; the first such exception is raised here once every task returned."""
        errors = []

        def task(arg, t, n):
            try:
                fn(t, n)
            except BaseException as e:  # never unwind through the library
                errors.append(e)
        cb = TASK_FN(task)  # alive until the call returns
        self.L.call("dq_context_parallel", self, cb, None, n_tasks, ctx=self)
        if errors:
            raise errors[0]

    def _on_log(self, user, level, msg):
        try:
            text = msg.decode("utf-8", "replace") if msg else ""
            self.messages.append((level, text))
            if level == DQ_LOG_ERROR:
                self._tls.error = text
            if self._user_log is not None:
                self._user_log(level, text)
        except BaseException:  # never unwind through the library
            pass

    @property
    def _tls_error(self):
        return getattr(self._tls, "error", None)


class Calibrator(_Handle):
    _free = "dq_calib_free"

    def __init__(self, lib, cols, ctx=None, params=None, **kw):
        self._p, pp = lib._params_arg(CalibParams, params, kw)
        self.cols = cols
        super().__init__(lib, _create(lib, "dq_calib_create", ctx, pp, cols, ctx=ctx),
                         ctx)

    def observe(self, x):
        a, rows, cols, ld = _matrix(x, "x")
        self._call("dq_calib_observe", self, _fptr(a), rows, cols, ld)

    def merge(self, other):
        self._call("dq_calib_merge", self, other)

    def tokens(self):
        n = _i64()
        self._call("dq_calib_tokens", self, C.byref(n))
        return n.value

    def absmax(self):
        out = np.empty(self.cols, np.float32)
        self._call("dq_calib_absmax", self, _fptr(out), self.cols)
        return out

    def minmax(self):
        lo, hi = np.empty(self.cols, np.float32), np.empty(self.cols, np.float32)
        self._call("dq_calib_minmax", self, _fptr(lo), _fptr(hi), self.cols)
        return lo, hi

    def sample(self):
        """The calibration sample (rows x cols), or None when there is none yet."""
        rows = _i64()
        self._call("dq_calib_sample", self, None, self.cols, C.byref(rows))
        if rows.value == 0:
            return None
        out = np.empty((rows.value, self.cols), np.float32)
        self._call("dq_calib_sample", self, _fptr(out), self.cols, C.byref(rows))
        return out


class Rotation(_Handle):
    _free = "dq_rotation_free"

    def __init__(self, lib, cols, x=None, ctx=None, params=None, qprime=None, **kw):
        """Block rotations for cols channels; GREEDY searches on the sample x."""
        p, pp = lib._params_arg(RotationParams, params, kw)
        if qprime is not None:
            if p is None:
                p = lib.params(RotationParams)
            q = _vector(qprime, (p.block_size - 1) ** 2, name="qprime")
            p.qprime = _fptr(q)
            pp = C.byref(p)
        xa, rows, xc, ld = _matrix(x, "x", cols) if x is not None else (None, 0, cols, cols)
        super().__init__(lib, _create(lib, "dq_rotation_create", ctx, pp, _fptr(xa),
                                      rows, cols, ld, ctx=ctx), ctx)

    @classmethod
    def _wrap(cls, lib, handle, ctx=None, owner=None):
        r = cls.__new__(cls)
        _Handle.__init__(r, lib, handle, ctx, owner)
        return r

    @classmethod
    def from_matrices(cls, lib, cols, block_size, matrices, per_block=False, ctx=None):
        """matrices: a list of square arrays laid out as dq_rotation_create lays them out."""
        data = np.concatenate([_vector(m, name="matrix") for m in matrices])
        return cls._wrap(lib, _create(lib, "dq_rotation_from_matrices", ctx, cols,
                                      block_size, int(per_block), _fptr(data), data.size,
                                      ctx=ctx), ctx)

    def layout(self):
        """(cols, block_size, n_blocks, n_matrices)."""
        c, b, nb, nm = _i64(), _i32(), _i64(), _i64()
        self._call("dq_rotation_layout", self, C.byref(c), C.byref(b), C.byref(nb), C.byref(nm))
        return c.value, b.value, nb.value, nm.value

    def block(self, b):
        """(length, matrix index) of block b."""
        size, m = _i32(), _i64()
        self._call("dq_rotation_block", self, b, C.byref(size), C.byref(m))
        return size.value, m.value

    def matrix(self, m):
        size = _i32()
        self._call("dq_rotation_matrix", self, m, None, 0, C.byref(size))
        out = np.empty((size.value, size.value), np.float32)
        self._call("dq_rotation_matrix", self, m, _fptr(out), size.value, C.byref(size))
        return out

    def dense(self):
        """The whole cols x cols block-diagonal matrix."""
        cols, _, nb, _ = self.layout()
        out, at = np.zeros((cols, cols), np.float32), 0
        for b in range(nb):
            size, m = self.block(b)
            out[at:at + size, at:at + size] = self.matrix(m)
            at += size
        return out

    def trace(self, m):
        """Greedy search record: dict steps, selected, ids, swapped, peaks."""
        steps, sel = _i32(), _i32()
        try:
            self._call("dq_rotation_trace", self, m, C.byref(steps), C.byref(sel), None, None,
                       None, 0)
        except DuquantError as e:
            if e.status != DQ_ERR_BUFFER:
                raise
        n = steps.value + 1
        ids, sw, pk = np.empty(n, np.int64), np.empty(n, np.int32), np.empty(n, np.float32)
        self._call("dq_rotation_trace", self, m, C.byref(steps), C.byref(sel),
                   ids.ctypes.data_as(_lp), sw.ctypes.data_as(_ip), _fptr(pk), n)
        return dict(steps=steps.value, selected=sel.value, ids=ids, swapped=sw, peaks=pk)

    def apply(self, x, inplace=False):
        """x * blockdiag(R_1..R_K): a new array, or x itself with inplace=True."""
        if not inplace:
            x = np.array(_matrix(x, "x")[0], dtype=np.float32, order="C")
        rows, cols, ld = _inplace(x)
        self._call("dq_rotation_apply", self, _fptr(x), rows, cols, ld)
        return x

    def refine(self, x, params=None, ctx=None, **kw):
        """A new rotation refined on the sample x (DFRot or DartQuant, dq_rotation_refine)."""
        p, pp = self.L._params_arg(RefineParams, params, kw)
        a, rows, cols, ld = _matrix(x, "x")
        return Rotation._wrap(self.L, _create(self.L, "dq_rotation_refine", ctx, pp,
                                              self, _fptr(a), rows, cols, ld, ctx=ctx), ctx)


class Plan(_Handle):
    _free = "dq_plan_free"

    @classmethod
    def _wrap(cls, lib, handle, ctx=None):
        pl = cls.__new__(cls)
        _Handle.__init__(pl, lib, handle, ctx)
        return pl

    @classmethod
    def build(cls, lib, calib, w_absmax=None, params=None, ctx=None, cols=None, **kw):
        """From a Calibrator (or None for plans that need no statistics, then give cols)."""
        p, pp = lib._params_arg(PlanParams, params, kw)
        cols = calib.cols if calib is not None else cols
        wa = _vector(w_absmax, cols, name="w_absmax")
        return cls._wrap(lib, _create(lib, "dq_plan_build", ctx, pp, calib, _fptr(wa),
                                      cols, ctx=ctx), ctx)

    @classmethod
    def from_sample(cls, lib, sample, w_absmax=None, params=None, act_absmax=None, ctx=None,
                    **kw):
        p, pp = lib._params_arg(PlanParams, params, kw)
        a, rows, cols, ld = _matrix(sample, "sample")
        wa = _vector(w_absmax, cols, name="w_absmax")
        aa = _vector(act_absmax, cols, name="act_absmax")
        return cls._wrap(lib, _create(lib, "dq_plan_build_from_sample", ctx, pp,
                                      _fptr(aa), _fptr(a), rows, cols, ld, _fptr(wa), ctx=ctx),
                         ctx)

    @classmethod
    def assemble(cls, lib, cols, smooth=None, rotations=(), permutations=(), ctx=None):
        """G = diag(smooth)^-1 R_0 P_0 ... R_{k-1}; entries of rotations/permutations may be
        None (identity); len(permutations) == len(rotations) - 1."""
        k = len(rotations)
        if k and len(permutations) != k - 1:
            raise ValueError("need %d permutations for %d rotations" % (k - 1, k))
        s = _vector(smooth, cols, name="smooth")
        rots = (_vp * max(k, 1))(*[r.h if r is not None else None for r in rotations])
        perms = [_vector(q, cols, np.int64, "permutation") if q is not None else None
                 for q in permutations]
        pptr = (_lp * max(k - 1, 1))(*[q.ctypes.data_as(_lp) if q is not None else None
                                       for q in perms])
        return cls._wrap(lib, _create(lib, "dq_plan_assemble", ctx, cols, _fptr(s), k,
                                      rots, pptr, ctx=ctx), ctx)

    def width(self):
        n = _i64()
        self._call("dq_plan_width", self, C.byref(n))
        return n.value

    def workspace_size(self, rows):
        n = _sz()
        self._call("dq_plan_workspace_size", self, rows, C.byref(n))
        return n.value

    def apply_act(self, x, inplace=False, work=None):
        """x * G: a new C-contiguous array (x untouched), or x itself with inplace=True.
        work: optional bytearray/numpy buffer of at least workspace_size(rows) bytes."""
        wptr, wsize = _work(work)
        if inplace:
            rows, cols, ld = _inplace(x)
            self._call("dq_plan_apply_act", self, _fptr(x), rows, cols, ld, wptr, wsize)
            return x
        a, rows, cols, ld = _matrix(x, "x")
        y = np.empty((rows, cols), np.float32)
        self._call("dq_plan_apply_act_to", self, _fptr(a), rows, cols, ld, _fptr(y),
                   max(cols, 1), wptr, wsize)
        return y

    apply = apply_act

    def transform_weight(self, w, inplace=False):
        """W * G^-T: a new array, or w itself with inplace=True."""
        if not inplace:
            w = np.array(_matrix(w, "w")[0], dtype=np.float32, order="C")
        rows, cols, ld = _inplace(w, "w")
        self._call("dq_plan_transform_weight", self, _fptr(w), rows, cols, ld)
        return w

    def fingerprint(self):
        """64-bit hash of the plan's contents (never 0; equal for equal plans). Since 1.2."""
        v = _u64()
        self._call("dq_plan_fingerprint", self, C.byref(v))
        return v.value

    def layout(self):
        """(has_smoothing, n_rotations)."""
        s, n = _i32(), _i32()
        self._call("dq_plan_layout", self, C.byref(s), C.byref(n))
        return bool(s.value), n.value

    def smooth_scales(self):
        n = self.width()
        out = np.empty(n, np.float32)
        self._call("dq_plan_smooth_scales", self, _fptr(out), n)
        return out

    def rotation(self, i):
        """Rotation slot i (borrowed from the plan, which it keeps alive), or None."""
        r = _vp()
        self._call("dq_plan_rotation", self, i, C.byref(r))
        return Rotation._wrap(self.L, r, self.ctx, owner=self) if r.value else None

    def permutation(self, i):
        n = self.width()
        out = np.empty(n, np.int64)
        self._call("dq_plan_permutation", self, i, out.ctypes.data_as(_lp), n)
        return out

    def matrix(self):
        """G as a dense cols x cols float64 matrix, built from the exported parts."""
        k = self.layout()[1]
        g = np.diag(1.0 / self.smooth_scales().astype(np.float64))
        for i in range(k):
            r = self.rotation(i)
            if r is not None:
                g = g @ r.dense().astype(np.float64)
            if i < k - 1:
                g = g[:, self.permutation(i)]  # x_new[:, j] = x[:, perm[j]]
        return g


def _work(work):
    if work is None:
        return None, 0
    b = np.frombuffer(work, dtype=np.uint8)
    return b.ctypes.data_as(_vp), b.size


class QMatrix(_Handle):
    _free = "dq_qmatrix_free"
    Layout = collections.namedtuple("Layout", "rows cols bits scheme group_size groups_per_row "
                                              "row_bytes")

    @classmethod
    def _wrap(cls, lib, handle, ctx=None):
        q = cls.__new__(cls)
        _Handle.__init__(q, lib, handle, ctx)
        return q

    @classmethod
    def pack(cls, lib, w, params=None, clip_hi=None, clip_lo=None, ctx=None, **kw):
        """Quantize w as is. clip_hi/clip_lo: one factor per group (rows x groups_per_row) or
        per row; with a 1.2 library their length goes to the C side (dq_qmatrix_pack_clipped),
        which refuses any other (DQ_ERR_SHAPE)."""
        p, pp = lib._params_arg(QuantParams, params, kw)
        a, rows, cols, ld = _matrix(w, "w")
        hi, lo = _vector(clip_hi, name="clip_hi"), _vector(clip_lo, name="clip_lo")
        if (hi is not None or lo is not None) and "dq_qmatrix_pack_clipped" not in lib.missing:
            return cls.pack_clipped(lib, a, params=p, clip_hi=hi, clip_lo=lo, ctx=ctx)
        return cls._wrap(lib, _create(lib, "dq_qmatrix_pack", ctx, pp, _fptr(a), rows,
                                      cols, ld, _fptr(hi), _fptr(lo), ctx=ctx), ctx)

    @classmethod
    def pack_clipped(cls, lib, w, params=None, clip_hi=None, clip_lo=None, ctx=None, **kw):
        """dq_qmatrix_pack_clipped: the clip arrays with their length (since 1.2). Both given
        arrays must have the same length."""
        p, pp = lib._params_arg(QuantParams, params, kw)
        a, rows, cols, ld = _matrix(w, "w")
        hi, lo = _vector(clip_hi, name="clip_hi"), _vector(clip_lo, name="clip_lo")
        sizes = {v.size for v in (hi, lo) if v is not None}
        if len(sizes) > 1:
            raise ValueError("clip_hi and clip_lo differ in length: %d, %d" % (hi.size, lo.size))
        return cls._wrap(lib, _create(lib, "dq_qmatrix_pack_clipped", ctx, pp, _fptr(a), rows,
                                      cols, ld, _fptr(hi), _fptr(lo),
                                      sizes.pop() if sizes else 0, ctx=ctx), ctx)

    @classmethod
    def gptq(cls, lib, hessian, w, params=None, gptq=None, clip_hi=None, clip_lo=None,
             ctx=None, **kw):
        """dq_gptq_pack (since 1.2): w untransformed when the Hessian has a plan. params: a
        QuantParams (or keyword members); gptq: a GptqParams or a dict of its members.
        clip_hi/clip_lo: one factor per group or per row, both of one length."""
        p, pp = lib._params_arg(QuantParams, params, kw)
        if isinstance(gptq, dict):
            gptq = lib.params(GptqParams, **gptq)
        g, gpp = lib._params_arg(GptqParams, gptq, {})
        a, rows, cols, ld = _matrix(w, "w")
        hi, lo = _vector(clip_hi, name="clip_hi"), _vector(clip_lo, name="clip_lo")
        sizes = {v.size for v in (hi, lo) if v is not None}
        if len(sizes) > 1:
            raise ValueError("clip_hi and clip_lo differ in length: %d, %d" % (hi.size, lo.size))
        return cls._wrap(lib, _create(lib, "dq_gptq_pack", ctx, gpp, pp, hessian, _fptr(a),
                                      rows, cols, ld, _fptr(hi), _fptr(lo),
                                      sizes.pop() if sizes else 0, ctx=ctx), ctx)

    @classmethod
    def pack_transformed(cls, lib, plan, w, params=None, clip_hi=None, clip_lo=None, ctx=None,
                         **kw):
        """Transform a copy of the untransformed w by plan and pack it, recording the plan's
        fingerprint (dq_qmatrix_pack_transformed, since 1.2). clip_hi/clip_lo: one factor per
        group, or per row (repeated for each group here, as the C call reads one per group)."""
        p, pp = lib._params_arg(QuantParams, params, kw)
        a, rows, cols, ld = _matrix(w, "w")
        g = p.group_size if p is not None else 0
        per_row = -(-cols // g) if g > 0 else 1
        clips = []
        for name, v in (("clip_hi", clip_hi), ("clip_lo", clip_lo)):
            v = _vector(v, name=name)
            if v is not None and v.size == rows and per_row > 1:
                v = np.repeat(v, per_row)
            if v is not None and v.size != rows * per_row:
                raise ValueError("%s: expected %d or %d values, got %d"
                                 % (name, rows, rows * per_row, v.size))
            clips.append(v)
        return cls._wrap(lib, _create(lib, "dq_qmatrix_pack_transformed", ctx, pp, plan,
                                      _fptr(a), rows, cols, ld, _fptr(clips[0]),
                                      _fptr(clips[1]), ctx=ctx), ctx)

    def plan_fingerprint(self):
        """The fingerprint of the plan the weights were transformed by; 0 = none recorded."""
        v = _u64()
        self._call("dq_qmatrix_plan_fingerprint", self, C.byref(v))
        return v.value

    def layout(self):
        r, c, b, s, g, gpr, rb = _i64(), _i64(), _i32(), _i32(), _i32(), _i64(), _sz()
        self._call("dq_qmatrix_layout", self, *[C.byref(v) for v in (r, c, b, s, g, gpr, rb)])
        return self.Layout(*[v.value for v in (r, c, b, s, g, gpr, rb)])

    def shape(self):
        lay = self.layout()
        return lay.rows, lay.cols

    def view(self):
        """(packed uint8 rows x row_bytes, scales rows x groups, zeros or None): copies."""
        lay = self.layout()
        packed, nbytes = C.POINTER(C.c_uint8)(), _sz()
        scales, zeros = _fp(), _fp()
        self._call("dq_qmatrix_view", self, C.byref(packed), C.byref(nbytes), C.byref(scales),
                   C.byref(zeros))
        ng = lay.rows * lay.groups_per_row
        shape = (lay.rows, lay.groups_per_row)
        pk = np.ctypeslib.as_array(packed, (nbytes.value,)).copy().reshape(lay.rows, -1)
        sc = np.ctypeslib.as_array(scales, (ng,)).copy().reshape(shape)
        zp = np.ctypeslib.as_array(zeros, (ng,)).copy().reshape(shape) if zeros else None
        return pk, sc, zp

    def unpack_codes(self):
        rows, cols = self.shape()
        out = np.empty((rows, cols), np.int32)
        self._call("dq_qmatrix_unpack_codes", self, out.ctypes.data_as(_ip), cols)
        return out

    def dequantize(self):
        rows, cols = self.shape()
        out = np.empty((rows, cols), np.float32)
        self._call("dq_qmatrix_dequantize", self, _fptr(out), cols)
        return out


class Lwc(_Handle):
    """Learnable weight clipping for one layer: w (rows x cols, transformed) and x (tokens x
    cols, transformed calibration activations) are copied. on_epoch(epoch, loss) may return
    True to stop."""
    _free = "dq_lwc_free"

    def __init__(self, lib, w, x, params=None, wq=None, ctx=None, on_epoch=None, **kw):
        p, pp = lib._params_arg(LwcParams, params, kw)
        self._epoch_cb = None
        if on_epoch is not None:
            if p is None:
                p = lib.params(LwcParams)
            self._epoch_cb = LWC_EPOCH_FN(lambda user, e, loss: int(bool(on_epoch(e, loss))))
            p.on_epoch = self._epoch_cb
            pp = C.byref(p)
        wq_p, wq_pp = lib._params_arg(QuantParams, wq, {})
        wa, rows, cols, ldw = _matrix(w, "w")
        xa, tokens, _, ldx = _matrix(x, "x", cols)
        super().__init__(lib, _create(lib, "dq_lwc_create", ctx, pp, wq_pp, _fptr(wa),
                                      rows, cols, ldw, _fptr(xa), tokens, ldx, ctx=ctx), ctx)
        self.n_groups = self.layout()[0]

    def train(self):
        """Train params.epochs epochs; returns the last epoch's mean training loss."""
        loss = _f32()
        self._call("dq_lwc_train", self, C.byref(loss))
        return loss.value

    def loss(self, gradient=False):
        """Full-batch loss, or (loss, d/dgamma, d/dbeta) with gradient=True."""
        loss = _f32()
        if not gradient:
            self._call("dq_lwc_loss", self, C.byref(loss), None, None, 0)
            return loss.value
        gg, gb = np.empty(self.n_groups, np.float32), np.empty(self.n_groups, np.float32)
        self._call("dq_lwc_loss", self, C.byref(loss), _fptr(gg), _fptr(gb), self.n_groups)
        return loss.value, gg, gb

    def layout(self):
        """(n_groups, epochs_done)."""
        n, e = _i64(), _i32()
        self._call("dq_lwc_layout", self, C.byref(n), C.byref(e))
        return n.value, e.value

    def get_params(self):
        g, b = np.empty(self.n_groups, np.float32), np.empty(self.n_groups, np.float32)
        self._call("dq_lwc_get_params", self, _fptr(g), _fptr(b), self.n_groups)
        return g, b

    def set_params(self, gamma, beta):
        g = _vector(gamma, self.n_groups, name="gamma")
        b = _vector(beta, self.n_groups, name="beta")
        self._call("dq_lwc_set_params", self, _fptr(g), _fptr(b), self.n_groups)

    def best(self):
        """(gamma, beta, loss) of the best parameters seen."""
        g, b = np.empty(self.n_groups, np.float32), np.empty(self.n_groups, np.float32)
        loss = _f32()
        self._call("dq_lwc_best", self, _fptr(g), _fptr(b), self.n_groups, C.byref(loss))
        return g, b, loss.value

    def factors(self):
        """(clip_hi, clip_lo) for QMatrix.pack."""
        hi, lo = np.empty(self.n_groups, np.float32), np.empty(self.n_groups, np.float32)
        self._call("dq_lwc_factors", self, _fptr(hi), _fptr(lo), self.n_groups)
        return hi, lo


class Hessian(_Handle):
    """GPTQ's H = sum x^T x of one layer input, in double (since 1.2). With a plan, observed
    batches are transformed by it first and QMatrix.gptq transforms the weights by it."""
    _free = "dq_hessian_free"

    def __init__(self, lib, cols, plan=None, ctx=None):
        self.cols, self.plan = cols, plan  # the plan is referenced by the C object too
        super().__init__(lib, _create(lib, "dq_hessian_create", ctx, plan, cols, ctx=ctx), ctx)

    def observe(self, x):
        a, rows, cols, ld = _matrix(x, "x")
        self._call("dq_hessian_observe", self, _fptr(a), rows, cols, ld)

    def merge(self, other):
        self._call("dq_hessian_merge", self, other)

    def tokens(self):
        n = _i64()
        self._call("dq_hessian_tokens", self, C.byref(n))
        return n.value

    def matrix(self):
        out = np.empty((self.cols, self.cols), np.float64)
        self._call("dq_hessian_matrix", self, out.ctypes.data_as(C.POINTER(C.c_double)),
                   self.cols)
        return out


class Linear(_Handle):
    """y = Q(x G) Q(W G^-T)^T + bias. Keeps a reference to the plan it borrows."""
    _free = "dq_linear_free"

    def __init__(self, lib, weights, plan=None, bias=None, params=None, ctx=None, **kw):
        p, pp = lib._params_arg(LinearParams, params, kw)
        rows = weights.shape()[0]
        b = _vector(bias, rows, name="bias")
        super().__init__(lib, _create(lib, "dq_linear_create", ctx, pp, plan, weights,
                                      _fptr(b), ctx=ctx), ctx)
        self.plan = plan  # borrowed by the C layer: must outlive it
        self.in_features, self.out_features = self.layout()

    @classmethod
    def _wrap(cls, lib, handle, plan, ctx=None, source=None):
        lin = cls.__new__(cls)
        _Handle.__init__(lin, lib, handle, ctx)
        lin.plan = plan
        lin._source = source  # a borrowing reader's mapping or buffer: read in place
        lin.in_features, lin.out_features = lin.layout()
        return lin

    def like(self, params=None, ctx=None, **kw):
        """A layer over the same weights, plan and bias with other activation settings
        (LinearParams fields, e.g. act_clip_ratio=0.9): the weights are shared, not repacked
        (since 1.2)."""
        _, pp = self.L._params_arg(LinearParams, params, kw)
        h = _create(self.L, "dq_linear_create_like", ctx, pp, self, ctx=ctx)
        return Linear._wrap(self.L, h, self.plan, ctx, getattr(self, "_source", None))

    def layout(self):
        """(in_features, out_features)."""
        i, o = _i64(), _i64()
        self._call("dq_linear_layout", self, C.byref(i), C.byref(o))
        return i.value, o.value

    def workspace_size(self, rows):
        n = _sz()
        self._call("dq_linear_workspace_size", self, rows, C.byref(n))
        return n.value

    def forward(self, x, work=None, out=None):
        """rows x out_features output; out may be a float32 array to write into."""
        a, rows, cols, ld = _matrix(x, "x")
        y = out if out is not None else np.empty((rows, self.out_features), np.float32)
        yr, yc, ldy = _inplace(y, "out")
        if (yr, yc) != (rows, self.out_features):
            raise ValueError("out: expected shape %s, got %s" % ((rows, self.out_features),
                                                                 y.shape))
        wptr, wsize = _work(work)
        self._call("dq_linear_forward", self, _fptr(a), rows, cols, ld, _fptr(y), ldy, wptr,
                   wsize)
        return y

    __call__ = forward

    @staticmethod
    def _group(layers):
        layers = list(layers)
        if not layers:
            raise ValueError("layers: empty group")
        for lin in layers:
            if not isinstance(lin, Linear) or not lin.h:
                raise ValueError("layers: expected open Linear objects")
        return layers, (_vp * len(layers))(*[lin.h for lin in layers])

    @staticmethod
    def group_workspace_size(layers, rows):
        """Bytes of workspace forward_group needs for rows tokens (since 1.2)."""
        layers, arr = Linear._group(layers)
        n = _sz()
        layers[0].L.call("dq_linear_group_workspace_size", arr, len(layers), rows, C.byref(n),
                         ctx=layers[0].ctx)
        return n.value

    @staticmethod
    def forward_group(layers, x, work=None, out=None):
        """[layer(x) for layer in layers] in one call, the input transformed and quantized once
        (dq_linear_forward_group, since 1.2): layers created with the same plan object, the
        same in_features and activation settings. out: optional list of float32 arrays."""
        layers, arr = Linear._group(layers)
        a, rows, cols, ld = _matrix(x, "x")
        ys = list(out) if out is not None else [
            np.empty((rows, lin.out_features), np.float32) for lin in layers]
        if len(ys) != len(layers):
            raise ValueError("out: expected %d arrays, got %d" % (len(layers), len(ys)))
        ldy = np.empty(len(layers), np.int64)
        for i, (lin, y) in enumerate(zip(layers, ys)):
            yr, yc, ldy[i] = _inplace(y, "out[%d]" % i)
            if (yr, yc) != (rows, lin.out_features):
                raise ValueError("out[%d]: expected shape %s, got %s"
                                 % (i, (rows, lin.out_features), y.shape))
        yp = (_fp * len(ys))(*[_fptr(y) for y in ys])
        wptr, wsize = _work(work)
        layers[0].L.call("dq_linear_forward_group", arr, len(layers), _fptr(a), rows, cols, ld,
                         yp, ldy.ctypes.data_as(_lp), len(ys), wptr, wsize, ctx=layers[0].ctx)
        return ys


class FileWriter(_Handle):
    _free = "dq_file_writer_free"

    def __init__(self, lib, ctx=None):
        super().__init__(lib, _create(lib, "dq_file_writer_create", ctx, ctx=ctx), ctx)

    def add_metadata(self, key, value):
        self._call("dq_file_writer_add_metadata", self, _text(key), _text(value))

    def add_tensor(self, name, values):
        """A float32 tensor of any shape (0..8 dimensions)."""
        a = np.asarray(values, dtype=np.float32, order="C")  # keeps 0-d arrays 0-d
        dims = (_i64 * max(a.ndim, 1))(*a.shape)
        self._call("dq_file_writer_add_tensor_f32", self, _text(name),
                   _fptr(a) if a.size else None, a.ndim, dims)

    add_tensor_f32 = add_tensor

    def add_plan(self, prefix, plan):
        self._call("dq_file_writer_add_plan", self, _text(prefix), plan)

    def add_qmatrix(self, prefix, q):
        self._call("dq_file_writer_add_qmatrix", self, _text(prefix), q)

    def add_linear(self, prefix, weights, bias=None, params=None, plan_prefix=None, **kw):
        p, pp = self.L._params_arg(LinearParams, params, kw)
        b = _vector(bias, weights.shape()[0], name="bias")
        self._call("dq_file_writer_add_linear", self, _text(prefix), pp,
                   _text(plan_prefix) if plan_prefix is not None else None, weights, _fptr(b))

    def add_linear_layer(self, prefix, layer, plan_prefix=None):
        """A layer as it runs, its weights in the blocked layout (format version 2, since 1.2):
        loaded through a borrowing reader it reads them in place."""
        self._call("dq_file_writer_add_linear_layer", self, _text(prefix), layer,
                   _text(plan_prefix) if plan_prefix is not None else None)

    def to_bytes(self):
        n = _sz()
        self._call("dq_file_writer_to_buffer", self, None, 0, C.byref(n))
        buf = C.create_string_buffer(n.value)
        self._call("dq_file_writer_to_buffer", self, buf, n.value, C.byref(n))
        return buf.raw[:n.value]

    to_buffer = to_bytes

    def save(self, path):
        self._call("dq_file_writer_save", self, os.fsencode(path))


class _Source:
    """A borrowing reader's handle (and buffer): freed when the reader and every layer that
    reads its weights in place are gone."""

    def __init__(self, lib, handle, data):
        self.L, self.h, self.data = lib, handle, data

    def __del__(self):
        try:
            getattr(self.L.lib, "dq_file_reader_free")(self.h)
        except Exception:  # interpreter shutdown
            pass


class FileReader(_Handle):
    """Open path, or read data (bytes). borrow=True: data is read in place, a path is mapped
    (since 1.2); layers loaded from such a reader may read their weights from it, so the
    buffer or mapping lives until the reader and all those layers are closed."""
    _free = "dq_file_reader_free"
    _source = None

    def __init__(self, lib, path=None, data=None, borrow=False, params=None, ctx=None, **kw):
        if borrow:
            kw["flags"] = kw.get("flags", 0) | DQ_FILE_F_BORROW
        p, pp = lib._params_arg(FileParams, params, kw)
        if (path is None) == (data is None):
            raise TypeError("give exactly one of path and data")
        if path is not None:
            h = _create(lib, "dq_file_reader_open", ctx, pp, os.fsencode(path), ctx=ctx)
        else:
            data = bytes(data)
            h = _create(lib, "dq_file_reader_from_buffer", ctx, pp, data, len(data),
                        ctx=ctx)
        super().__init__(lib, h, ctx)
        self._data = data if borrow else None  # a borrowed buffer must outlive the reader
        self._source = _Source(lib, self.h, self._data) if borrow else None

    def close(self):
        if self._source is not None:  # freed by _Source once no layer reads from it
            self.h, self._source = None, None
            return
        super().close()

    def _string(self, fname, arg):
        n = _sz()
        self._call(fname, self, arg, None, 0, C.byref(n))
        buf = C.create_string_buffer(n.value + 1)
        self._call(fname, self, arg, buf, n.value + 1, C.byref(n))
        return buf.value.decode()

    def count(self):
        """(n_tensors, n_metadata)."""
        t, m = _i64(), _i64()
        self._call("dq_file_reader_count", self, C.byref(t), C.byref(m))
        return t.value, m.value

    def tensor_names(self):
        return [self._string("dq_file_reader_tensor_name", i) for i in range(self.count()[0])]

    def metadata_keys(self):
        return [self._string("dq_file_reader_metadata_key", i) for i in range(self.count()[1])]

    def metadata(self, key):
        return self._string("dq_file_reader_metadata", _text(key))

    def tensor_info(self, name):
        """(dtype code DQ_DTYPE_*, shape tuple)."""
        dtype, ndim, shape = _i32(), _i32(), (_i64 * DQ_FILE_MAX_DIMS)()
        self._call("dq_file_reader_tensor_info", self, _text(name), C.byref(dtype),
                   C.byref(ndim), shape)
        return dtype.value, tuple(shape[:ndim.value])

    def get_tensor_f32(self, name):
        _, shape = self.tensor_info(name)
        out = np.empty(shape, np.float32)
        self._call("dq_file_reader_get_tensor_f32", self, _text(name), _fptr(out), out.size)
        return out

    tensor = get_tensor_f32

    def get_plan(self, prefix, ctx=None):
        return Plan._wrap(self.L, _create(self.L, "dq_file_reader_get_plan", self, ctx,
                                          _text(prefix), ctx=ctx), ctx)

    def get_qmatrix(self, prefix, ctx=None):
        return QMatrix._wrap(self.L, _create(self.L, "dq_file_reader_get_qmatrix", self,
                                             ctx, _text(prefix), ctx=ctx), ctx)

    def get_linear(self, prefix, plan=None, ctx=None):
        """The layer under prefix, borrowing plan (None = identity; see linear_plan_prefix)."""
        return Linear._wrap(self.L, _create(self.L, "dq_file_reader_get_linear", self,
                                            ctx, _text(prefix), plan, ctx=ctx),
                            plan, ctx, source=self._source)

    def linear_plan_prefix(self, prefix):
        """The prefix of the plan the layer under prefix reads, or None."""
        try:
            return self.metadata(prefix + ".plan")
        except DuquantError as e:
            if e.status == DQ_ERR_FORMAT:
                return None
            raise


class KvCache:
    """A key or value cache of tokens tokens in the library's packed layout (dq_kv_*, since
    1.2): n_heads heads of head_size channels, 4 or 8 bits per head per token; rotate=True
    applies the per-head Walsh-Hadamard transform before quantizing (keys; queries then go
    through rotate_queries). The buffer is a numpy uint8 array owned by this object."""

    def __init__(self, lib, tokens, n_heads, head_size, bits=4, rotate=False, clip_ratio=1.0):
        self.L = lib
        self.p = lib.params(KvParams, bits=bits, n_heads=n_heads, head_size=head_size,
                            clip_ratio=clip_ratio, flags=DQ_KV_F_ROTATE if rotate else 0)
        self.tokens, self.n_heads, self.head_size = tokens, n_heads, head_size
        self.buffer = np.zeros(self.size(tokens), np.uint8)

    def size(self, tokens):
        n = _sz()
        self.L.call("dq_kv_size", C.byref(self.p), tokens, C.byref(n))
        return n.value

    def _buf(self):
        return self.buffer.ctypes.data_as(_vp)

    def store(self, x, first):
        """Quantize the rows of x (tokens x n_heads * head_size) into tokens first.."""
        a, rows, cols, ld = _matrix(x, "x", self.n_heads * self.head_size)
        self.L.call("dq_kv_quantize", C.byref(self.p), _fptr(a), rows, ld, self._buf(),
                    self.buffer.size, first)

    def load(self, head, first, tokens):
        """Head head of tokens first .. first + tokens - 1, dequantized (rotated domain when
        stored with rotate=True)."""
        out = np.empty((tokens, self.head_size), np.float32)
        self.L.call("dq_kv_dequantize", C.byref(self.p), self._buf(), self.buffer.size, head,
                    first, tokens, _fptr(out), self.head_size)
        return out

    def rotate_queries(self, q):
        """A rotated copy of q (rows x n_heads * head_size), for the product with rotated keys."""
        out = np.array(q, dtype=np.float32, order="C", copy=True)
        if out.ndim != 2:
            raise ValueError("q: expected a 2-D matrix, got shape %s" % (out.shape,))
        rows, _, ld = _inplace(out, "q")
        self.L.call("dq_kv_rotate", C.byref(self.p), _fptr(out), rows, ld)
        return out
