// edgeattn HLS library: one pre-norm transformer encoder layer and the tiny-ViT pipeline around it.
//
//   x = x + proj(attention(LN1(x)))
//   x = x + MLP(LN2(x))        MLP = fc2(gelu(fc1(.))) or the MoE MLP, per layer (ea_layer_moe[l])
// Layer l's LayerNorm parameters are the l-th rows of the ROMs in weights.h; its linear layers' weights are read
// from DDR (wmem) at the word offsets weights.h lists, and their biases from bias_rom.
#ifndef EA_ENCODER_H
#define EA_ENCODER_H

#include "ea_attention.h"
#include "ea_layernorm.h"
#include "ea_mac.h"
#include "ea_moe.h"
#include "ea_types.h"
#include "../weights.h"

namespace ea {

static const int N = EA_TOKENS;
static const int D = EA_DIM;

inline void residual_add(act_buf_t x, const act_buf_t y) {
RESID:
    for (int n = 0; n < N; n++) {
        for (int d = 0; d < D; d++) {
#pragma HLS PIPELINE II=1
#pragma HLS UNROLL factor=EA_MAC_C
            x[n][d] = act_t(x[n][d] + y[n][d]);
        }
    }
}

// Layer l on the residual stream x. Every buffer is an act_buf_t (see ea_types.h), owned by the top: a and b
// ping-pong (each step reads one and writes the other), c holds the MoE's gathered tokens.
//   a = LN1(x); b = qkv(a); a = attention(b); b = proj(a); x += b
//   a = LN2(x); dense: b = gelu(fc1(a)); a = fc2(b); x += a      MoE: x += moe(a), with c and b as scratch
inline void encoder_layer(act_buf_t x, act_buf_t a, act_buf_t b, act_t c[][EA_BUF_W], int l, const wword_t *wmem) {
#pragma HLS INLINE
    const qscale_t qscale = from_raw<qscale_t>(ap_uint<EA_SCALE_F + 1>(EA_QSCALE_RAW));

    layernorm(x, a, N, ln1_g[l], ln1_b[l]);
    mac_linear(a, b, N, D, 3 * D, MAC_PLAIN, wmem, qkv_w_off[l], qkv_b_off[l]);
    multihead_attention<N, D, EA_HEADS, EA_ATTN_P>(b, a, qscale);
    mac_linear(a, b, N, D, D, MAC_PLAIN, wmem, proj_w_off[l], proj_b_off[l]);
    residual_add(x, b);

    layernorm(x, a, N, ln2_g[l], ln2_b[l]);
    const int m = layer_moe[l];
#if EA_N_DENSE > 0
    if (m < 0) {
        const int f = layer_dense[l];
        mac_linear(a, b, N, D, EA_HIDDEN, MAC_GELU, wmem, fc1_w_off[f], fc1_b_off[f]);
        mac_linear(b, a, N, EA_HIDDEN, D, MAC_PLAIN, wmem, fc2_w_off[f], fc2_b_off[f]);
        residual_add(x, a);
    }
#endif
#if EA_N_MOE > 0
    if (m >= 0) moe_mlp<N, D, EA_HIDDEN, EA_EXPERTS, EA_TOPK>(a, x, c, b, wmem, m);
#endif
    (void)m;
    (void)c;
}

}  // namespace ea

#endif
