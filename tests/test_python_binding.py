#!/usr/bin/python3
"""The ctypes binding (examples/python/duquant.py) against the built shared library: every
wrapped function is called, and its results are checked against numpy.

Usage: test_python_binding.py [path/to/libduquant.so] [unittest options]  (or set DUQUANT_LIB)
Exit status: 0 when every test passes, 1 otherwise, 77 (skipped) without numpy.
"""
import gc
import os
import re
import sys
import tempfile
import threading
import unittest
from concurrent.futures import ThreadPoolExecutor

DEBIAN_PYTHON = "/usr/bin/python3"
try:
    import numpy as np
except ImportError:
    # The first python3 on PATH may be a private interpreter without numpy: use Debian's.
    if os.path.exists(DEBIAN_PYTHON) and os.path.realpath(sys.executable) != \
            os.path.realpath(DEBIAN_PYTHON) and not os.environ.get("DQ_PY_REEXEC"):
        os.environ["DQ_PY_REEXEC"] = "1"
        os.execv(DEBIAN_PYTHON, [DEBIAN_PYTHON] + sys.argv)
    print("numpy not available to %s (nor to %s): skipped" % (sys.executable, DEBIAN_PYTHON))
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples", "python"))
import duquant as dq  # noqa: E402

LIB_PATH = None
lib = None


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def activations(rng, tokens, cols, outliers=(3,)):
    x = rng.laplace(size=(tokens, cols)).astype(np.float32)
    for c in outliers:
        x[:, c] *= 25.0
    return x


def np_quant(x, bits=4, group=0, scheme=dq.DQ_QUANT_ASYM):
    """Per-row (or per-group) codes, scales and zero points as the library computes them."""
    x = np.asarray(x, np.float32)
    rows, cols = x.shape
    g = group or cols
    ng = -(-cols // g)
    codes = np.empty((rows, cols), np.int32)
    scales = np.empty((rows, ng), np.float32)
    zeros = np.zeros((rows, ng), np.float32)
    for k in range(ng):
        blk = x[:, k * g:(k + 1) * g]
        mx, mn = blk.max(1), blk.min(1)
        if scheme == dq.DQ_QUANT_ASYM:
            sc = np.clip((mx - mn) / np.float32(2 ** bits - 1), 1e-5, 1e4).astype(np.float32)
            zp = np.rint(np.clip(-mn / sc, -1e4, 1e4)).astype(np.float32)
            q = np.clip(np.rint(blk / sc[:, None]) + zp[:, None], 0, 2 ** bits - 1)
        else:
            top = 2 ** (bits - 1) - 1
            sc = np.clip(np.maximum(np.abs(mx), np.abs(mn)) / np.float32(top), 1e-5,
                         1e4).astype(np.float32)
            zp = np.zeros_like(sc)
            q = np.clip(np.rint(blk / sc[:, None]), -top - 1, top)
        codes[:, k * g:(k + 1) * g] = q
        scales[:, k], zeros[:, k] = sc, zp
    return codes, scales, zeros


def np_dequant(codes, scales, zeros, group=0):
    cols = codes.shape[1]
    gi = np.arange(cols) // (group or cols)
    return ((codes.astype(np.float32) - zeros[:, gi]) * scales[:, gi]).astype(np.float32)


def np_zigzag(key, block):
    n = key.size
    nb = -(-n // block)
    sizes = [min(block, n - b * block) for b in range(nb)]
    seq = list(range(nb)) + list(range(nb - 1, -1, -1))
    blocks, pos = [[] for _ in range(nb)], 0
    for ch in np.argsort(-key, kind="stable"):
        while len(blocks[seq[pos % len(seq)]]) == sizes[seq[pos % len(seq)]]:
            pos += 1
        blocks[seq[pos % len(seq)]].append(ch)
        pos += 1
    return np.concatenate([np.array(b, np.int64) for b in blocks])


class Fixture(unittest.TestCase):
    T, C, O = 96, 64, 24  # tokens, input channels, output channels

    def setUp(self):
        self.rng = np.random.default_rng(7)
        self.x = activations(self.rng, self.T, self.C, (3, 40))
        self.w = (self.rng.standard_normal((self.O, self.C)) * 0.1).astype(np.float32)
        self.bias = np.linspace(-0.5, 0.5, self.O).astype(np.float32)
        self.log = []
        self.ctx = dq.Context(lib, log=lambda lvl, msg: self.log.append((lvl, msg)),
                              log_level=dq.DQ_LOG_INFO, n_threads=2)

    def plan(self, **kw):
        calib = dq.Calibrator(lib, self.C, ctx=self.ctx, sample_tokens=self.T)
        calib.observe(self.x)
        kw.setdefault("block_size", 16)
        kw.setdefault("max_rotation_step", 16)
        return dq.Plan.build(lib, calib, lib.weight_absmax(self.w), ctx=self.ctx, **kw)

    def assertRaisesStatus(self, name, fn, *args, **kw):
        """fn raises DuquantError with status name; the exception carries the last error the
        fixture's context logged during the call (None when it logged none)."""
        before = len(self.log)
        with self.assertRaises(dq.DuquantError) as cm:
            fn(*args, **kw)
        e = cm.exception
        self.assertEqual(e.name, name, str(e))
        self.assertEqual(lib.status_name(e.status), name)
        self.assertIn(e.function, str(e))
        errors = [m for lvl, m in self.log[before:] if lvl == dq.DQ_LOG_ERROR]
        if errors:
            self.assertEqual(e.log, errors[-1])
            self.assertIn(e.log, str(e))
            self.logged_errors = getattr(self, "logged_errors", 0) + 1
        else:
            self.assertIsNone(e.log)
        return e


class TestRuntime(Fixture):
    def test_version(self):
        v = lib.version()
        self.assertRegex(v, r"^\d+\.\d+\.\d+$")
        major, minor, patch = map(int, v.split("."))
        self.assertEqual(lib.version_number(), major * 10000 + minor * 100 + patch)
        header = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(LIB_PATH))),
                              "include", "duquant_version.h")
        if os.path.exists(header):  # the build folder's generated header
            with open(header) as f:
                m = re.search(r'DQ_VERSION_STRING "([^"]+)"', f.read())
            self.assertEqual(m.group(1), v)

    def test_status_names(self):
        self.assertEqual(lib.status_name(0), "DQ_OK")
        self.assertEqual(lib.status_name(dq.DQ_ERR_SHAPE), "DQ_ERR_SHAPE")
        self.assertEqual(lib.status_name(dq.DQ_ERR_BUFFER), "DQ_ERR_BUFFER")
        self.assertEqual(lib.status_name(-9999), "DQ_ERR_UNKNOWN")
        self.assertTrue(lib.status_string(dq.DQ_ERR_SHAPE))

    def test_params_init(self):
        import ctypes as C
        for cls in dq._PARAMS:
            p = lib.params(cls)
            self.assertEqual(p.struct_size, C.sizeof(p), cls.__name__)
        pp = lib.params(dq.PlanParams)
        self.assertEqual((pp.flags, pp.block_size, pp.permutation_times),
                         (dq.DQ_PLAN_F_DEFAULT, 128, 1))
        self.assertAlmostEqual(pp.smooth_alpha, 0.6, places=6)
        qp = lib.params(dq.QuantParams, group_size=32)
        self.assertEqual((qp.bits, qp.scheme, qp.group_size), (4, dq.DQ_QUANT_ASYM, 32))
        self.assertEqual(lib.params(dq.LinearParams).act_bits, 4)
        self.assertEqual(lib.params(dq.LwcParams).epochs, 20)
        self.assertEqual(lib.params(dq.CalibParams).sample_tokens, 2048)
        self.assertRaises(AttributeError, lib.params, dq.PlanParams, no_such_member=1)
        p = dq.PlanParams()
        self.assertRaisesStatus("DQ_ERR_STRUCT_SIZE", lib.call, "dq_plan_params_init",
                                C.byref(p), 4)

    def test_context_log_callback_and_levels(self):
        # LWC training logs each epoch at DQ_LOG_INFO.
        dq.Lwc(lib, self.w, self.x, ctx=self.ctx, epochs=2).train()
        info = [m for lvl, m in self.log if lvl == dq.DQ_LOG_INFO]
        self.assertEqual(len(info), 2, self.log)
        self.assertTrue(all("lwc epoch" in m for m in info), info)
        self.assertEqual(list(self.ctx.messages)[-2:], self.log[-2:])
        # At DQ_LOG_WARN the same training is silent.
        quiet = []
        ctx = dq.Context(lib, log=lambda lvl, msg: quiet.append(msg), log_level=dq.DQ_LOG_WARN)
        dq.Lwc(lib, self.w, self.x, ctx=ctx, epochs=2).train()
        self.assertEqual(quiet, [])
        # A callback that raises never unwinds through the library.
        def bad(level, msg):
            raise RuntimeError("ignored")
        ctx = dq.Context(lib, log=bad, log_level=dq.DQ_LOG_INFO)
        self.assertGreater(dq.Lwc(lib, self.w, self.x, ctx=ctx, epochs=1).train(), 0)
        self.assertEqual(len(ctx.messages), 1)

    def test_context_outlived_by_objects(self):
        calib = dq.Calibrator(lib, self.C, ctx=self.ctx)
        lwc = dq.Lwc(lib, self.w, self.x, ctx=self.ctx, epochs=1)
        self.ctx.close()
        self.ctx.close()  # twice is harmless
        calib.observe(self.x)
        self.assertEqual(calib.tokens(), self.T)
        self.assertRaises(ValueError, dq.Calibrator, lib, self.C, ctx=self.ctx)  # closed
        del self.ctx
        gc.collect()
        lwc.train()  # logs through the callback the object keeps alive
        self.assertTrue(any("lwc epoch" in m for _, m in self.log))

    def test_errors_carry_status_and_log(self):
        e = self.assertRaisesStatus("DQ_ERR_SHAPE", dq.Calibrator, lib, 0, ctx=self.ctx)
        if e.log is not None:  # the library logs errors ("function: what (status)")
            self.assertTrue(e.function in e.log or e.name in e.log, e.log)
        else:
            print("(this library logs no message for this error)", end=" ", file=sys.stderr)
        calib = dq.Calibrator(lib, self.C, ctx=self.ctx)
        self.assertRaisesStatus("DQ_ERR_BAD_STATE", calib.absmax)
        self.assertRaisesStatus("DQ_ERR_SHAPE", calib.observe, self.x[:, :10])
        bad = self.x.copy()
        bad[5, 5] = np.nan
        self.assertRaisesStatus("DQ_ERR_NONFINITE", calib.observe, bad)
        self.assertEqual(calib.tokens(), 0)  # all or nothing
        self.assertRaisesStatus("DQ_ERR_INVALID_ARG", lib.smooth_factors, [1.0], [1.0], 2.0)
        self.assertRaises(ValueError, calib.observe, self.x[0])  # not 2-D
        calib.close()
        self.assertRaises(ValueError, calib.tokens)  # closed handle


class TestOffline(Fixture):
    def test_calibrator(self):
        c = dq.Calibrator(lib, self.C, ctx=self.ctx, sample_tokens=48)
        self.assertIsNone(c.sample())
        wide = np.zeros((self.T, self.C + 8), np.float32)
        wide[:, :self.C] = self.x
        c.observe(wide[:40, :self.C])  # a strided view: ld from the strides
        c.observe(self.x[40:].astype(np.float64))  # converted
        self.assertEqual(c.tokens(), self.T)
        np.testing.assert_array_equal(c.absmax(), np.abs(self.x).max(0))
        lo, hi = c.minmax()
        np.testing.assert_array_equal(lo, self.x.min(0))
        np.testing.assert_array_equal(hi, self.x.max(0))
        np.testing.assert_array_equal(c.sample(), self.x[:48])
        # Two calibrators merged: the statistics of the whole, dst's tokens first in the sample.
        a = dq.Calibrator(lib, self.C, sample_tokens=48)
        b = dq.Calibrator(lib, self.C, sample_tokens=48)
        a.observe(self.x[:20])
        b.observe(self.x[20:])
        a.merge(b)
        self.assertEqual((a.tokens(), b.tokens()), (self.T, self.T - 20))
        np.testing.assert_array_equal(a.absmax(), c.absmax())
        np.testing.assert_array_equal(a.sample(), self.x[:48])
        self.assertRaisesStatus("DQ_ERR_SHAPE", a.merge, dq.Calibrator(lib, 8, sample_tokens=48))
        n = dq.Calibrator(lib, self.C, sample_mode=dq.DQ_CALIB_SAMPLE_NONE)
        n.observe(self.x)
        self.assertIsNone(n.sample())

    def test_smoothing(self):
        act = np.abs(self.x).max(0)
        wa = lib.weight_absmax(self.w)
        np.testing.assert_array_equal(wa, np.abs(self.w).max(0))
        w2 = self.w * 3
        w2[:, 0] = 0
        np.testing.assert_array_equal(lib.weight_absmax(w2, accumulate=wa),
                                      np.maximum(wa, np.abs(w2).max(0)))
        s = lib.smooth_factors(act, wa, 0.5)
        ref = np.maximum(np.maximum(act, 1e-5) ** 0.5 / np.maximum(wa, 1e-5) ** 0.5, 1e-2)
        np.testing.assert_allclose(s, ref, rtol=1e-5)

    def test_rotation(self):
        r = dq.Rotation(lib, self.C, self.x, ctx=self.ctx, block_size=16, max_steps=8)
        self.assertEqual(r.layout(), (self.C, 16, 4, 1))
        self.assertEqual(r.block(3), (16, 0))
        m = r.matrix(0)
        np.testing.assert_allclose(m @ m.T, np.eye(16), atol=1e-5)
        d = r.dense()
        np.testing.assert_allclose(r.apply(self.x), self.x @ d, rtol=1e-4, atol=1e-4)
        y = self.x.copy()
        self.assertIs(r.apply(y, inplace=True), y)
        np.testing.assert_allclose(y, r.apply(self.x), rtol=1e-6, atol=1e-6)
        self.assertRaises(ValueError, r.apply, self.x.astype(np.float64), inplace=True)
        t = r.trace(0)
        self.assertEqual(t["steps"], 8)
        self.assertTrue(0 <= t["selected"] <= 8)
        self.assertEqual(t["peaks"].size, 9)
        self.assertEqual(t["peaks"][t["selected"]], t["peaks"].min())
        # Per block: one matrix each, a shorter last block of its own.
        pb = dq.Rotation(lib, 56, self.x[:, :56], block_size=16, max_steps=4,
                         flags=dq.DQ_ROT_F_PER_BLOCK)
        self.assertEqual(pb.layout(), (56, 16, 4, 4))
        self.assertEqual(pb.block(3), (8, 3))
        # The same rotation rebuilt from its matrices applies identically.
        again = dq.Rotation.from_matrices(lib, 56, 16, [pb.matrix(i) for i in range(4)],
                                          per_block=True)
        np.testing.assert_array_equal(again.apply(self.x[:, :56]), pb.apply(self.x[:, :56]))
        self.assertRaisesStatus("DQ_ERR_BAD_STATE", again.trace, 0)
        h = dq.Rotation(lib, self.C, method=dq.DQ_ROT_METHOD_HADAMARD, block_size=16)
        np.testing.assert_allclose(h.matrix(0), lib.hadamard(16), atol=1e-6)
        self.assertRaisesStatus("DQ_ERR_UNSUPPORTED", dq.Rotation, lib, 28,
                                method=dq.DQ_ROT_METHOD_HADAMARD, block_size=16)
        q = lib.random_orthogonal(15, 3)
        np.testing.assert_allclose(q @ q.T, np.eye(15), atol=1e-5)
        np.testing.assert_array_equal(q, lib.random_orthogonal(15, 3))
        b = lib.rotation_base(16)
        np.testing.assert_allclose(b[0], np.full(16, 0.25), atol=1e-6)  # row 0 is uniform
        bq = lib.rotation_base(16, q)
        np.testing.assert_allclose(bq[:, 1:], b[:, 1:] @ q, atol=1e-5)
        qr = dq.Rotation(lib, self.C, self.x, block_size=16, max_steps=4, qprime=q)
        np.testing.assert_allclose(qr.matrix(0) @ qr.matrix(0).T, np.eye(16), atol=1e-5)
        self.assertRaisesStatus("DQ_ERR_UNSUPPORTED", lib.hadamard, 12)

    def test_rotation_refine(self):
        r = dq.Rotation(lib, self.C, self.x, block_size=16, max_steps=8)
        ref = r.refine(self.x, ctx=self.ctx, method=dq.DQ_REFINE_DFROT, iterations=3)
        self.assertEqual(ref.layout(), r.layout())
        m = ref.matrix(0)
        np.testing.assert_allclose(m @ m.T, np.eye(16), atol=1e-4)
        self.assertTrue(any("dfrot iteration" in msg for _, msg in self.log), self.log)

    def test_zigzag(self):
        key = np.abs(self.x).max(0)
        perm = lib.zigzag(key, 16)
        np.testing.assert_array_equal(perm, np_zigzag(key, 16))
        short = lib.zigzag(key[:56], 16)
        self.assertEqual(sorted(short.tolist()), list(range(56)))
        self.assertEqual(short[0], np.argmax(key[:56]))
        self.assertRaisesStatus("DQ_ERR_INVALID_ARG", lib.zigzag, key, 0)

    def test_plan_matches_exported_matrices(self):
        pl = self.plan()
        self.assertEqual(pl.width(), self.C)
        self.assertEqual(pl.layout(), (True, 2))
        s = pl.smooth_scales()
        r0, r1 = pl.rotation(0), pl.rotation(1)
        p0 = pl.permutation(0)
        self.assertEqual(sorted(p0.tolist()), list(range(self.C)))
        g = np.diag(1.0 / s.astype(np.float64)) @ r0.dense() @ np.eye(self.C)[:, p0] @ r1.dense()
        np.testing.assert_allclose(pl.matrix(), g, rtol=1e-12, atol=1e-12)
        xt = pl.apply_act(self.x)
        self.assertLess(rel(xt, self.x.astype(np.float64) @ g), 1e-5)
        wt = pl.transform_weight(self.w)
        self.assertLess(rel(wt, self.w.astype(np.float64) @ np.linalg.inv(g).T), 1e-5)
        y = self.x.astype(np.float64) @ self.w.T
        self.assertLess(rel(xt.astype(np.float64) @ wt.T, y), 1e-5)  # x' W'^T = x W^T
        self.assertLess(np.abs(xt).max(), np.abs(self.x).max() / 4)  # outliers spread
        # In place and with a caller workspace: the same values.
        ws = pl.workspace_size(self.T)
        self.assertGreaterEqual(ws, 0)
        x2 = self.x.copy()
        self.assertIs(pl.apply_act(x2, inplace=True, work=bytearray(max(ws, 1))), x2)
        np.testing.assert_allclose(x2, xt, rtol=1e-6, atol=1e-6)
        w2 = self.w.copy()
        pl.transform_weight(w2, inplace=True)
        np.testing.assert_array_equal(w2, wt)
        # The same plan assembled from its parts.
        again = dq.Plan.assemble(lib, self.C, s, [r0, r1], [p0], ctx=self.ctx)
        np.testing.assert_allclose(again.apply_act(self.x), xt, rtol=1e-6, atol=1e-6)
        ident = dq.Plan.assemble(lib, self.C)
        np.testing.assert_array_equal(ident.apply_act(self.x), self.x)
        self.assertRaisesStatus("DQ_ERR_SHAPE", pl.apply_act, self.x[:, :32])
        self.assertRaisesStatus("DQ_ERR_INVALID_ARG", pl.rotation, 5)

    def test_plan_from_sample_and_refine(self):
        p1 = dq.Plan.from_sample(lib, self.x, lib.weight_absmax(self.w), block_size=16,
                                 max_rotation_step=16)
        p2 = self.plan()
        np.testing.assert_array_equal(p1.apply_act(self.x), p2.apply_act(self.x))
        refine = lib.params(dq.RefineParams, method=dq.DQ_REFINE_DFROT, iterations=2)
        import ctypes as C
        pp = lib.params(dq.PlanParams, block_size=16, max_rotation_step=16,
                        refine=C.pointer(refine))
        p3 = dq.Plan.from_sample(lib, self.x, lib.weight_absmax(self.w), params=pp, ctx=self.ctx)
        self.assertEqual(p3.layout(), (True, 2))
        self.assertTrue(any("dfrot" in m for _, m in self.log))
        plain = dq.Plan.build(lib, None, None, cols=self.C, flags=dq.DQ_PLAN_F_ROTATE,
                              method=dq.DQ_ROT_METHOD_HADAMARD, block_size=16)
        self.assertEqual(plain.layout(), (False, 1))
        np.testing.assert_allclose(plain.matrix() @ plain.matrix().T, np.eye(self.C), atol=1e-5)

    def test_borrowed_objects_stay_alive(self):
        pl = self.plan()
        r = pl.rotation(0)
        xt = pl.apply_act(self.x)
        q = dq.QMatrix.pack(lib, pl.transform_weight(self.w))
        lin = dq.Linear(lib, q, pl, self.bias)
        y = lin.forward(self.x)
        del pl, q
        gc.collect()
        np.testing.assert_array_equal(lin.forward(self.x), y)  # the layer kept its plan
        self.assertEqual(r.layout()[0], self.C)  # the slot kept its plan
        with dq.Plan.from_sample(lib, self.x, block_size=16, flags=dq.DQ_PLAN_F_ROTATE) as p:
            self.assertEqual(p.width(), self.C)
        self.assertIsNone(p.h)
        self.assertEqual(xt.shape, self.x.shape)


class TestQuantized(Fixture):
    def test_int4(self):
        codes = np.array([1, -8, 15, 7, 0, 3, -1], np.int32)
        self.assertEqual(lib.int4_packed_size(7), 4)
        packed = lib.int4_pack(codes)
        self.assertEqual(packed.tolist()[0], (1 | (8 << 4)))  # element 0 in the low nibble
        np.testing.assert_array_equal(lib.int4_unpack(packed, 7, signed=True),
                                      ((codes & 15) ^ 8) - 8)
        np.testing.assert_array_equal(lib.int4_unpack(packed, 7), codes & 15)
        self.assertRaisesStatus("DQ_ERR_INVALID_ARG", lib.int4_pack, [16])

    def test_qmatrix_asym_groups(self):
        w = self.w[:, :60]  # 60 columns: a short last group
        q = dq.QMatrix.pack(lib, w, group_size=16, ctx=self.ctx)
        lay = q.layout()
        self.assertEqual(lay, (self.O, 60, 4, dq.DQ_QUANT_ASYM, 16, 4, 30))
        codes, scales, zeros = np_quant(w, group=16)
        np.testing.assert_array_equal(q.unpack_codes(), codes)
        packed, sc, zp = q.view()
        self.assertEqual(packed.shape, (self.O, 30))
        np.testing.assert_array_equal(sc, scales)
        np.testing.assert_array_equal(zp, zeros)
        for i in range(self.O):
            np.testing.assert_array_equal(lib.int4_unpack(packed[i], 60), codes[i])
        deq = q.dequantize()
        np.testing.assert_array_equal(deq, np_dequant(codes, scales, zeros, 16))
        self.assertLess(rel(deq, w), 0.1)

    def test_qmatrix_sym_clip(self):
        q = dq.QMatrix.pack(lib, self.w, scheme=dq.DQ_QUANT_SYM, bits=8)
        packed, sc, zp = q.view()
        self.assertIsNone(zp)
        self.assertEqual(q.layout().row_bytes, self.C)
        codes, scales, _ = np_quant(self.w, bits=8, scheme=dq.DQ_QUANT_SYM)
        np.testing.assert_array_equal(q.unpack_codes(), codes)
        np.testing.assert_array_equal(q.dequantize(), codes.astype(np.float32) * scales)
        hi = np.full(self.O, 0.5, np.float32)
        clipped = dq.QMatrix.pack(lib, self.w, clip_hi=hi, clip_lo=hi)
        c2, s2, z2 = np_quant(np.clip(self.w, self.w.min(1, keepdims=True) * 0.5,
                                      self.w.max(1, keepdims=True) * 0.5))
        np.testing.assert_array_equal(clipped.view()[1], s2)
        self.assertRaisesStatus("DQ_ERR_INVALID_ARG", dq.QMatrix.pack, lib, self.w, bits=3)
        bad = self.w.copy()
        bad[0, 0] = np.inf
        self.assertRaisesStatus("DQ_ERR_NONFINITE", dq.QMatrix.pack, lib, bad)

    def test_lwc(self):
        pl = self.plan()
        xt, wt = pl.apply_act(self.x), pl.transform_weight(self.w)
        epochs = []
        lwc = dq.Lwc(lib, wt, xt, ctx=self.ctx, on_epoch=lambda e, loss: epochs.append(e),
                     epochs=4, flags=dq.DQ_LWC_F_QUANT_ACT, batch_tokens=32)
        self.assertEqual(lwc.layout(), (self.O, 0))
        g0, b0 = lwc.get_params()
        np.testing.assert_array_equal(g0, np.full(self.O, 4.0, np.float32))
        start = lwc.loss()
        loss, gg, gb = lwc.loss(gradient=True)
        self.assertEqual((loss, gg.shape, gb.shape), (start, (self.O,), (self.O,)))
        self.assertGreater(lwc.train(), 0)
        self.assertEqual(epochs, [1, 2, 3, 4])
        self.assertEqual(lwc.layout(), (self.O, 4))
        g, b, best = lwc.best()
        self.assertLessEqual(best, start)
        hi, lo = lwc.factors()
        np.testing.assert_allclose(hi, 1 / (1 + np.exp(-g.astype(np.float64))), rtol=1e-5)
        np.testing.assert_allclose(lo, 1 / (1 + np.exp(-b.astype(np.float64))), rtol=1e-5)
        lwc.set_params(g0, b0)
        self.assertEqual(lwc.loss(), start)
        self.assertRaises(ValueError, lwc.set_params, g0[:3], b0[:3])  # checked in Python
        self.assertRaisesStatus("DQ_ERR_SHAPE", lib.call, "dq_lwc_set_params", lwc,
                                dq._fptr(g0), dq._fptr(b0), 3, ctx=lwc.ctx)
        # A callback asking to stop ends training after that epoch.
        stop = dq.Lwc(lib, wt, xt, on_epoch=lambda e, loss: e >= 2, epochs=10)
        stop.train()
        self.assertEqual(stop.layout()[1], 2)
        self.assertRaises(ValueError, dq.Lwc, lib, wt, xt[:, :10])  # checked in Python
        self.assertRaisesStatus("DQ_ERR_INVALID_ARG", dq.Lwc, lib, wt, xt, epochs=0)

    def test_linear_forward_against_numpy(self):
        pl = self.plan()
        wt = pl.transform_weight(self.w)
        q = dq.QMatrix.pack(lib, wt, group_size=16)
        lin = dq.Linear(lib, q, pl, self.bias, ctx=self.ctx)
        self.assertEqual(lin.layout(), (self.C, self.O))
        ws = lin.workspace_size(self.T)
        self.assertGreater(ws, 0)
        y = lin.forward(self.x, work=np.zeros(ws, np.uint8))
        # numpy: per-token asymmetric INT4 activations times the dequantized weights.
        xt = pl.apply_act(self.x)
        codes, sc, zp = np_quant(xt)
        ref = np_dequant(codes, sc, zp).astype(np.float64) @ q.dequantize().T.astype(
            np.float64) + self.bias
        self.assertLess(rel(y, ref), 1e-4)
        exact = self.x.astype(np.float64) @ self.w.T + self.bias
        self.assertLess(rel(y, exact), 0.2)  # the W4A4 bound of this layer
        out = np.full((self.T, self.O), np.nan, np.float32)
        self.assertIs(lin(self.x, out=out), out)
        np.testing.assert_array_equal(out, y)
        # Weight-only: float activations through the same object.
        w16 = dq.Linear(lib, q, pl, self.bias, act_bits=0)
        ref16 = xt.astype(np.float64) @ q.dequantize().T.astype(np.float64) + self.bias
        self.assertLess(rel(w16.forward(self.x), ref16), 1e-5)
        # Other activation settings over the same weights: the bits of a fresh layer.
        for kw in ({"act_clip_ratio": 0.9}, {"act_bits": 0}, {"act_group_size": 16}):
            np.testing.assert_array_equal(lin.like(**kw).forward(self.x),
                                          dq.Linear(lib, q, pl, self.bias, **kw).forward(self.x))
        self.assertRaisesStatus("DQ_ERR_SHAPE", lin.like, act_group_size=8)
        self.assertRaisesStatus("DQ_ERR_SHAPE", lin.forward, self.x[:, :32])
        self.assertRaises(ValueError, lin.forward, self.x, out=np.zeros((2, 2), np.float32))
        self.assertRaisesStatus("DQ_ERR_SHAPE", dq.Linear, lib,
                                dq.QMatrix.pack(lib, self.w[:, :32]), pl)


    def test_threads_share_one_layer(self):
        import threading
        pl = self.plan()
        lin = dq.Linear(lib, dq.QMatrix.pack(lib, pl.transform_weight(self.w)), pl, self.bias)
        xs = [activations(np.random.default_rng(s), 32, self.C) for s in range(4)]
        want = [lin.forward(x) for x in xs]
        got = [None] * 4

        def run(i):
            work = bytearray(lin.workspace_size(32))
            for _ in range(20):
                got[i] = lin.forward(xs[i], work=work)
        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


class TestFiles(Fixture):
    def build(self):
        pl = self.plan()
        wt = pl.transform_weight(self.w)
        q = dq.QMatrix.pack(lib, wt, group_size=16)
        lin = dq.Linear(lib, q, pl, self.bias, act_bits=8)
        fw = dq.FileWriter(lib, ctx=self.ctx)
        fw.add_metadata("model", "test")
        fw.add_tensor("extra.table", np.arange(24, dtype=np.float32).reshape(2, 3, 4))
        fw.add_tensor("extra.scalar", np.float32(2.5))
        fw.add_plan("l0.in", pl)
        fw.add_qmatrix("l0.raw", q)
        fw.add_linear("l0.q", q, self.bias, plan_prefix="l0.in", act_bits=8)
        return pl, q, lin, fw

    def test_round_trip(self):
        pl, q, lin, fw = self.build()
        data = fw.to_bytes()
        self.assertEqual(fw.to_buffer(), data)  # deterministic
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.safetensors")
            fw.save(path)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), data)
            fr = dq.FileReader(lib, path=path, ctx=self.ctx)
        for r in (fr, dq.FileReader(lib, data=data), dq.FileReader(lib, data=data, borrow=True)):
            nt, nm = r.count()
            names, keys = r.tensor_names(), r.metadata_keys()
            self.assertEqual((len(names), len(keys)), (nt, nm))
            self.assertEqual(names, sorted(names, key=lambda s: s.encode()))
            self.assertIn("extra.table", names)
            self.assertIn("format", keys)
            self.assertEqual(r.metadata("format"), "duquant")
            self.assertEqual(r.metadata("model"), "test")
            self.assertEqual(r.tensor_info("extra.table"), (dq.DQ_DTYPE_F32, (2, 3, 4)))
            np.testing.assert_array_equal(r.get_tensor_f32("extra.table"),
                                          np.arange(24).reshape(2, 3, 4))
            self.assertEqual(r.get_tensor_f32("extra.scalar").shape, ())
            self.assertEqual(float(r.get_tensor_f32("extra.scalar")), 2.5)
            # Loaded objects reproduce the saved ones bit for bit.
            pl2 = r.get_plan("l0.in", ctx=self.ctx)
            np.testing.assert_array_equal(pl2.apply_act(self.x), pl.apply_act(self.x))
            np.testing.assert_array_equal(pl2.smooth_scales(), pl.smooth_scales())
            q2 = r.get_qmatrix("l0.raw")
            for a, b in zip(q2.view(), q.view()):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(q2.dequantize(), q.dequantize())
            self.assertEqual(r.linear_plan_prefix("l0.q"), "l0.in")
            self.assertIsNone(r.linear_plan_prefix("l0.raw"))
            lin2 = r.get_linear("l0.q", pl2)
            np.testing.assert_array_equal(lin2.forward(self.x), lin.forward(self.x))
            r.close()

    def test_bad_files(self):
        _, q, _, fw = self.build()
        self.assertRaisesStatus("DQ_ERR_INVALID_ARG", fw.add_metadata, "model", "again")
        self.assertRaisesStatus("DQ_ERR_INVALID_ARG", fw.add_qmatrix, "l0.raw", q)
        self.assertRaisesStatus("DQ_ERR_FORMAT", dq.FileReader, lib,
                                data=b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
        r = dq.FileReader(lib, data=fw.to_bytes())
        self.assertRaisesStatus("DQ_ERR_FORMAT", r.metadata, "no.such.key")
        self.assertRaisesStatus("DQ_ERR_FORMAT", r.get_plan, "no.such.plan")
        self.assertRaisesStatus("DQ_ERR_FORMAT", r.tensor_info, "no.such.tensor")
        self.assertRaises(TypeError, dq.FileReader, lib)

    def test_missing_file_is_io_error(self):
        with tempfile.TemporaryDirectory() as d:
            missing = os.path.join(d, "no", "m.safetensors")
            e = self.assertRaisesStatus("DQ_ERR_IO", dq.FileReader, lib, path=missing,
                                        ctx=self.ctx)
            self.assertEqual(e.status, dq.DQ_ERR_IO)
            self.assertIsNotNone(e.log)
            self.assertIn(missing, e.log)
            self.assertIn(missing, str(e))
            # Mapped (borrow=True): the same status and message.
            e = self.assertRaisesStatus("DQ_ERR_IO", dq.FileReader, lib, path=missing,
                                        borrow=True, ctx=self.ctx)
            self.assertIn(missing, e.log)
            e = self.assertRaisesStatus("DQ_ERR_IO", dq.FileReader, lib, path=d, ctx=self.ctx)
            self.assertIn(d, e.log)  # a folder


class TestRelease12(Fixture):
    """Plan binding, shared-input groups, blocked layers in files, the engine's parallel loop."""

    def layer(self, pl, w=None, bias=None, ctx=None, **kw):
        q = dq.QMatrix.pack_transformed(lib, pl, self.w if w is None else w, group_size=16,
                                        ctx=self.ctx)
        return dq.Linear(lib, q, pl, self.bias if bias is None else bias,
                         ctx=ctx or self.ctx, **kw)

    def test_fingerprints(self):
        pl = self.plan()
        fp = pl.fingerprint()
        self.assertNotEqual(fp, 0)
        self.assertEqual(pl.fingerprint(), fp)
        self.assertEqual(self.plan().fingerprint(), fp)  # rebuilt from the same data
        fw = dq.FileWriter(lib)
        fw.add_plan("p", pl)
        self.assertEqual(dq.FileReader(lib, data=fw.to_bytes()).get_plan("p").fingerprint(), fp)
        self.assertNotEqual(self.plan(smooth_alpha=0.3).fingerprint(), fp)
        self.assertNotEqual(self.plan(block_size=32).fingerprint(), fp)
        self.assertNotEqual(dq.Plan.assemble(lib, self.C).fingerprint(), fp)
        # Packed matrices record it: transformed here, or named in the params.
        q = dq.QMatrix.pack_transformed(lib, pl, self.w, group_size=16, ctx=self.ctx)
        self.assertEqual(q.plan_fingerprint(), fp)
        wt = pl.transform_weight(self.w)
        plain = dq.QMatrix.pack(lib, wt, group_size=16)
        self.assertEqual(plain.plan_fingerprint(), 0)
        named = dq.QMatrix.pack(lib, wt, group_size=16, plan_fingerprint=fp)
        self.assertEqual(named.plan_fingerprint(), fp)
        for a, b in zip(q.view(), plain.view()):  # the same transform as plan.transform_weight
            np.testing.assert_array_equal(a, b)
        self.assertRaisesStatus("DQ_ERR_MISMATCH", dq.QMatrix.pack_transformed, lib, pl,
                                self.w, plan_fingerprint=fp ^ 1, ctx=self.ctx)
        self.assertRaisesStatus("DQ_ERR_SHAPE", dq.QMatrix.pack_transformed, lib, pl,
                                self.w[:, :32], ctx=self.ctx)

    def test_layer_refuses_another_plan(self):
        pl, other = self.plan(), self.plan(smooth_alpha=0.3)
        q = dq.QMatrix.pack_transformed(lib, pl, self.w, ctx=self.ctx)
        e = self.assertRaisesStatus("DQ_ERR_MISMATCH", dq.Linear, lib, q, other, self.bias,
                                    ctx=self.ctx)
        self.assertIsNotNone(e.log)
        self.assertIn("%016x" % pl.fingerprint(), e.log)
        self.assertIn("%016x" % other.fingerprint(), e.log)
        e = self.assertRaisesStatus("DQ_ERR_MISMATCH", dq.Linear, lib, q, None, ctx=self.ctx)
        self.assertIn("%016x" % pl.fingerprint(), e.log)
        dq.Linear(lib, q, self.plan(), self.bias)  # a rebuilt plan is the same plan
        # Weights packed without a fingerprint: accepted, with a warning.
        before = len(self.log)
        dq.Linear(lib, dq.QMatrix.pack(lib, pl.transform_weight(self.w)), pl, ctx=self.ctx)
        self.assertTrue(any(lvl == dq.DQ_LOG_WARN for lvl, _ in self.log[before:]), self.log)

    def test_layer_keeps_its_plan(self):
        pl = self.plan()
        lin = self.layer(pl)
        y = lin.forward(self.x)
        lin.plan = None  # drop the binding's reference: only the layer's own remains
        pl.close()  # dq_plan_free
        del pl
        gc.collect()
        np.testing.assert_array_equal(lin.forward(self.x), y)

    def test_zero_rows(self):
        lin = self.layer(self.plan())
        self.assertEqual(lin.workspace_size(0), 0)
        y = lin.forward(np.zeros((0, self.C), np.float32))
        self.assertEqual(y.shape, (0, self.O))
        self.assertEqual(dq.Linear.group_workspace_size([lin, lin], 0), 0)
        ys = dq.Linear.forward_group([lin, lin], np.zeros((0, self.C), np.float32))
        self.assertEqual([a.shape for a in ys], [(0, self.O)] * 2)

    def test_group_forward_equals_separate(self):
        pl = self.plan()
        rng = np.random.default_rng(11)
        outs = (self.O, 40, 8)
        layers = [self.layer(pl, w=(rng.standard_normal((o, self.C)) * 0.1).astype(np.float32),
                             bias=rng.standard_normal(o).astype(np.float32)) for o in outs]
        want = [lin.forward(self.x) for lin in layers]
        got = dq.Linear.forward_group(layers, self.x)
        self.assertEqual(len(got), 3)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        ws = dq.Linear.group_workspace_size(layers, self.T)
        self.assertGreater(ws, 0)
        out = [np.full((self.T, o + 5), np.nan, np.float32)[:, :o] for o in outs]  # strided
        got = dq.Linear.forward_group(layers, self.x, work=bytearray(ws), out=out)
        for g, o, w in zip(got, out, want):
            self.assertIs(g, o)
            np.testing.assert_array_equal(g, w)
        got = dq.Linear.forward_group(layers, self.x[:7], work=bytearray(ws))  # fewer rows
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w[:7])
        # Layers that cannot share their input.
        a8 = self.layer(pl, act_bits=8)
        self.assertRaisesStatus("DQ_ERR_MISMATCH", dq.Linear.forward_group, [layers[0], a8],
                                self.x)
        self.assertRaisesStatus("DQ_ERR_MISMATCH", dq.Linear.group_workspace_size,
                                [layers[0], a8], self.T)
        self.assertRaisesStatus("DQ_ERR_SHAPE", dq.Linear.forward_group, layers,
                                self.x[:, :32])
        self.assertRaises(ValueError, dq.Linear.forward_group, [], self.x)

    def test_pack_clipped(self):
        per_row = np.linspace(0.5, 1.0, self.O).astype(np.float32)
        per_group = np.repeat(per_row, 4)  # 64 columns, groups of 16
        a = dq.QMatrix.pack_clipped(lib, self.w, clip_hi=per_row, clip_lo=per_row,
                                    group_size=16, ctx=self.ctx)
        b = dq.QMatrix.pack_clipped(lib, self.w, clip_hi=per_group, clip_lo=per_group,
                                    group_size=16)
        for u, v in zip(a.view(), b.view()):
            np.testing.assert_array_equal(u, v)
        plain = dq.QMatrix.pack(lib, self.w, group_size=16)
        self.assertFalse(np.array_equal(a.view()[1], plain.view()[1]))  # clipping was applied
        none = dq.QMatrix.pack_clipped(lib, self.w, group_size=16)
        np.testing.assert_array_equal(none.view()[1], plain.view()[1])
        for n in (self.O - 1, self.O + 1, self.O * 4 + 1):
            self.assertRaisesStatus("DQ_ERR_SHAPE", dq.QMatrix.pack_clipped, lib, self.w,
                                    clip_hi=np.full(n, 0.5, np.float32), group_size=16,
                                    ctx=self.ctx)
        self.assertRaisesStatus("DQ_ERR_SHAPE", dq.QMatrix.pack, lib, self.w,
                                clip_hi=np.full(3, 0.5, np.float32), ctx=self.ctx)
        self.assertRaises(ValueError, dq.QMatrix.pack_clipped, lib, self.w,
                          clip_hi=per_row, clip_lo=per_group)
        # pack_transformed takes per-row factors too (repeated for each group).
        pl = self.plan()
        t = dq.QMatrix.pack_transformed(lib, pl, self.w, clip_hi=per_row, clip_lo=per_row,
                                        group_size=16)
        u = dq.QMatrix.pack_clipped(lib, pl.transform_weight(self.w), clip_hi=per_group,
                                    clip_lo=per_group, group_size=16)
        for x, y in zip(t.view(), u.view()):
            np.testing.assert_array_equal(x, y)
        self.assertRaises(ValueError, dq.QMatrix.pack_transformed, lib, pl, self.w,
                          clip_hi=np.ones(5, np.float32))

    def test_blocked_layer_through_borrowing_reader(self):
        pl = self.plan()
        lin = self.layer(pl)
        lin8 = self.layer(pl, act_bits=8)
        y, y8 = lin.forward(self.x), lin8.forward(self.x)
        fw = dq.FileWriter(lib, ctx=self.ctx)
        fw.add_plan("l0.in", pl)
        fw.add_linear_layer("l0.q", lin, plan_prefix="l0.in")
        fw.add_linear_layer("l0.k", lin8, plan_prefix="l0.in")
        self.assertRaisesStatus("DQ_ERR_INVALID_ARG", fw.add_linear_layer, "l0.q", lin,
                                plan_prefix="l0.in")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.safetensors")
            fw.save(path)
            r = dq.FileReader(lib, path=path, borrow=True, ctx=self.ctx)
            self.assertEqual(r.metadata("format_version"), "3")
            pl2 = r.get_plan("l0.in")
            self.assertEqual(pl2.fingerprint(), pl.fingerprint())
            self.assertEqual(r.linear_plan_prefix("l0.q"), "l0.in")
            got = r.get_linear("l0.q", pl2, ctx=self.ctx)
            got8 = r.get_linear("l0.k", pl2)
            np.testing.assert_array_equal(got.forward(self.x), y)
            np.testing.assert_array_equal(got8.forward(self.x), y8)
            q = r.get_qmatrix("l0.q.weight")  # the packed matrix back exactly
            for a, b in zip(q.view(), dq.QMatrix.pack_transformed(lib, pl, self.w,
                                                                  group_size=16).view()):
                np.testing.assert_array_equal(a, b)
            self.assertRaisesStatus("DQ_ERR_MISMATCH", r.get_linear, "l0.q",
                                    self.plan(smooth_alpha=0.3), ctx=self.ctx)
            # A copying reader of the same file gives the same layer.
            np.testing.assert_array_equal(
                dq.FileReader(lib, path=path).get_linear("l0.q", pl2).forward(self.x), y)
            # The reader closed (and the file removed): the layers still read the mapping.
            r.close()
            self.assertRaises(ValueError, r.count)
        del r
        gc.collect()
        np.testing.assert_array_equal(got.forward(self.x), y)
        np.testing.assert_array_equal(dq.Linear.forward_group([got], self.x)[0], y)
        # From a borrowed buffer: the bytes stay alive with the layer.
        br = dq.FileReader(lib, data=fw.to_bytes(), borrow=True)
        lb = br.get_linear("l0.q", br.get_plan("l0.in"))
        br.close()
        del br
        gc.collect()
        np.testing.assert_array_equal(lb.forward(self.x), y)


    def test_half_matrices(self):
        """DQ_CONTEXT_F_HALF_MATRICES: layers on a plan made with such a context read its
        rotation matrices rounded to half precision: the plan is the same, the layer's output
        moves far less than its own 4-bit error, and batches give token-by-token's bits."""
        half = dq.Context(lib, n_threads=2, flags=dq.DQ_CONTEXT_F_HALF_MATRICES)
        calib = dq.Calibrator(lib, self.C, ctx=half, sample_tokens=self.T)
        calib.observe(self.x)
        pl_half = dq.Plan.build(lib, calib, lib.weight_absmax(self.w), ctx=half,
                                block_size=16, max_rotation_step=16)
        pl = self.plan()
        self.assertEqual(pl_half.fingerprint(), pl.fingerprint())
        y = self.layer(pl).forward(self.x)
        lin = self.layer(pl_half, ctx=half)
        yh = lin.forward(self.x)
        exact = self.x @ self.w.T + self.bias
        self.assertFalse(np.array_equal(yh, y))
        self.assertLess(np.linalg.norm(yh - y), 0.25 * np.linalg.norm(y - exact))
        rows = np.vstack([lin.forward(self.x[i:i + 1]) for i in range(self.T)])
        np.testing.assert_array_equal(rows, yh)
        self.assertRaisesStatus("DQ_ERR_INVALID_ARG", dq.Context, lib, flags=2)

    def test_context_parallel(self):
        """dq_context_parallel: every task once, on a worker of the pool and on the caller."""
        seen, lock = [], threading.Lock()

        def task(t, n):
            with lock:
                seen.append((t, n, threading.get_ident()))
        self.ctx.parallel(task, 7)
        self.assertEqual(sorted(s[:2] for s in seen), [(t, 7) for t in range(7)])
        idents = {s[2] for s in seen}
        self.assertEqual(len(idents), 2, idents)  # n_threads=2
        self.assertIn(threading.get_ident(), idents)
        seen.clear()
        self.ctx.parallel(task, 0)
        self.assertEqual(seen, [])
        self.assertRaisesStatus("DQ_ERR_INVALID_ARG", self.ctx.parallel, task, -1)

        def fails(t, n):
            task(t, n)
            if t == 3:
                raise KeyError(t)
        with self.assertRaises(KeyError):
            self.ctx.parallel(fails, 7)
        self.assertEqual(sorted(s[0] for s in seen), list(range(7)))  # the others still ran


class TestGptqAndKv(Fixture):
    """Hessians, GPTQ packing and the key/value cache (since 1.2)."""

    def rtn_and_gptq_errors(self, plan=None):
        h = dq.Hessian(lib, self.C, plan=plan, ctx=self.ctx)
        h.observe(self.x)
        g = dq.QMatrix.gptq(lib, h, self.w, gptq={"flags": dq.DQ_GPTQ_F_ACT_ORDER}, ctx=self.ctx)
        xt = plan.apply_act(self.x) if plan is not None else self.x
        wt = plan.transform_weight(self.w) if plan is not None else self.w
        r = dq.QMatrix.pack(lib, wt)
        ref = self.x.astype(np.float64) @ self.w.T.astype(np.float64)
        return (rel(xt.astype(np.float64) @ r.dequantize().T.astype(np.float64), ref),
                rel(xt.astype(np.float64) @ g.dequantize().T.astype(np.float64), ref))

    def test_hessian(self):
        h = dq.Hessian(lib, self.C, ctx=self.ctx)
        h.observe(self.x[:7])
        h.observe(self.x[7:])
        self.assertEqual(h.tokens(), self.T)
        whole = dq.Hessian(lib, self.C, ctx=self.ctx)
        whole.observe(self.x)
        np.testing.assert_array_equal(h.matrix(), whole.matrix())  # any split: the same bits
        x64 = self.x.astype(np.float64)
        np.testing.assert_allclose(h.matrix(), x64.T @ x64, rtol=1e-12, atol=1e-9)
        other = dq.Hessian(lib, self.C, ctx=self.ctx)
        other.observe(self.x[:5])
        h.merge(other)
        self.assertEqual(h.tokens(), self.T + 5)
        self.assertRaisesStatus("DQ_ERR_SHAPE", h.observe, self.x[:, :-1])
        self.assertRaisesStatus("DQ_ERR_SHAPE", h.merge, dq.Hessian(lib, self.C - 1))
        self.assertRaisesStatus("DQ_ERR_SHAPE", dq.Hessian, lib, 0, ctx=self.ctx)

    def test_gptq_beats_rtn(self):
        for plan in (None, self.plan()):
            rtn, gptq = self.rtn_and_gptq_errors(plan)
            self.assertLess(gptq, rtn, "with plan" if plan is not None else "without plan")

    def test_gptq_layer_and_errors(self):
        pl = self.plan()
        h = dq.Hessian(lib, self.C, plan=pl, ctx=self.ctx)
        h.observe(self.x)
        q = dq.QMatrix.gptq(lib, h, self.w, group_size=16, ctx=self.ctx,
                            gptq=lib.params(dq.GptqParams, flags=dq.DQ_GPTQ_F_CLIP_SEARCH))
        self.assertEqual(q.layout().group_size, 16)
        lin = dq.Linear(lib, q, plan=pl, act_bits=8, ctx=self.ctx)
        y = lin.forward(self.x)
        self.assertLess(rel(y, self.x @ self.w.T), 0.1)
        empty = dq.Hessian(lib, self.C, ctx=self.ctx)
        self.assertRaisesStatus("DQ_ERR_BAD_STATE", dq.QMatrix.gptq, lib, empty, self.w)
        self.assertRaisesStatus("DQ_ERR_SHAPE", dq.QMatrix.gptq, lib, h, self.w[:, :-1])
        self.assertRaisesStatus("DQ_ERR_SHAPE", dq.QMatrix.gptq, lib, h, self.w,
                                group_size=self.C + 1)
        # A group size that does not divide the width: the last group is shorter.
        q7 = dq.QMatrix.gptq(lib, h, self.w, group_size=7, ctx=self.ctx)
        self.assertEqual(q7.layout().group_size, 7)
        self.assertRaisesStatus("DQ_ERR_INVALID_ARG", dq.QMatrix.gptq, lib, h, self.w,
                                gptq={"damp": 2.0})

    def test_kv_cache_round_trip(self):
        heads, size, tokens = 3, 16, 5
        x = activations(self.rng, tokens, heads * size, (1, 20))
        for bits in (4, 8):
            kv = dq.KvCache(lib, 8, heads, size, bits=bits)
            self.assertEqual(kv.buffer.size, kv.size(8))
            self.assertEqual(kv.size(8), 8 * kv.size(1))
            kv.store(x, first=2)
            for hd in range(heads):
                xh = x[:, hd * size:(hd + 1) * size]
                codes, scales, zeros = np_quant(xh, bits=bits)
                np.testing.assert_array_equal(kv.load(hd, 2, tokens),
                                              np_dequant(codes, scales, zeros))
            self.assertFalse(kv.buffer[:2 * kv.size(1)].any())  # tokens 0 and 1 untouched

    def test_kv_rotation_keeps_products(self):
        heads, size = 2, 32
        k = activations(self.rng, 6, heads * size, (4,))
        q = activations(self.rng, 3, heads * size, (4,))
        kv = dq.KvCache(lib, 6, heads, size, bits=8, rotate=True)
        kv.store(k, first=0)
        qr = kv.rotate_queries(q)
        for hd in range(heads):
            sl = slice(hd * size, (hd + 1) * size)
            exact = q[:, sl].astype(np.float64) @ k[:, sl].T.astype(np.float64)
            got = qr[:, sl].astype(np.float64) @ kv.load(hd, 0, 6).T.astype(np.float64)
            self.assertLess(rel(got, exact), 0.02)
            h = lib.hadamard(size).astype(np.float64)  # already orthonormal
            np.testing.assert_allclose(qr[:, sl], q[:, sl] @ h, rtol=1e-5, atol=1e-4)

    def test_kv_errors(self):
        kv = dq.KvCache(lib, 2, 2, 16)
        x = np.ones((3, 32), np.float32)
        self.assertRaisesStatus("DQ_ERR_BUFFER", kv.store, x, 0)
        self.assertRaisesStatus("DQ_ERR_SHAPE", kv.store, x[:1], -1)
        self.assertRaisesStatus("DQ_ERR_INVALID_ARG", kv.load, 2, 0, 1)
        bad = x[:1].copy()
        bad[0, 3] = np.nan
        before = kv.buffer.copy()
        self.assertRaisesStatus("DQ_ERR_NONFINITE", kv.store, bad, 0)
        np.testing.assert_array_equal(kv.buffer, before)  # all or nothing
        self.assertRaisesStatus("DQ_ERR_INVALID_ARG", dq.KvCache, lib, 2, 2, 16, bits=3)
        self.assertRaisesStatus("DQ_ERR_UNSUPPORTED", dq.KvCache(lib, 2, 1, 12,
                                                               rotate=True).store,
                                np.ones((1, 12), np.float32), 0)


class TestParallelFor(unittest.TestCase):
    """The engine's parallel loop (dq_context_params.parallel_for): same bits, really used."""
    T, C, O = 512, 256, 192

    def run_flow(self, ctx):
        rng = np.random.default_rng(3)
        x = activations(rng, self.T, self.C, (5, 100, 200))
        w = (rng.standard_normal((self.O, self.C)) * 0.1).astype(np.float32)
        calib = dq.Calibrator(lib, self.C, ctx=ctx, sample_tokens=self.T)
        calib.observe(x)
        pl = dq.Plan.build(lib, calib, lib.weight_absmax(w), ctx=ctx, block_size=64,
                           max_rotation_step=32)
        q = dq.QMatrix.pack_transformed(lib, pl, w, ctx=ctx, group_size=64)
        lin = dq.Linear(lib, q, pl, ctx=ctx)
        lin16 = dq.Linear(lib, q, pl, ctx=ctx, act_bits=0)
        return [pl.apply_act(x), q.dequantize(), lin.forward(x), lin16.forward(x)] + \
            dq.Linear.forward_group([lin, lin], x)

    def check(self, ctx, want):
        got = self.run_flow(ctx)
        self.assertEqual(len(got), len(want))
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)

    def test_engine_loops(self):
        want = self.run_flow(dq.Context(lib, n_threads=1))
        calls, threads = [], set()
        lock, inside = threading.Lock(), threading.local()

        def record(n):
            with lock:
                calls.append(n)

        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="engine") as pool:
            def on_pool(run_task, n_tasks):
                record(n_tasks)
                if getattr(inside, "busy", False):  # nested in a task: no waiting on the pool
                    for t in range(n_tasks):
                        run_task(t)
                    return

                def one(t):
                    inside.busy = True
                    threads.add(threading.current_thread().name)
                    try:
                        run_task(t)
                    finally:
                        inside.busy = False
                list(pool.map(one, range(n_tasks)))
            ctx = dq.Context(lib, n_threads=4, parallel_for=on_pool)
            self.check(ctx, want)
        self.assertTrue(calls)
        self.assertGreater(max(calls), 1, calls)
        self.assertLessEqual(max(calls), 4, calls)  # n_threads bounds the tasks of a loop
        self.assertTrue(threads and all(t.startswith("engine") for t in threads), threads)
        self.assertEqual(list(ctx.parallel_errors), [])

        order = []

        def backwards(run_task, n_tasks):
            for t in reversed(range(n_tasks)):
                order.append((t, n_tasks))
                run_task(t)
        self.check(dq.Context(lib, n_threads=3, parallel_for=backwards), want)
        self.assertTrue(any(a[1] > 1 and a == (a[1] - 1, a[1]) and b == (a[1] - 2, a[1])
                            for a, b in zip(order, order[1:])), order[:4])  # last task first

        # A callable that fails or runs nothing: the binding runs the tasks left, results hold.
        def broken(run_task, n_tasks):
            run_task(n_tasks - 1)
            run_task(n_tasks - 1)  # twice: refused
        ctx = dq.Context(lib, n_threads=2, parallel_for=broken)
        self.check(ctx, want)
        self.assertTrue(ctx.parallel_errors)
        self.assertIsInstance(ctx.parallel_errors[0], ValueError)
        self.check(dq.Context(lib, n_threads=2, parallel_for=lambda run_task, n: None), want)
        # Objects keep the context (and so its callbacks) alive.
        ctx = dq.Context(lib, n_threads=2, parallel_for=backwards)
        x = activations(np.random.default_rng(1), self.T, self.C)
        pl = dq.Plan.from_sample(lib, x, block_size=64, flags=dq.DQ_PLAN_F_ROTATE)
        q = dq.QMatrix.pack_transformed(lib, pl, np.eye(self.C, dtype=np.float32))
        lin = dq.Linear(lib, q, pl, ctx=ctx)
        del ctx
        gc.collect()
        n = len(order)
        np.testing.assert_array_equal(lin.forward(x), dq.Linear(lib, q, pl).forward(x))
        self.assertGreater(len(order), n)


def main():
    global LIB_PATH, lib
    args = sys.argv[1:]
    if args and not args[0].startswith("-"):
        LIB_PATH = args.pop(0)
    LIB_PATH = LIB_PATH or os.environ.get("DUQUANT_LIB") or "libduquant.so.1"
    lib = dq.Library(LIB_PATH)
    print("libduquant %s from %s (python %s, numpy %s)" % (lib.version(), LIB_PATH,
                                                          sys.version.split()[0], np.__version__))
    if lib.missing:
        print("not in this library: " + ", ".join(lib.missing))
    # Record every C function the binding calls (free functions included).
    called = set()
    for name in dq._SIGNATURES:
        if name not in lib.missing:
            def counted(*a, _f=getattr(lib.lib, name), _n=name):
                called.add(_n)
                return _f(*a)
            setattr(lib.lib, name, counted)
    result = unittest.main(argv=[sys.argv[0]] + args, verbosity=2, exit=False).result
    if not result.wasSuccessful():
        return 1
    if len(args) == 0:  # the whole suite ran: every wrapped function must have been called
        never = sorted(set(dq._SIGNATURES) - set(lib.missing) - called)
        if never:
            print("FAIL: wrapped but never called: " + ", ".join(never))
            return 1
        print("all %d wrapped functions called" % len(called))
    return 0


if __name__ == "__main__":
    sys.exit(main())
