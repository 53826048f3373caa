#!/usr/bin/python3
"""libduquant from Python through ctypes, the whole flow on synthetic data: calibrate two
layers that read one input (q: 128 -> 128, k: 128 -> 64), build the DuQuant plan, train LWC,
pack the weights to INT4, make W4A4 layers, run them, save everything to one file, load it in a
fresh reader and check the loaded layers give the same output bit for bit.

Usage: demo.py [path/to/libduquant.so]   (or set DUQUANT_LIB)
Exit status: 0 when every check passes, 1 otherwise, 77 when numpy is missing.
"""
import os
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    print("numpy not available to %s: skipped (Debian: apt install python3-numpy)"
          % sys.executable)
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import duquant as dq  # noqa: E402

WIDTH, OUTS, TOKENS = 128, {"q": 128, "k": 64}, 512


def make_data(rng):
    def acts(n):
        x = rng.laplace(size=(n, WIDTH)).astype(np.float32)
        x[:, [5, 77]] *= 40.0             # outlier channels, as in real LLM activations
        x[::97] *= 8.0                    # and a few massive tokens
        return x
    ws = {k: (rng.standard_normal((o, WIDTH)) * 0.05).astype(np.float32) for k, o in OUTS.items()}
    bs = {k: rng.uniform(-0.1, 0.1, o).astype(np.float32) for k, o in OUTS.items()}
    return acts(TOKENS), acts(64), ws, bs


def rel(a, b):
    return float(np.linalg.norm(np.float64(a) - b) / np.linalg.norm(b))


def main():
    lib = dq.Library(sys.argv[1] if len(sys.argv) > 1 else None)
    print("libduquant", lib.version())
    ctx = dq.Context(lib, log=lambda lvl, msg: print("  [log %d] %s" % (lvl, msg)),
                     log_level=dq.DQ_LOG_WARN, n_threads=2)
    rng = np.random.default_rng(1)
    calib_x, test_x, ws, bs = make_data(rng)
    ok = True

    def check(cond, what):
        nonlocal ok
        ok &= bool(cond)
        print(("ok   " if cond else "FAIL ") + what)

    # 1. Calibrate the shared input, in chunks as a model would produce it.
    calib = dq.Calibrator(lib, WIDTH, ctx=ctx, sample_tokens=256)
    for i in range(0, TOKENS, 128):
        calib.observe(calib_x[i:i + 128])
    check(calib.tokens() == TOKENS, "calibrator saw %d tokens" % calib.tokens())

    # 2. One plan for the input: smoothing over the largest |W| of both layers.
    w_absmax = None
    for w in ws.values():
        w_absmax = lib.weight_absmax(w, accumulate=w_absmax)
    plan = dq.Plan.build(lib, calib, w_absmax, ctx=ctx, block_size=32, max_rotation_step=32)
    sample_t = plan.apply_act(calib.sample())
    print("     max |x| %.1f -> %.1f after the plan" % (np.abs(calib.sample()).max(),
                                                      np.abs(sample_t).max()))

    # 3-4. Per layer: transform, LWC on the transformed sample, pack (through the plan, which
    # the packed matrix records), make the W4A4 layer.
    layers, rtn = {}, {}
    for name, w in ws.items():
        wt = plan.transform_weight(w)
        lwc = dq.Lwc(lib, wt, sample_t, ctx=ctx, flags=dq.DQ_LWC_F_QUANT_ACT, epochs=10)
        start = lwc.loss()
        lwc.train()
        best = lwc.best()[2]
        check(best <= start, "%s: LWC loss %.3g -> %.3g" % (name, start, best))
        hi, lo = lwc.factors()
        packed = dq.QMatrix.pack_transformed(lib, plan, w, clip_hi=hi, clip_lo=lo)
        check(packed.plan_fingerprint() == plan.fingerprint(), "%s: packed for this plan" % name)
        layers[name] = dq.Linear(lib, packed, plan, bs[name], ctx=ctx)
        rtn[name] = dq.Linear(lib, dq.QMatrix.pack(lib, w), None, bs[name])  # plain RTN

    # 5. Forward on held-out tokens against the float product.
    outputs = {}
    for name, lin in layers.items():
        exact = test_x.astype(np.float64) @ ws[name].T.astype(np.float64) + bs[name]
        outputs[name] = lin.forward(test_x)
        err, err_rtn = rel(outputs[name], exact), rel(rtn[name].forward(test_x), exact)
        print("     %s: W4A4 relative output error %.4f (plain RTN %.4f)" % (name, err, err_rtn))
        check(err < err_rtn and err < 0.2, "%s: DuQuant beats RTN and stays under 0.2" % name)
    # q and k read the same input: one group call transforms and quantizes it once.
    grouped = dq.Linear.forward_group([layers[name] for name in OUTS], test_x)
    check(all(np.array_equal(g, outputs[name]) for g, name in zip(grouped, OUTS)),
          "group forward gives the separate outputs bit for bit")

    # 6. Save the plan once and both layers as they run (blocked layout), reload through a
    # mapping reader (the layers read their weights from the mapped file), same outputs.
    writer = dq.FileWriter(lib, ctx=ctx)
    writer.add_metadata("model", "python-demo")
    writer.add_plan("layers.0.attn_in", plan)
    for name in layers:
        writer.add_linear_layer("layers.0." + name, layers[name],
                                plan_prefix="layers.0.attn_in")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "demo.duquant.safetensors")
        writer.save(path)
        size = os.path.getsize(path)
        del writer, layers, plan  # nothing below uses the in-memory objects
        with dq.FileReader(lib, path=path, borrow=True, ctx=ctx) as reader:
            check(reader.metadata("model") == "python-demo", "file metadata (%d bytes, %d "
                  "tensors)" % (size, reader.count()[0]))
            plans = {}
            for name in OUTS:
                prefix = reader.linear_plan_prefix("layers.0." + name)
                if prefix not in plans:  # q and k share one plan
                    plans[prefix] = reader.get_plan(prefix, ctx=ctx)
                lin = reader.get_linear("layers.0." + name, plans[prefix], ctx=ctx)
                check(np.array_equal(lin.forward(test_x), outputs[name]),
                      "%s: reloaded layer gives the same output bit for bit" % name)
            check(len(plans) == 1, "one shared plan in the file")
    print("all checks passed" if ok else "FAILED")
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
