#!/usr/bin/python3
"""libduquant from Python through ctypes: build a DuQuant plan from a calibration sample, check
that x * W^T is unchanged by the transform, pack the weights to INT4, save everything to one
file and load it back.

Usage: demo.py [path/to/libduquant.so]   (or set DUQUANT_LIB)
Exit status: 0 when every check passes, 1 otherwise, 77 when numpy is missing.
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import duquant as dq  # noqa: E402

if dq.np is None:
    print("numpy not available: skipped")
    sys.exit(77)
np = dq.np


def main():
    lib = dq.Library(sys.argv[1] if len(sys.argv) > 1 else None)
    print("libduquant", lib.version())
    rng = np.random.default_rng(1)
    tokens, cin, cout = 64, 48, 24
    x = rng.laplace(size=(tokens, cin)).astype(np.float32)
    x[:, 5] *= 30.0  # an outlier channel, as in real LLM activations
    w = (rng.standard_normal((cout, cin)) * 0.1).astype(np.float32)
    bias = np.linspace(-1, 1, cout).astype(np.float32)
    ok = True

    def check(cond, what):
        nonlocal ok
        ok &= bool(cond)
        print(("ok   " if cond else "FAIL ") + what)

    # Offline: plan from the calibration sample, transformed and packed weights.
    params = lib.plan_params(block_size=16, max_rotation_step=16)
    plan = dq.Plan.from_sample(lib, x, lib.weight_absmax(w), params)
    check(plan.width() == cin, "plan width %d" % plan.width())
    xt, wt = plan.apply(x), plan.transform_weight(w)
    y = x.astype(np.float64) @ w.T.astype(np.float64)
    yt = xt.astype(np.float64) @ wt.T.astype(np.float64)
    rel = np.linalg.norm(yt - y) / np.linalg.norm(y)
    check(rel < 1e-5, "x*W^T invariant under the plan: rel. error %.2e (tolerance 1e-5)" % rel)
    ratio = np.abs(x).max() / np.abs(xt).max()
    print("     activation max |x| %.1f -> %.1f after the plan (%.1fx smaller)"
          % (np.abs(x).max(), np.abs(xt).max(), ratio))
    q = dq.QMatrix.pack(lib, wt, lib.quant_params(bits=4, group_size=16))
    wq = q.dequantize(like=wt)
    werr = np.linalg.norm(wq - wt) / np.linalg.norm(wt)
    check(werr < 0.2, "INT4 weights: rel. error %.3f (tolerance 0.2)" % werr)

    # Save plan + weights + bias in one file and load them back.
    writer = dq.FileWriter(lib)
    writer.add_metadata("model", "demo")
    writer.add_plan("layers.0.in", plan)
    writer.add_qmatrix("layers.0.w", q)
    writer.add_tensor("layers.0.bias", bias.tolist(), [cout])
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "layer.safetensors")
        writer.save(path)
        with open(path, "rb") as f:
            check(f.read() == writer.to_bytes(), "saved file equals the in-memory form")
        reader = dq.FileReader(lib, path=path)
    check(reader.metadata("format") == "duquant", "format metadata")
    check(reader.metadata("model") == "demo", "user metadata")
    plan2, q2 = reader.plan("layers.0.in"), reader.qmatrix("layers.0.w")
    b2, shape = reader.tensor("layers.0.bias")
    check(shape == [cout] and np.array_equal(np.array(b2, np.float32), bias), "bias round trip")
    check(np.array_equal(plan2.apply(x), xt), "loaded plan gives the same activations")
    check(np.array_equal(q2.dequantize(like=wt), wq), "loaded weights dequantize the same")

    # The quantized layer in float arithmetic: y ~ Q(x*G) * Q(W*G^-T)^T + b (weights only here).
    yq = xt @ q2.dequantize(like=wt).T + bias
    err = np.linalg.norm(yq - (y + bias)) / np.linalg.norm(y + bias)
    check(err < 0.2, "W4 layer output: rel. error %.3f (tolerance 0.2)" % err)

    try:
        dq.FileReader(lib, data=b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
        check(False, "malformed file rejected")
    except dq.DuquantError as e:
        check(e.name == "DQ_ERR_FORMAT", "malformed file rejected with %s" % e.name)
    print("all checks passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
