"""The CPU backend's fast paths against its general kernels (which the naive loops check).

The stride-1 "same" im2col/col2im and the 2×2 max pool take different code from the general
kernels; these tests pin them to the general ones, bit for bit where the math allows.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn.backend.cpu import pool, window

SAME_CASES = [  # (N, C, H, W, k, pad): 2*pad == k - 1, stride 1
    (2, 3, 5, 6, 3, 1),
    (1, 1, 1, 1, 3, 1),  # every tap but the centre falls outside
    (1, 2, 2, 3, 5, 2),  # the kernel is larger than the image
    (3, 2, 7, 4, 1, 0),
    (2, 1, 9, 8, 7, 3),
    (4, 5, 14, 14, 3, 1),  # the seed model's conv2, shrunk in N and C
]


@pytest.mark.parametrize("n, c, h, w, k, pad", SAME_CASES)
@pytest.mark.parametrize("pad_value", [0.0, -7.5])
def test_im2col_same_padding_path_matches_general_kernel(n, c, h, w, k, pad, pad_value):
    x = np.random.default_rng(0).standard_normal((n, c, h, w)).astype(np.float32)
    assert window._same(x.shape, k, 1, pad)
    ref = np.empty((c * k * k, n * h * w), np.float32)
    window._im2col(x, k, 1, pad, np.float32(pad_value), ref, 0, n)
    np.testing.assert_array_equal(window.im2col(x, k, 1, pad, pad_value), ref)


@pytest.mark.parametrize("n, c, h, w, k, pad", SAME_CASES)
def test_col2im_same_padding_path_matches_general_kernel(n, c, h, w, k, pad):
    cols = np.random.default_rng(1).standard_normal((c * k * k, n * h * w))
    ref = np.zeros((n, c, h, w))
    window._col2im(cols, k, 1, pad, ref, 0, n)
    kept = cols.copy()
    np.testing.assert_allclose(window.col2im(cols, (n, c, h, w), k, 1, pad), ref, rtol=1e-12)
    np.testing.assert_array_equal(cols, kept)  # without overwrite_cols, cols is left alone
    np.testing.assert_allclose(
        window.col2im(cols, (n, c, h, w), k, 1, pad, overwrite_cols=True), ref, rtol=1e-12
    )


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 1, 7, 5), (3, 2, 2, 2), (1, 4, 28, 28)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_2x2_path_matches_general_kernel(shape, dtype):
    g = np.random.default_rng(2)
    x = g.standard_normal(shape).astype(dtype)
    x.flat[g.choice(x.size, 5, replace=False)] = np.nan
    x.flat[g.choice(x.size, 5, replace=False)] = np.inf
    x.flat[g.choice(x.size, 5, replace=False)] = -np.inf
    x[0, 0, :2, :2] = [[1.0, 1.0], [1.0, 1.0]]  # a tie: the first element wins
    x[-1, -1, :2, :2] = [[-np.inf, -np.inf], [-np.inf, np.nan]]  # a NaN after -inf wins
    n, c, h, w = shape
    planes = x.reshape(n * c, h, w)
    y_ref = np.empty((n * c, h // 2, w // 2), dtype)
    arg_ref = np.empty(y_ref.shape, np.int32)
    pool._maxpool_fwd(planes, 2, 2, 0, y_ref, arg_ref, 0, len(planes))
    y, arg = pool.maxpool2d_fwd(x, 2, 2, 0)
    np.testing.assert_array_equal(y.reshape(y_ref.shape), y_ref)  # NaNs compare equal here
    np.testing.assert_array_equal(arg.reshape(arg_ref.shape), arg_ref)
    if n * c > 1:  # the tie and the NaN window are in different planes
        assert arg.reshape(-1)[0] == 0
    assert np.isnan(y[-1, -1, 0, 0]) and arg[-1, -1, 0, 0] == 3


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_masks_keep_1_minus_p_and_depend_only_on_the_key(p):
    from gpucnn.backend import cpu

    x = np.ones(200_000, np.float32)
    y = cpu.dropout_fwd(x, p, key=7)
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) < 0.005
    np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-6)  # inverted: E[y] = x
    np.testing.assert_array_equal(cpu.dropout_fwd(x, p, key=7), y)  # a pure function of the key
    other = cpu.dropout_fwd(x, p, key=8) != 0
    # masks under neighbouring keys are independent: they agree as often as chance says
    assert abs((kept == other).mean() - (p * p + (1 - p) ** 2)) < 0.005
    np.testing.assert_array_equal(cpu.dropout_bwd(x, p, key=7), y)  # backward: the same mask


def test_dropout_of_everything_and_of_nothing():
    from gpucnn.backend import cpu

    x = np.arange(1, 11, dtype=np.float64)
    assert not cpu.dropout_fwd(x, 1.0, key=3).any()
    np.testing.assert_array_equal(cpu.dropout_fwd(x, 0.0, key=3), x)


def test_softmax_cross_entropy_kernel_matches_the_formula_and_flags_bad_labels():
    from gpucnn.backend import cpu

    g = np.random.default_rng(3)
    z, labels = g.standard_normal((6, 4)) * 30, g.integers(0, 4, 6)
    loss, grad = cpu.softmax_xent_fwd(z, labels)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    np.testing.assert_allclose(loss, -logp[np.arange(6), labels].mean(), rtol=1e-12)
    onehot = np.eye(4)[labels]
    np.testing.assert_allclose(grad, (np.exp(logp) - onehot) / 6, rtol=1e-10, atol=1e-15)
    bad_loss, bad_grad = cpu.softmax_xent_fwd(z, np.array([0, 1, 2, 3, 4, 0]))
    assert np.isnan(bad_loss) and np.isnan(bad_grad[4]).all() and np.isfinite(bad_grad[5]).all()


def test_general_max_pool_padding_never_wins_and_the_first_nan_does():
    x = np.full((1, 1, 4, 4), -np.inf)  # padding (which reads as nothing) must not beat -inf
    x[0, 0, 2, 3] = np.nan
    x[0, 0, 3, 2] = np.nan
    y, arg = pool.maxpool2d_fwd(x, 3, 2, 1)
    assert y.shape == (1, 1, 2, 2)
    assert y[0, 0, 0, 0] == -np.inf and arg[0, 0, 0, 0] == 4  # window starts at (-1, -1)
    # window (1, 1) covers rows 1..3, cols 1..3: the NaN at (2, 3) comes first in row order
    assert np.isnan(y[0, 0, 1, 1]) and arg[0, 0, 1, 1] == 1 * 3 + 2
    dx = pool.maxpool2d_bwd(np.ones_like(y), arg, x.shape, 3, 2, 1)
    assert dx[0, 0, 2, 3] == 1 and dx[0, 0, 3, 2] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (7, 13, 5), (33, 65, 17), (5, 6, 700)])
def test_gemm_writes_alpha_op_a_op_b_plus_beta_out_in_place(m, n, k, trans_a, trans_b, dtype):
    from gpucnn.backend import cpu

    g = np.random.default_rng(4)
    a = g.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = g.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    prod = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    tol = {"rtol": 1e-5, "atol": 1e-6 * k} if dtype == np.float32 else {"rtol": 1e-12}
    out = np.full((m, n), np.nan, dtype)  # beta = 0: out is never read
    assert cpu.gemm(a, b, out, trans_a, trans_b) is out
    np.testing.assert_allclose(out, prod, **tol)
    c = g.standard_normal((m, n)).astype(dtype)
    out = c.copy()
    cpu.gemm(a, b, out, trans_a, trans_b, alpha=-0.5, beta=2.0)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, -0.5 * prod + 2.0 * c, **tol)
    assert cpu.gemm_workspace_size(m, n, k) == 0  # nothing splits K on the CPU


def test_gemm_refuses_shapes_and_dtypes_that_do_not_fit():
    from gpucnn.backend import cpu

    a, b = np.zeros((4, 3), np.float32), np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"op\(a\) \(4, 3\) @ op\(b\) \(4, 5\)"):
        cpu.gemm(a, b, np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="float64"):
        cpu.gemm(a, b, np.zeros((3, 5)), trans_a=True)
    np.testing.assert_array_equal(cpu.gemm(a, b, np.ones((3, 5), np.float32), True), 0)


def test_matmul_is_numpys_product_bit_for_bit():
    from gpucnn.backend import cpu

    g = np.random.default_rng(6)
    a, b = g.standard_normal((7, 33)).astype(np.float32), g.standard_normal((5, 33))
    b = b.astype(np.float32)
    for x, y in ((a, b.T), (b, a.T), (a.T.copy().T, b.T)):
        got = cpu.matmul(x, y)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, x @ y)


def test_record_step_writes_at_the_batch_step_and_nothing_past_the_end():
    from gpucnn.backend import cpu, formulas

    values = np.zeros(3, np.float32)
    state = formulas.batch_state(epoch=4)
    for step, value in enumerate((0.5, 1.5, 2.5, 9.0)):  # the 4th step is past the end
        cpu.record_step(values, state, np.array(value, np.float32))
        cpu.batch_state_advance(state)
        assert state[formulas.BATCH_STEP] == step + 1
    np.testing.assert_array_equal(values, [0.5, 1.5, 2.5])
    with pytest.raises(ValueError, match="one value of values' dtype float32"):
        cpu.record_step(values, state, np.zeros(1, np.float64))
    with pytest.raises(ValueError, match="int64 state array"):
        cpu.record_step(values, np.zeros(4, np.int32), np.zeros(1, np.float32))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # uint64 wraps
def test_dropout_from_a_state_array_draws_the_mask_of_its_steps_key():
    from gpucnn.backend import cpu, formulas

    x = np.ones((40, 50), np.float32)
    state = formulas.dropout_state(seed=2024)
    masks = []
    for step in range(3):
        key = int(formulas.dropout_step_key(np.uint64(2024), np.uint64(step)))
        y = cpu.dropout_fwd_state(x, 0.5, state, 7)
        np.testing.assert_array_equal(y, cpu.dropout_fwd(x, 0.5, key, 7))
        np.testing.assert_array_equal(cpu.dropout_bwd_state(x, 0.5, state, 7), y)
        masks.append(y != 0)
        cpu.dropout_state_advance(state)
        assert state.tolist() == [2024, step + 1]
    # the keys of successive steps give independent masks
    assert abs((masks[0] == masks[1]).mean() - 0.5) < 0.05


def test_optimizer_state_kernels_give_the_eager_kernels_bits():
    from gpucnn.backend import cpu, formulas

    g = np.random.default_rng(0)
    w0 = g.standard_normal(300).astype(np.float32)
    hyper = {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 1e-2}
    state = formulas.step_state(0, 0.01, momentum=0.9, **hyper)
    adam_eager = [w0.copy(), np.zeros_like(w0), np.zeros_like(w0)]  # w, m, v
    adam_state = [a.copy() for a in adam_eager]
    sgd_eager, sgd_state = [w0.copy(), np.zeros_like(w0)], [w0.copy(), np.zeros_like(w0)]
    for t in range(1, 8):
        grad = g.standard_normal(300).astype(np.float32)
        w, m, v = adam_eager
        cpu.adam_update(w, grad, m, v, None, step_size=0.01 / (1 - 0.8**t), beta1=0.8,
                        beta2=0.99, bias_correction2=1 - 0.99**t, eps=1e-6,
                        weight_decay=1e-2)  # fmt: skip
        cpu.optim_state_advance(state)
        assert state[formulas.STATE_T] == t
        w, m, v = adam_state
        cpu.adam_update_state(w, grad, m, v, None, state)
        for a, b in zip(adam_eager, adam_state, strict=True):
            np.testing.assert_array_equal(b, a)
        cpu.sgd_update(sgd_eager[0], grad, sgd_eager[1], first=t == 1, lr=0.01, momentum=0.9,
                       dampening=0.0, weight_decay=1e-2, nesterov=False)  # fmt: skip
        cpu.sgd_update_state(sgd_state[0], grad, sgd_state[1], state)
        np.testing.assert_array_equal(sgd_state[0], sgd_eager[0])
    np.testing.assert_array_equal(state, formulas.step_state(7, 0.01, momentum=0.9, **hyper))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_gather_batch_walks_the_permutation_with_normalizes_bits():
    from gpucnn.backend import cpu, formulas
    from gpucnn.data.loader import normalize

    g = np.random.default_rng(5)
    images = g.integers(0, 256, (10, 2, 3, 4), dtype=np.uint8)
    labels, perm = g.integers(0, 10, 10), g.permutation(10)
    state = formulas.batch_state(epoch=2)
    x, y = np.full((4, 2, 3, 4), np.nan, np.float32), np.empty(4, np.int64)
    for step, rows in enumerate((4, 4, 2, 0)):
        cpu.gather_batch(images, labels, perm, state, 4, 0.1307, 0.3081, x, y)
        idx = perm[4 * step : 4 * step + rows]
        ref = normalize(images[idx], 0.1307, 0.3081)
        np.testing.assert_array_equal(x[:rows].view(np.uint32), ref.view(np.uint32))
        np.testing.assert_array_equal(y[:rows], labels[idx])
        assert (x[rows:] == 0).all() and (y[rows:] == -1).all()
        cpu.batch_state_advance(state)
        assert state.tolist() == [step + 1, 2, rows, 0]
    tail_x, tail_y = np.empty((2, 2, 3, 4), np.float32), np.empty(2, np.int64)
    cpu.gather_batch(images, labels, perm, formulas.batch_state(step=2), 4, 0, 1, tail_x, tail_y)
    np.testing.assert_array_equal(tail_x, images[perm[8:]] * np.float32(1 / 255))
    with pytest.raises(ValueError, match=r"out_y int64 \(2,\)"):
        cpu.gather_batch(images, labels, perm, state, 4, 0, 1, tail_x, y)


def test_uniforms_from_24_bit_draws_are_exact_and_symmetric():
    from gpucnn.backend import formulas

    top = np.uint64(2**24 - 1)
    assert formulas.unit_uniform(np.uint64(0)) == 0 and formulas.unit_uniform(top) == 1 - 2**-24
    assert formulas.symmetric_uniform(np.uint64(0)) == -1 + 2**-24
    for d in (0, 1, 12345, 2**23 - 1, 2**23, 2**24 - 1):
        v = formulas.symmetric_uniform(np.uint64(d))
        assert v.dtype == np.float32 and v == (2 * d + 1 - 2**24) / 2**24
        assert formulas.symmetric_uniform(top - np.uint64(d)) == -v


def test_affine_element_rotates_through_the_whole_turn_accurately():
    from gpucnn.backend.cpu import batch

    f32 = np.float32
    for v in np.linspace(-1, 1, 2001, dtype=np.float32):
        theta = float(f32(2 * np.pi)) * float(v)
        a, b, c, d, tx, ty = batch._affine(v, f32(0.5), f32(-1), f32(0.5), False, f32(2 * np.pi),
                                           f32(3), f32(2), f32(0.5), f32(1))  # fmt: skip
        zoom = 0.5 + 1 * 0.5
        assert abs(a - np.cos(theta) / zoom) < 1e-6 and abs(b - np.sin(theta) / zoom) < 1e-6
        assert c == -b and d == a and tx == 1.5 and ty == -2
    flipped = batch._affine(f32(0.25), f32(0), f32(0), f32(0), True, f32(1), f32(0), f32(0),
                            f32(1), f32(0))  # fmt: skip
    plain = batch._affine(f32(0.25), f32(0), f32(0), f32(0), False, f32(1), f32(0), f32(0),
                          f32(1), f32(0))  # fmt: skip
    assert flipped[:2] == (-plain[0], -plain[1]) and flipped[2:4] == plain[2:4]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_affine_params_are_reproducible_from_seed_epoch_and_step():
    from gpucnn.backend import cpu, formulas

    def draw(seed, epoch, step, recipe=(20.0, (0.1, 0.2), (0.9, 1.1), 0.5)):
        inv, shift = np.empty((64, 4), np.float32), np.empty((64, 2), np.float32)
        cpu.affine_params(formulas.batch_state(epoch, step), seed, (64, 1, 10, 20), *recipe,
                          inv, shift)  # fmt: skip
        return inv, shift

    inv, shift = draw(1, 2, 3)
    np.testing.assert_array_equal(draw(1, 2, 3)[0], inv)
    for other in (draw(2, 2, 3), draw(1, 3, 3), draw(1, 2, 4)):
        assert not np.array_equal(other[0], inv)
    assert np.abs(shift[:, 0]).max() <= 2 and np.abs(shift[:, 1]).max() <= 2
    assert np.abs(shift[:, 0]).max() > 1.5 and np.abs(shift[:, 1]).max() > 1.5
    zoom = 1 / np.hypot(inv[:, 2], inv[:, 3])
    assert zoom.min() >= 0.9 - 1e-6 and zoom.max() <= 1.1 and np.ptp(zoom) > 0.15
    angle = np.degrees(np.arctan2(-inv[:, 2], inv[:, 3]))
    assert np.abs(angle).max() <= 20 + 1e-4 and np.ptp(angle) > 30
    flipped = inv[:, 0] * inv[:, 3] < 0
    assert 0.25 < flipped.mean() < 0.75
    x = np.random.default_rng(6).random((64, 1, 10, 20)).astype(np.float32)
    inv, shift = draw(1, 2, 3, (0.0, (0.0, 0.0), (1.0, 1.0), 1.0))  # a flip alone: a mirror
    np.testing.assert_array_equal(cpu.affine_warp(x, inv, shift), x[..., ::-1])
    inv, shift = draw(1, 2, 3, (0.0, (0.0, 0.0), (1.0, 1.0), 0.0))  # nothing: the identity
    np.testing.assert_array_equal(cpu.affine_warp(x, inv, shift), x)


@pytest.mark.parametrize("shape", [(3, 2, 8, 6), (2, 1, 7, 5), (1, 3, 2, 3), (4, 2, 28, 28)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_conv_epilogue_matches_the_pool_and_relu_kernels(shape, dtype):
    """conv_relu_pool2x2_fwd/bwd on (F, N, OH, OW) against bias + transpose, maxpool2d and
    ReLU one by one: y, argmax and dY2 bit for bit (NaN, inf, ties, odd sizes), db to
    rounding (float64 accumulation against NumPy's pairwise sum)."""
    from gpucnn.backend import cpu

    g = np.random.default_rng(4)
    yt = g.standard_normal(shape).astype(dtype)
    yt.flat[g.choice(yt.size, 3, replace=False)] = np.nan
    yt.flat[g.choice(yt.size, 3, replace=False)] = np.inf
    yt.flat[g.choice(yt.size, 3, replace=False)] = -np.inf
    yt[0, 0, :2, :2] = 0.25  # a tie: the first wins
    yt[-1, -1, :2, :2] = -5.0  # all negative: y = 0, no gradient
    b = g.standard_normal(shape[0]).astype(dtype)
    b[-1] = 0.0
    nf, n, oh, ow = shape
    z = yt.transpose(1, 0, 2, 3) + b[None, :, None, None]  # what conv2d_forward hands the pool
    m, arg_ref = cpu.maxpool2d_fwd(z, 2, 2, 0)
    y_ref = cpu.relu_fwd(m)
    y, arg = cpu.conv_relu_pool2x2_fwd(yt, b)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(arg, arg_ref)
    dy = g.standard_normal(y.shape).astype(dtype)
    dz = cpu.maxpool2d_bwd(cpu.relu_bwd(dy, y_ref), arg_ref, z.shape, 2, 2, 0)
    dy2_ref = dz.transpose(1, 0, 2, 3).reshape(nf, -1)  # what conv2d_backward makes of it
    dy2, db = cpu.conv_relu_pool2x2_bwd(dy, arg, y, (oh, ow))
    np.testing.assert_array_equal(dy2, dy2_ref)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(db, dy2_ref.sum(axis=1), rtol=tol, atol=tol)
    y0, arg0 = cpu.conv_relu_pool2x2_fwd(yt, None)  # no bias: the GEMM output itself
    np.testing.assert_array_equal(
        y0, cpu.relu_fwd(cpu.maxpool2d_fwd(yt.transpose(1, 0, 2, 3), 2, 2, 0)[0])
    )
    with pytest.raises(ValueError, match="must all be"):
        cpu.conv_relu_pool2x2_bwd(dy, arg, y, (oh + 2, ow))
