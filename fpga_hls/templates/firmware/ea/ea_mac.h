// edgeattn HLS library: the unified tiled multiply-accumulate unit.
//
// One EA_MAC_R x EA_MAC_C array of multipliers serves every linear layer (QKV, projection, MLP, MoE experts,
// gate, patch embedding, head). It is weight stationary: a MAC_C x MAC_R weight tile is loaded once and every
// input row streams past it, so each weight is read once per layer call. Products and sums are exact in
// acc_t; the only rounding is the final conversion to act_t (floor, wrap). Modes:
//   MAC_PLAIN    y[r] = act(x[r] W^T + b)
//   MAC_GELU     y[r] = gelu(act(x[r] W^T + b))                 (fused GELU on the way out)
//   MAC_MOE_ACC  y[dst[r]] += act(gate[r] * act(x[r] W^T + b))  (MoE gating: scatter-accumulate per expert)
#ifndef EA_MAC_H
#define EA_MAC_H

#include "ea_nonlinear.h"
#include "ea_types.h"

namespace ea {

enum MacMode { MAC_PLAIN = 0, MAC_GELU = 1, MAC_MOE_ACC = 2 };

template <int IN, int OUT, int MODE>
void mac_linear(const act_t x[][IN], act_t y[][OUT], int n_rows, const wraw_t W[OUT][IN], const araw_t b[OUT],
                const short dst[], const prob_t gate[]) {
    static acc_t acc[EA_MAX_ROWS][EA_MAC_C];
    weight_t wtile[EA_MAC_C][EA_MAC_R];
#pragma HLS ARRAY_PARTITION variable=acc type=complete dim=2
#pragma HLS ARRAY_PARTITION variable=wtile type=complete dim=0

OUT_TILES:
    for (int ot = 0; ot < OUT; ot += EA_MAC_C) {
    INIT:
        for (int r = 0; r < n_rows; r++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=EA_MAX_ROWS
#pragma HLS PIPELINE II=1
            for (int c = 0; c < EA_MAC_C; c++) {
#pragma HLS UNROLL
                acc[r][c] = (ot + c < OUT) ? acc_t(from_raw<act_t>(b[ot + c])) : acc_t(0);
            }
        }
    IN_TILES:
        for (int it = 0; it < IN; it += EA_MAC_R) {
        LOAD_TILE:  // one weight tile per (output tile, input tile), one MAC_R-wide weight row per cycle:
                    // weights stream from ROM/DDR exactly once per layer call
            for (int c = 0; c < EA_MAC_C; c++) {
#pragma HLS PIPELINE II=1
                for (int k = 0; k < EA_MAC_R; k++) {
#pragma HLS UNROLL
                    bool inside = (ot + c < OUT) && (it + k < IN);
                    wtile[c][k] = inside ? from_raw<weight_t>(W[ot + c][it + k]) : weight_t(0);
                }
            }
        ROWS:
            for (int r = 0; r < n_rows; r++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=EA_MAX_ROWS
#pragma HLS PIPELINE II=1
                act_t xs[EA_MAC_R];
                for (int k = 0; k < EA_MAC_R; k++) {
#pragma HLS UNROLL
                    xs[k] = (it + k < IN) ? x[r][it + k] : act_t(0);
                }
                for (int c = 0; c < EA_MAC_C; c++) {
#pragma HLS UNROLL
                    acc_t sum = acc[r][c];
                    for (int k = 0; k < EA_MAC_R; k++) {
#pragma HLS UNROLL
                        sum += xs[k] * wtile[c][k];
                    }
                    acc[r][c] = sum;
                }
            }
        }
    DRAIN:
        for (int r = 0; r < n_rows; r++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=EA_MAX_ROWS
#pragma HLS PIPELINE II=1
            for (int c = 0; c < EA_MAC_C; c++) {
#pragma HLS UNROLL
                if (ot + c >= OUT) continue;
                act_t v = act_t(acc[r][c]);
                if (MODE == MAC_GELU) {
                    y[r][ot + c] = gelu(v);
                } else if (MODE == MAC_MOE_ACC) {
                    act_t term = act_t(gate[r] * v);
                    y[dst[r]][ot + c] = act_t(y[dst[r]][ot + c] + term);
                } else {
                    y[r][ot + c] = v;
                }
            }
        }
    }
}

}  // namespace ea

#endif
