// edgeattn HLS library: the unified tiled multiply-accumulate unit.
//
// One EA_MAC_R x EA_MAC_C array of multipliers serves every linear layer (QKV, projection, MLP, MoE experts,
// gate, patch embedding, head): mac_linear is one function, not a template, its sizes are run-time arguments
// and the tops allow one instance of it (ALLOCATION), so every call shares the same array and accumulators.
// It is weight stationary: per output tile, the weights of every input tile are read from DDR in one burst
// (one wmem word per cycle); each MAC_C x MAC_R tile is then loaded from that on-chip copy and every input row
// streams past it, so each weight is read from DDR once per layer call. Products and sums are exact
// in acc_t; the only rounding is the final conversion to act_t (floor, wrap). Modes:
//   MAC_PLAIN    y[r] = act(x[r] W^T + b)
//   MAC_GELU     y[r] = gelu(act(x[r] W^T + b))                 (fused GELU on the way out)
//   MAC_MOE_ACC  y[dst[r]] += act(gate[r] * act(x[r] W^T + b))  (MoE gating: scatter-accumulate per expert)
#ifndef EA_MAC_H
#define EA_MAC_H

#include "ea_nonlinear.h"
#include "ea_types.h"
#include "../weights.h"

namespace ea {

enum MacMode { MAC_PLAIN = 0, MAC_GELU = 1, MAC_MOE_ACC = 2 };

// The MoE routing of the rows in MAC_MOE_ACC mode: the unit's own small memories, written by moe_mlp before
// each expert's second linear (row r of the input goes to row mac_dst[r] of the output, scaled by mac_gate[r]).
static short mac_dst[EA_MAX_ROWS];
static prob_t mac_gate[EA_MAX_ROWS];

// y = mode(x W^T + b) for rows 0..n_rows-1 of x: W is the in x out matrix whose tiles start at word w_off of
// wmem (tile (ot, it) at w_off + (ot * ceil(in / MAC_R) + it) * MAC_C), b the out biases at bias_rom[b_off].
inline void mac_linear(const act_buf_t x, act_buf_t y, int n_rows, int in, int out, int mode, const wword_t *wmem,
                       int w_off, int b_off) {
#pragma HLS INLINE off
    static acc_t acc[EA_MAX_ROWS][EA_MAC_C];
    static wword_t wcol[EA_WCOL_WORDS];  // one output tile's weights: every input tile, read in one DDR burst
    weight_t wtile[EA_MAC_C][EA_MAC_R];
    act_t breg[EA_MAC_C];
#pragma HLS ARRAY_PARTITION variable=acc type=complete dim=2
#pragma HLS ARRAY_PARTITION variable=wtile type=complete dim=0
#pragma HLS ARRAY_PARTITION variable=breg type=complete
    const int in_tiles = (in + EA_MAC_R - 1) / EA_MAC_R;
    int word = w_off;

OUT_TILES:
    for (int ot = 0; ot < out; ot += EA_MAC_C) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=EA_BUF_W / EA_MAC_C
    BIAS:  // the tile's biases, one per cycle from the parameter ROM; added at the first input tile
        for (int c = 0; c < EA_MAC_C; c++) {
#pragma HLS PIPELINE II=1
            breg[c] = (ot + c < out) ? from_raw<act_t>(bias_rom[b_off + ot + c]) : act_t(0);
        }
    WEIGHT_COLUMN:  // the DDR latency once per output tile, not once per tile
        for (int i = 0; i < in_tiles * EA_MAC_C; i++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=EA_WCOL_WORDS
#pragma HLS PIPELINE II=1
            wcol[i] = wmem[word + i];
        }
        word += in_tiles * EA_MAC_C;
    IN_TILES:
        for (int it = 0; it < in; it += EA_MAC_R) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=EA_BUF_W / EA_MAC_R
        LOAD_TILE:  // one weight tile per (output tile, input tile): MAC_C words, one per cycle, from on chip
            for (int c = 0; c < EA_MAC_C; c++) {
#pragma HLS PIPELINE II=1
                wword_t w = wcol[(it / EA_MAC_R) * EA_MAC_C + c];
                for (int k = 0; k < EA_MAC_R; k++) {
#pragma HLS UNROLL
                    wtile[c][k] = from_raw<weight_t>(w.range(k * EA_W_W + EA_W_W - 1, k * EA_W_W));
                }
            }
        ROWS:
            for (int r = 0; r < n_rows; r++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=EA_MAX_ROWS
#pragma HLS PIPELINE II=1
                act_t xs[EA_MAC_R];
                for (int k = 0; k < EA_MAC_R; k++) {
#pragma HLS UNROLL
                    xs[k] = (it + k < in) ? x[r][it + k] : act_t(0);
                }
                for (int c = 0; c < EA_MAC_C; c++) {
#pragma HLS UNROLL
                    acc_t sum = (it == 0) ? acc_t(breg[c]) : acc[r][c];  // exact: the bias adds nothing lost
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
// MAC_MOE_ACC reads and writes y at row mac_dst[r]: distinct rows (a token is queued once per expert), so no
// dependence from one iteration to the next; the other modes only write y
#pragma HLS DEPENDENCE variable=y type=inter direction=RAW dependent=false
            for (int c = 0; c < EA_MAC_C; c++) {
#pragma HLS UNROLL
                if (ot + c >= out) continue;
                act_t v = act_t(acc[r][c]);
                if (mode == MAC_GELU) {
                    y[r][ot + c] = gelu(v);
                } else if (mode == MAC_MOE_ACC) {
                    act_t term = act_t(mac_gate[r] * v);
                    y[mac_dst[r]][ot + c] = act_t(y[mac_dst[r]][ot + c] + term);
                } else {
                    y[r][ot + c] = v;
                }
            }
        }
    }
}

}  // namespace ea

#endif
