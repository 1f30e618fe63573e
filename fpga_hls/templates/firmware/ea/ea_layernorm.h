// edgeattn HLS library: fixed-point LayerNorm (specification in docs/hls.md, golden model in golden.py).
//
// Integer steps on the raw activation bits (ACT_F fraction bits):
//   mean = floor(sum(x) / D);  d = x - mean
//   e = d >> (ACT_F - LN_F);  var = floor(sum(e^2) / D) + eps      (LN_F fraction bits, var: 2*LN_F)
//   s = isqrt(var);  inv = floor(2^(LN_F + LN_R) / s)                (1/std with LN_R fraction bits)
//   y = (d * inv) >> LN_R;  out = act(((y * gamma) >> ACT_F) + beta)
#ifndef EA_LAYERNORM_H
#define EA_LAYERNORM_H

#include "ea_types.h"

namespace ea {

typedef ap_int<64> wide_t;
typedef ap_uint<64> uwide_t;

// floor(a / b) for b > 0 (C++ '/' rounds toward zero).
inline wide_t floor_div(wide_t a, int b) {
#pragma HLS INLINE
    wide_t q = a / b;
    if (a < 0 && q * b != a) q -= 1;
    return q;
}

// floor(sqrt(v)), bit by bit: 32 fixed iterations, no multiplier.
inline uwide_t isqrt64(uwide_t v) {
    uwide_t rem = v, root = 0, bit = uwide_t(1) << 62;
ISQRT:
    for (int i = 0; i < 32; i++) {
#pragma HLS PIPELINE II=1
        if (rem >= root + bit) {
            rem -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root = root >> 1;
        }
        bit = bit >> 2;
    }
    return root;
}

// One function for every LayerNorm of the design (all are EA_DIM wide): the tops allow one instance of it.
inline void layernorm(const act_buf_t x, act_buf_t y, int n_rows, const araw_t gamma[EA_DIM],
                      const araw_t beta[EA_DIM]) {
#pragma HLS INLINE off
    const int D = EA_DIM;
    const int sh = ACT_F - EA_LN_F;
ROWS:
    for (int r = 0; r < n_rows; r++) {
        wide_t sum = 0;
    SUM:  // EA_MAC_R lanes per cycle; the integer sums are exact, so the adder tree's order does not matter
        for (int j = 0; j < D; j++) {
#pragma HLS PIPELINE II=1
#pragma HLS UNROLL factor=EA_MAC_R
            sum += wide_t(act_raw(x[r][j]));
        }
        wide_t mean = floor_div(sum, D);
        wide_t sq = 0;
    VAR:
        for (int j = 0; j < D; j++) {
#pragma HLS PIPELINE II=1
#pragma HLS UNROLL factor=EA_MAC_R
            wide_t d = wide_t(act_raw(x[r][j])) - mean;
            wide_t e = sh >= 0 ? wide_t(d >> sh) : wide_t(d << (-sh));
            sq += e * e;
        }
        uwide_t var = uwide_t(floor_div(sq, D)) + uwide_t(EA_LN_EPS_RAW);
        uwide_t s = isqrt64(var);
        wide_t inv = wide_t((uwide_t(1) << (EA_LN_F + EA_LN_R)) / s);
    NORM:
        for (int j = 0; j < D; j++) {
#pragma HLS PIPELINE II=1
#pragma HLS UNROLL factor=EA_MAC_R
            wide_t d = wide_t(act_raw(x[r][j])) - mean;
            wide_t yn = (d * inv) >> EA_LN_R;
            wide_t z = ((yn * wide_t(gamma[j])) >> ACT_F) + wide_t(beta[j]);
            act_t out;
            out.range(EA_ACT_W - 1, 0) = z.range(EA_ACT_W - 1, 0);  // wrap to the activation width
            y[r][j] = out;
        }
    }
}

}  // namespace ea

#endif
