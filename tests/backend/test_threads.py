"""The CPU kernels split over threads (gpucnn.backend.cpu.threads) give the bits of the serial
kernels, whatever the number of threads; one setting sizes BLAS and the kernels; the Trainer's
sharded step runs them serially (its shards have the cores); errors reach the caller."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import functional as F
from gpucnn.backend import cpu
from gpucnn.backend.cpu import threads
from tests.helpers import assert_product_close


@pytest.fixture
def split_everything(monkeypatch):
    """Three threads and no minimum size: every kernel below really splits."""
    monkeypatch.setattr(threads, "GRAIN", 1)
    monkeypatch.setattr(threads, "_setting", [3])


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _kernel_outputs(monkeypatch):
    """Every split kernel once, on shapes with more items than threads."""
    x = _rand(5, 4, 7, 6)
    w = _rand(6, 4, 3, 3)
    out = {}
    out["relu"] = cpu.relu_fwd(x)
    out["relu_bwd"] = cpu.relu_bwd(x, out["relu"])
    out["dropout"] = cpu.dropout_fwd(x, 0.3, 1234, start=7)
    out["xent"] = cpu.softmax_xent_fwd(_rand(9, 10), np.arange(9) % 10)
    y, arg = cpu.maxpool2d_fwd(x, 2, 2, 0)
    out["maxpool2x2"] = (y, arg, cpu.maxpool2d_bwd(y, arg, x.shape, 2, 2, 0))
    y, arg = cpu.maxpool2d_fwd(x, 3, 2, 1)
    out["maxpool"] = (y, arg, cpu.maxpool2d_bwd(y, arg, x.shape, 3, 2, 1))
    y = cpu.avgpool2d_fwd(x, 3, 2, 1)
    out["avgpool"] = (y, cpu.avgpool2d_bwd(y, x.shape, 3, 2, 1))
    cols = cpu.im2col(x, 3, 1, 1)  # the stride-1 "same" kernels
    out["im2col_same"] = (cols, cpu.col2im(cols.copy(), x.shape, 3, 1, 1, overwrite_cols=True))
    cols = cpu.im2col(x, 3, 2, 0)
    out["im2col"] = (cols, cpu.col2im(cols, x.shape, 3, 2, 0))
    yt = _rand(6, 5, 7, 6, seed=1)
    y, arg = cpu.conv_relu_pool2x2_fwd(yt, _rand(6, seed=2))
    out["fused"] = (y, arg, *cpu.conv_relu_pool2x2_bwd(y, arg, y, (7, 6)))
    gamma, beta = _rand(4, seed=3), _rand(4, seed=4)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    y, saved = cpu.batchnorm2d_fwd(x, gamma, beta, rm, rv, True, 0.1, 1e-5)
    out["batchnorm"] = (y, rm, rv, *cpu.batchnorm2d_bwd(x, saved, gamma, True))
    for m in (2, 4):
        monkeypatch.setattr(cpu, "WINOGRAD_TILE", m)
        yw, cw = F.conv2d_forward(x, w, None, 1, 1, algorithm="winograd")
        out[f"winograd{m}"] = (yw, *F.conv2d_backward(yw, cw))
        yp, cp = F.conv2d_relu_maxpool_forward(x, w, _rand(6, seed=5), 1, 1, "winograd")
        out[f"winograd{m}_pool"] = (yp, *F.conv2d_relu_maxpool_backward(yp, cp))
    p = [_rand(40, seed=s) for s in range(5)]
    cpu.adam_update(p[0], p[1], p[2], np.abs(p[3]), np.abs(p[4]), step_size=1e-3, beta1=0.9,
                    beta2=0.999, bias_correction2=0.5, eps=1e-8, weight_decay=1e-4)  # fmt: skip
    out["adam"] = p
    q = [_rand(40, seed=s) for s in range(3)]
    cpu.sgd_update(q[0], q[1], q[2], first=False, lr=0.1, momentum=0.9, dampening=0.0,
                   weight_decay=1e-4, nesterov=True)  # fmt: skip
    out["sgd"] = q
    return out


def _flatten(value):
    if isinstance(value, tuple | list):
        return [a for v in value for a in _flatten(v)]
    return [np.asarray(value)]


def test_split_kernels_give_the_serial_bits(split_everything, monkeypatch):
    split = _kernel_outputs(monkeypatch)
    monkeypatch.setattr(threads, "_setting", [1])
    serial = _kernel_outputs(monkeypatch)
    assert split.keys() == serial.keys()
    for name in split:
        for a, b in zip(_flatten(split[name]), _flatten(serial[name]), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "transpose"),
    [
        ((32, 9), (9, 6272), None),  # conv1's forward GEMM: split by columns
        ((64, 3136), (128, 3136), "b"),  # the first linear layer, x @ W.T
        ((128, 64), (64, 3136), None),
        ((36, 512, 32), (36, 32, 64), None),  # Winograd's batched products
        ((36, 512, 32), (36, 512, 64), "a"),  # and its weight gradient, V.T @ dM
        ((32, 6272), (9, 6272), "b"),  # conv1's weight gradient: split by rows
    ],
)
def test_split_products_match_the_single_threaded_one(split_everything, monkeypatch, a_shape,
                                                      b_shape, transpose):  # fmt: skip
    """A split product is the unsplit one to float32 rounding, and the same bits run to run.

    Not the unsplit product's bits: a range is a narrower product, for which OpenBLAS may pick
    another kernel or block K differently (its Haswell kernels do, for column ranges too).
    """
    import importlib

    gemm = importlib.import_module("gpucnn.backend.cpu.gemm")  # the module (cpu.gemm: its GEMM)
    monkeypatch.setattr(gemm, "MIN_SPLIT_MACS", 1)
    g = np.random.default_rng(0)
    a = g.standard_normal(a_shape).astype(np.float32)
    b = g.standard_normal(b_shape).astype(np.float32)
    if transpose == "a":
        a = a.transpose(0, 2, 1)  # a view, as the layers pass it
    elif transpose == "b":
        b = b.T
    with threads.blas_single():
        want = a @ b
    got = gemm.matmul(a, b)
    assert got.dtype == want.dtype == np.float32
    assert_product_close(got, a, b, want=want)
    assert_product_close(got, a, b)  # and to the exact product
    np.testing.assert_array_equal(gemm.matmul(a, b), got)  # repeatable: the same ranges


def test_the_rounding_tolerance_catches_a_product_gone_wrong():
    g = np.random.default_rng(1)
    a = g.standard_normal((16, 288)).astype(np.float32)
    b = g.standard_normal((288, 40)).astype(np.float32)
    good = a @ b
    assert_product_close(good, a, b)
    wrong = good.copy()
    wrong[:, 7] = good[:, 8]  # another column
    with pytest.raises(AssertionError, match="1[0-9] of 640 elements"):
        assert_product_close(wrong, a, b)
    short = a[:, :-1] @ b[:-1]  # a missed term
    with pytest.raises(AssertionError, match="elements differ"):
        assert_product_close(short, a, b)


def test_split_really_runs_ranges_in_other_threads(split_everything):
    import threading

    seen = []

    def record(out, lo, hi):
        seen.append((lo, hi, threading.current_thread().name))
        out[lo:hi] = threading.get_ident()

    out = np.zeros(9, np.int64)
    threads.split(record, 9, out)
    assert sorted(r[:2] for r in seen) == [(0, 3), (3, 6), (6, 9)]
    assert {r[2] for r in seen} >= {"gpucnn-kernel"} and len(set(out)) == 3


def test_a_range_that_fails_raises_in_the_caller(split_everything):
    def fail_late(lo, hi):
        if lo > 0:
            raise ZeroDivisionError(f"range {lo}-{hi}")

    with pytest.raises(ZeroDivisionError, match="range"):
        threads.split(fail_late, 6)
    threads.split(lambda lo, hi: None, 6)  # the workers still serve


def test_one_setting_sizes_blas_and_the_kernels(monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    monkeypatch.setattr(threads, "_setting", [None])
    with threadpool_limits(limits=None):  # put BLAS back afterwards
        threads.set_num_threads(1)
        assert threads.get_num_threads() == 1
        assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == {1}
    with pytest.raises(ValueError, match="positive integer, got 0"):
        threads.set_num_threads(0)
    with threads.limit(1):
        assert threads.get_num_threads() == 1


def test_the_sharded_step_runs_the_kernels_serially(monkeypatch):
    from gpucnn import models, nn
    from gpucnn.train.parallel import DataParallel

    monkeypatch.setattr(threads, "_setting", [2])
    seen = []
    real = threads.split

    def spy(fn, items, *args, **kwargs):
        seen.append(threads.get_num_threads())
        return real(fn, items, *args, **kwargs)

    monkeypatch.setattr(threads, "split", spy)
    with DataParallel(models.build("seed", seed=0), nn.CrossEntropyLoss(), 2) as dp:
        dp.step(_rand(16, 1, 28, 28), np.arange(16) % 10)
    assert seen and set(seen) == {1}  # every kernel of both shards: serial
    assert threads.get_num_threads() == 2  # and the setting is back afterwards


def test_blas_single_puts_blas_back_when_blocks_overlap_in_threads():
    """Blocks open in two threads at once: BLAS stays on one thread until the last one closes
    (here the caller's: OpenBLAS 0.3.31 ignored a raise from another thread)."""
    import threading

    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    with threadpool_limits(limits=2, user_api="blas"):
        seen, entered, left = [], threading.Event(), threading.Event()

        def other():
            with threads.blas_single():
                entered.set()
            left.set()

        with threads.blas_single():
            with threads.blas_single():  # nested in the same thread
                t = threading.Thread(target=other)
                t.start()
                entered.wait(5)
                left.wait(5)
                seen.append(blas_threads())  # the other block has closed: still one thread
            seen.append(blas_threads())
        t.join()
        assert seen == [{1}, {1}] and blas_threads() == {2}
