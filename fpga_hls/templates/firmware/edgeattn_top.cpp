// edgeattn HLS accelerator: top functions for one encoder layer and for a whole tiny ViT.
// These sources are the same for every model; parameters.h and weights.h are generated per model.
#include "edgeattn_top.h"

#include "ea/ea_encoder.h"

void encoder_layer_top(const ea::act_t x_in[EA_TOKENS][EA_DIM], ea::act_t x_out[EA_TOKENS][EA_DIM]) {
#pragma HLS INTERFACE mode=m_axi port=x_in offset=slave bundle=gmem0 depth=EA_LAYER_DEPTH
#pragma HLS INTERFACE mode=m_axi port=x_out offset=slave bundle=gmem1 depth=EA_LAYER_DEPTH
#pragma HLS INTERFACE mode=s_axilite port=return
    static ea::act_t x[EA_TOKENS][EA_DIM];
LOAD:
    for (int n = 0; n < EA_TOKENS; n++)
        for (int d = 0; d < EA_DIM; d++) x[n][d] = x_in[n][d];
    ea::encoder_layer(x, EA_LAYER);
STORE:
    for (int n = 0; n < EA_TOKENS; n++)
        for (int d = 0; d < EA_DIM; d++) x_out[n][d] = x[n][d];
}

#if EA_HAS_VIT
void vit_top(const ea::act_t image[EA_IN_CHANS][EA_IMG][EA_IMG], ea::act_t logits[EA_CLASSES]) {
#pragma HLS INTERFACE mode=m_axi port=image offset=slave bundle=gmem0 depth=EA_IMAGE_DEPTH
#pragma HLS INTERFACE mode=m_axi port=logits offset=slave bundle=gmem1 depth=EA_CLASSES
#pragma HLS INTERFACE mode=s_axilite port=return
    using namespace ea;
    static const int GRID = EA_IMG / EA_PATCH;
    static act_t patches[EA_NUM_PATCHES][EA_PATCH_DIM];
    static act_t embed[EA_NUM_PATCHES][EA_DIM];
    static act_t x[EA_TOKENS][EA_DIM];
    static act_t xn[1][EA_DIM];
    static act_t out[1][EA_CLASSES];

PATCHES:  // patch p = (py, px), feature (c, ky, kx): the Conv2d(kernel = stride = patch) as a linear layer
    for (int p = 0; p < EA_NUM_PATCHES; p++)
        for (int c = 0; c < EA_IN_CHANS; c++)
            for (int ky = 0; ky < EA_PATCH; ky++)
                for (int kx = 0; kx < EA_PATCH; kx++)
                    patches[p][(c * EA_PATCH + ky) * EA_PATCH + kx] =
                        image[c][(p / GRID) * EA_PATCH + ky][(p % GRID) * EA_PATCH + kx];
    mac_linear<EA_PATCH_DIM, EA_DIM, MAC_PLAIN>(patches, embed, EA_NUM_PATCHES, patch_w, patch_b, 0, 0);
TOKENS:  // class token first, then the patches, plus the position table
    for (int n = 0; n < EA_TOKENS; n++)
        for (int d = 0; d < EA_DIM; d++) {
            act_t t = (n == 0) ? from_raw<act_t>(cls_token[d]) : embed[n - 1][d];
            x[n][d] = act_t(t + from_raw<act_t>(pos_embed[n][d]));
        }
LAYERS:
    for (int l = 0; l < EA_DEPTH; l++) encoder_layer(x, l);
    layernorm<EA_DIM>(x, xn, 1, norm_g, norm_b);  // only the class token feeds the head
    mac_linear<EA_DIM, EA_CLASSES, MAC_PLAIN>(xn, out, 1, head_w, head_b, 0, 0);
    for (int c = 0; c < EA_CLASSES; c++) logits[c] = out[0][c];
}
#endif
