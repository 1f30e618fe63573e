// edgeattn HLS library: data types of the Edge-MoE-style attention accelerator.
//
// Every width comes from the generated parameters.h, so the same sources serve any model of the same shape.
// All ap_fixed types use the defaults AP_TRN (truncate toward minus infinity) and AP_WRAP (two's-complement
// wrap), except the attention score, which saturates; edgeattn/fpga_hls/golden.py mirrors each conversion
// bit for bit (docs/hls.md lists them).
#ifndef EA_TYPES_H
#define EA_TYPES_H

#include "ap_fixed.h"
#include "ap_int.h"
#include "../parameters.h"

namespace ea {

static const int ACT_F = EA_ACT_W - EA_ACT_I;  // fraction bits of activations
static const int W_F = EA_W_W - EA_W_I;        // fraction bits of linear weights

typedef ap_fixed<EA_ACT_W, EA_ACT_I> act_t;     // activations, biases, LayerNorm gamma/beta
typedef ap_fixed<EA_W_W, EA_W_I> weight_t;      // linear-layer weights
typedef ap_fixed<64, 64 - ACT_F - W_F> acc_t;   // MAC accumulator: every product and sum is exact

// Attention operands: q (already scaled by 1/sqrt(head_dim)) and k, truncated to EA_QK_F fraction bits
// so that a head_dim-long dot product stays exact in 64 bits.
typedef ap_fixed<EA_ACT_I + EA_QK_F, EA_ACT_I> qk_t;
typedef ap_ufixed<EA_SCALE_F + 1, 1> qscale_t;
typedef ap_fixed<64, 64 - 2 * EA_QK_F> qk_acc_t;
// Scores: softmax_in type; saturating, because a wrapped score would turn the largest logit into the smallest.
typedef ap_fixed<EA_SM_IN_W, EA_SM_IN_I, AP_TRN, AP_SAT> score_t;
typedef ap_ufixed<EA_SM_OUT_F, 0> prob_t;            // softmax probabilities in [0, 1 - 2^-F]
typedef ap_fixed<64, 64 - ACT_F - EA_SM_OUT_F> av_acc_t;  // A.V accumulator (exact)

// Parameters (biases, LayerNorm, tokens) are stored as raw two's-complement integers (ROM contents) and
// reinterpreted.
typedef EA_ARAW_T araw_t;

// The linear layers' weights live in DDR, read through the wmem m_axi port as words of EA_MAC_R weights:
// lane k in bits [k * EA_W_W, (k + 1) * EA_W_W). One word is one row of a weight tile (docs/hls.md, "Weights in
// DDR"), so a tile load reads one word per cycle.
typedef ap_uint<EA_MAC_R * EA_W_W> wword_t;

// Every activation buffer that the MAC unit reads or writes has this one shape, so that one MAC unit (one
// function instance) can serve every linear layer: EA_BUF_W is the widest row any layer reads or writes.
// Each is split into EA_MAC_BANKS cyclic banks along the row (a multiple of EA_MAC_R and of EA_MAC_C), so
// the unit reads EA_MAC_R inputs and writes EA_MAC_C outputs of a row in one cycle.
typedef act_t act_buf_t[EA_MAX_ROWS][EA_BUF_W];

template <class T, class R>
inline T from_raw(R raw) {
#pragma HLS INLINE
    T v;
    v.range(T::width - 1, 0) = raw;
    return v;
}

// The raw two's-complement bits of an activation, as a signed integer.
inline ap_int<EA_ACT_W> act_raw(act_t v) {
#pragma HLS INLINE
    ap_int<EA_ACT_W> r;
    r.range(EA_ACT_W - 1, 0) = v.range(EA_ACT_W - 1, 0);
    return r;
}

}  // namespace ea

#endif
