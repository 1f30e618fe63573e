// edgeattn HLS library: fixed-point LayerNorm (specification in docs/hls.md, golden model in golden.py).
//
// Integer steps on the raw activation bits (ACT_F fraction bits):
//   mean = floor(sum(x) / D);  d = x - mean                         (both "/ D" as a multiply: div_by_dim)
//   e = d >> (ACT_F - LN_F);  var = floor(sum(e^2) / D) + eps      (LN_F fraction bits, var: 2*LN_F)
//   s = isqrt(var);  inv = floor(2^(LN_F + LN_R) / s)                (1/std with LN_R fraction bits)
//   y = (d * inv) >> LN_R;  out = act(((y * gamma) >> ACT_F) + beta)
//
// Every intermediate is exactly as wide as its worst case over any activations, gamma and beta of the
// activation type (EA_LN_*_W in parameters.h, derived by fpga_hls/estimate.py layernorm_widths), so each
// multiplier is only as wide as its operands need (docs/hls.md, "LayerNorm widths").
#ifndef EA_LAYERNORM_H
#define EA_LAYERNORM_H

#include "ea_types.h"

namespace ea {

typedef ap_int<EA_LN_SUM_W> ln_sum_t;    // sum(x)
typedef ap_int<EA_LN_MEAN_W> ln_mean_t;  // floor(sum / D)
typedef ap_int<EA_LN_D_W> ln_d_t;        // d = x - mean
typedef ap_int<EA_LN_E_W> ln_e_t;        // e = d >> (ACT_F - LN_F)
typedef ap_int<EA_LN_E2_W> ln_e2_t;      // e * e
typedef ap_int<EA_LN_SQ_W> ln_sq_t;      // sum(e * e)
typedef ap_uint<EA_LN_VAR_W> ln_var_t;   // floor(sum(e * e) / D) + eps
typedef ap_uint<EA_LN_S_W> ln_s_t;       // isqrt(var)
typedef ap_uint<EA_LN_INV_W> ln_inv_t;   // 2^(LN_F + LN_R) / s
typedef ap_int<EA_LN_DINV_W> ln_dinv_t;  // d * inv
typedef ap_int<EA_LN_YN_W> ln_yn_t;      // (d * inv) >> LN_R
typedef ap_int<EA_LN_YG_W> ln_yg_t;      // yn * gamma
typedef ap_int<EA_LN_Z_W> ln_z_t;        // (yn * gamma >> ACT_F) + beta, before the wrap to act_t

// floor(n / EA_DIM) for 0 <= n < 2^N without a divider: (n * M) >> S with S = N + ceil(log2 EA_DIM) and
// M = ceil(2^S / EA_DIM) < 2^(N + 1), exact because M * EA_DIM - 2^S < EA_DIM <= 2^ceil(log2 EA_DIM) (Granlund and
// Montgomery 1994, theorem 4.2). M and S are in parameters.h (EA_LN_MEAN_DIV_*, EA_LN_VAR_DIV_*); for a power-of-two
// EA_DIM, M is 2^N and the product a shift.
template <int N>
inline ap_uint<N> div_by_dim(ap_uint<N> n, unsigned long long m, int s) {
#pragma HLS INLINE
    ap_uint<2 * N + 2> p = ap_uint<2 * N + 2>(n) * ap_uint<N + 2>(m);
    return ap_uint<N>(p >> s);
}

// floor(sqrt(v)), bit by bit: EA_LN_SQRT_ITERS = ceil(EA_LN_VAR_W / 2) fixed iterations, no multiplier.
// rem <= v < 2^(2 ITERS) and root < 2^(2 ITERS - 1) throughout, so 2 ITERS bits hold both.
inline ln_s_t ln_isqrt(ln_var_t v) {
    typedef ap_uint<2 * EA_LN_SQRT_ITERS> sqrt_work_t;
    sqrt_work_t rem = v, root = 0, bit = sqrt_work_t(1) << (2 * EA_LN_SQRT_ITERS - 2);
ISQRT:
    for (int i = 0; i < EA_LN_SQRT_ITERS; i++) {
#pragma HLS PIPELINE II=1
        if (rem >= root + bit) {
            rem -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root = root >> 1;
        }
        bit = bit >> 2;
    }
    return ln_s_t(root);
}

// One function for every LayerNorm of the design (all are EA_DIM wide): the tops allow one instance of it.
inline void layernorm(const act_buf_t x, act_buf_t y, int n_rows, const araw_t gamma[EA_DIM],
                      const araw_t beta[EA_DIM]) {
#pragma HLS INLINE off
    const int D = EA_DIM;
    const int sh = ACT_F - EA_LN_F;
ROWS:
    for (int r = 0; r < n_rows; r++) {
        ln_sum_t sum = 0;
    SUM:  // EA_MAC_R lanes per cycle; the integer sums are exact, so the adder tree's order does not matter
        for (int j = 0; j < D; j++) {
#pragma HLS PIPELINE II=1
#pragma HLS UNROLL factor=EA_MAC_R
            sum += act_raw(x[r][j]);
        }
        // floor(sum / D) = floor((sum + D * BIAS_Q) / D) - BIAS_Q, the dividend made non-negative
        typedef ap_int<EA_LN_MEAN_DIV_N + 1> mean_work_t;
        ap_uint<EA_LN_MEAN_DIV_N> biased = mean_work_t(sum) + mean_work_t(EA_LN_MEAN_BIAS_Q) * D;
        ln_mean_t mean = mean_work_t(div_by_dim<EA_LN_MEAN_DIV_N>(biased, EA_LN_MEAN_DIV_M, EA_LN_MEAN_DIV_S)) -
                         mean_work_t(EA_LN_MEAN_BIAS_Q);
        ln_sq_t sq = 0;
    VAR:
        for (int j = 0; j < D; j++) {
#pragma HLS PIPELINE II=1
#pragma HLS UNROLL factor=EA_MAC_R
            ln_d_t d = act_raw(x[r][j]) - mean;
            ln_e_t e = sh >= 0 ? ln_e_t(d >> sh) : ln_e_t(ln_e_t(d) << (-sh));
            sq += ln_e2_t(e * e);
        }
        ap_uint<EA_LN_VAR_DIV_N> sq_u = sq;  // sq >= 0
        ln_var_t var = ln_var_t(div_by_dim<EA_LN_VAR_DIV_N>(sq_u, EA_LN_VAR_DIV_M, EA_LN_VAR_DIV_S)) +
                       ln_var_t(EA_LN_EPS_RAW);
        ln_s_t s = ln_isqrt(var);
        ln_inv_t inv = ln_inv_t((ap_uint<EA_LN_F + EA_LN_R + 1>(1) << (EA_LN_F + EA_LN_R)) / s);
    NORM:
        for (int j = 0; j < D; j++) {
#pragma HLS PIPELINE II=1
#pragma HLS UNROLL factor=EA_MAC_R
            ln_d_t d = act_raw(x[r][j]) - mean;
            ln_dinv_t p = d * inv;
            ln_yn_t yn = p >> EA_LN_R;
            ln_yg_t yg = yn * ap_int<EA_ACT_W>(gamma[j]);
            ln_z_t z = (yg >> ACT_F) + ap_int<EA_ACT_W>(beta[j]);
            act_t out;
            out.range(EA_ACT_W - 1, 0) = z.range(EA_ACT_W - 1, 0);  // wrap to the activation width
            y[r][j] = out;
        }
    }
}

}  // namespace ea

#endif
