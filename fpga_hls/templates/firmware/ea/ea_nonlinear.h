// edgeattn HLS library: the project's own fixed-point exp, reciprocal, online softmax and Edge-MoE GELU.
//
// Bit for bit the specification of docs/fixed_point.md (golden model: edgeattn/approx/fixed.py); the integer
// tables come from that module through the generated ea_tables.h. Vitis HLS's exp/recip are not used (they
// are not open); everything here is add, multiply, shift, compare, table look-up and one divider per row.
#ifndef EA_NONLINEAR_H
#define EA_NONLINEAR_H

#include "ea_tables.h"
#include "ea_types.h"

namespace ea {

typedef ap_int<64> i64_t;

static const int FX_E_FRAC = 16;   // exp outputs and the running sum d: 16 fraction bits
static const int FX_R_FRAC = 24;   // 1/d: 24 fraction bits
static const int FX_Y_FRAC = 16;   // base-2 exponent y = x * log2(e)
static const int FX_LOG2E_FRAC = 24;
static const int FX_TBL_FRAC = 24; // 2^f tables
static const i64_t FX_LOG2E_Q = 24204406;  // round(log2(e) * 2^24)

// round_half_up(v / 2^s), s >= 0 (arithmetic shift: floor, after adding half an LSB).
inline i64_t rshift_half_up(i64_t v, int s) {
#pragma HLS INLINE
    if (s == 0) return v;
    return (v + (i64_t(1) << (s - 1))) >> s;
}

// 2^y for y <= 0 with 16 fraction bits -> 16 fraction bits: 2^n * 2^(a/256) * 2^(b/65536).
inline i64_t fx_exp2(i64_t y) {
#pragma HLS INLINE
    i64_t n = y >> FX_Y_FRAC;
    i64_t r = y - (n << FX_Y_FRAC);  // 0 .. 65535
    i64_t p = i64_t(EA_EXP2_HI[int(r >> 8)]) * i64_t(EA_EXP2_LO[int(r & 255)]);  // 48 fraction bits
    i64_t sh = i64_t(2 * FX_TBL_FRAC - FX_E_FRAC) - n;
    if (sh >= 63) return 0;
    return (p + (i64_t(1) << int(sh - 1))) >> int(sh);
}

// e^x for x <= 0 with x_frac fraction bits -> 16 fraction bits.
inline i64_t fx_exp(i64_t x, int x_frac) {
#pragma HLS INLINE
    i64_t y = rshift_half_up(x * FX_LOG2E_Q, x_frac + FX_LOG2E_FRAC - FX_Y_FRAC);
    return fx_exp2(y);
}

// Running state of one softmax row: max m (score ints) and sum d (16 fraction bits, 32-bit register).
struct softmax_row_t {
    i64_t m;
    i64_t d;
};
struct softmax_stats_t {
    i64_t m;
    i64_t inv_d;  // 1/d, 24 fraction bits
};

static const int SCORE_F = EA_SM_IN_W - EA_SM_IN_I;

inline i64_t score_raw(score_t s) {
#pragma HLS INLINE
    ap_int<EA_SM_IN_W> r;
    r.range(EA_SM_IN_W - 1, 0) = s.range(EA_SM_IN_W - 1, 0);
    return i64_t(r);
}

inline void softmax_init(softmax_row_t &st) {
#pragma HLS INLINE
    st.m = -(i64_t(1) << (EA_SM_IN_W - 1));
    st.d = 0;
}

// Edge-MoE rule: on a new max rescale the sum by exp(m_old - s) and add 1; else add exp(s - m).
inline void softmax_update(softmax_row_t &st, score_t s_fx) {
#pragma HLS INLINE
    i64_t s = score_raw(s_fx);
    if (s > st.m) {
        i64_t e = fx_exp(st.m - s, SCORE_F);
        st.d = rshift_half_up(st.d * e, FX_E_FRAC) + (i64_t(1) << FX_E_FRAC);
        st.m = s;
    } else {
        st.d = st.d + fx_exp(s - st.m, SCORE_F);
    }
}

// {m, 1/d}: one integer division per row, rounded half up.
inline softmax_stats_t softmax_finish(const softmax_row_t &st) {
#pragma HLS INLINE
    softmax_stats_t out;
    out.m = st.m;
    out.inv_d = ((i64_t(1) << (FX_E_FRAC + FX_R_FRAC)) + (st.d >> 1)) / st.d;
    return out;
}

// Deferred probability exp(s - m) * (1/d), rounded to prob_t with the row's error-diffusion residual.
inline prob_t softmax_prob(score_t s_fx, const softmax_stats_t &st, i64_t &carry) {
#pragma HLS INLINE
    const int sh = FX_E_FRAC + FX_R_FRAC - EA_SM_OUT_F;
    const i64_t pmax = (i64_t(1) << EA_SM_OUT_F) - 1;
    i64_t v = fx_exp(score_raw(s_fx) - st.m, SCORE_F) * st.inv_d;
    i64_t t = v + carry;
    i64_t p = rshift_half_up(t, sh);
    if (p > pmax) p = pmax;
    if (p < 0) p = 0;
    carry = t - (p << sh);
    return from_raw<prob_t>(ap_uint<EA_SM_OUT_F>(p));
}

// Edge-MoE GELU: ReLU(x) - delta(|x|), delta tabulated at step 1/32 on [0, 5.5] and linearly interpolated.
inline act_t gelu(act_t x) {
#pragma HLS INLINE
    const int ws = ACT_F - 5;
    i64_t xr = i64_t(act_raw(x));
    i64_t a = xr < 0 ? i64_t(-xr) : xr;
    i64_t i = a >> ws;
    i64_t w = a & ((i64_t(1) << ws) - 1);
    int ic = i < EA_GELU_ENTRIES - 2 ? int(i) : EA_GELU_ENTRIES - 2;
    i64_t lo = EA_GELU_DELTA[ic];
    i64_t delta = lo + rshift_half_up((i64_t(EA_GELU_DELTA[ic + 1]) - lo) * w, ws);
    if (i >= EA_GELU_ENTRIES - 1) delta = 0;
    i64_t relu = xr > 0 ? xr : i64_t(0);
    i64_t delta_o = (ACT_F >= EA_GELU_F) ? i64_t(delta << (ACT_F - EA_GELU_F))
                                          : rshift_half_up(delta, EA_GELU_F - ACT_F);
    i64_t out = relu - delta_o;
    act_t y;
    y.range(EA_ACT_W - 1, 0) = out.range(EA_ACT_W - 1, 0);
    return y;
}

}  // namespace ea

#endif
