// edgeattn HLS accelerator: top functions for one encoder layer and for a whole tiny ViT.
// These sources are the same for every model; parameters.h and weights.h are generated per model, and the
// linear layers' weights are read from DDR through the wmem port (tb_data/weights.dat holds its contents).
#include "edgeattn_top.h"

#include "ea/ea_encoder.h"

// The tops' activation buffers: the residual stream x and the layer's scratch buffers a, b (and c, the MoE's
// gathered tokens, one row when the model has no MoE layer). All have one shape and one banking, so that the
// one MAC unit can read and write any of them.
static const int EA_C_ROWS = EA_N_MOE > 0 ? EA_MAX_ROWS : 1;

void encoder_layer_top(const ea::act_t x_in[EA_TOKENS][EA_DIM], ea::act_t x_out[EA_TOKENS][EA_DIM],
                       const ea::wword_t wmem[EA_WEIGHT_WORDS]) {
#pragma HLS INTERFACE mode=m_axi port=x_in offset=slave bundle=gmem0 depth=EA_LAYER_DEPTH
#pragma HLS INTERFACE mode=m_axi port=x_out offset=slave bundle=gmem1 depth=EA_LAYER_DEPTH
#pragma HLS INTERFACE mode=m_axi port=wmem offset=slave bundle=gmem2 depth=EA_WEIGHT_WORDS
#pragma HLS INTERFACE mode=s_axilite port=return
    using namespace ea;  // before the pragma: Vitis resolves its instances= name at this point
#pragma HLS ALLOCATION function instances=ea::mac_linear limit=1
#pragma HLS ALLOCATION function instances=ea::layernorm limit=1
    static act_buf_t x, buf_a, buf_b;
    static act_t buf_c[EA_C_ROWS][EA_BUF_W];
#pragma HLS ARRAY_PARTITION variable=x type=cyclic factor=EA_MAC_BANKS dim=2
#pragma HLS ARRAY_PARTITION variable=buf_a type=cyclic factor=EA_MAC_BANKS dim=2
#pragma HLS ARRAY_PARTITION variable=buf_b type=cyclic factor=EA_MAC_BANKS dim=2
#pragma HLS ARRAY_PARTITION variable=buf_c type=cyclic factor=EA_MAC_BANKS dim=2
#pragma HLS ARRAY_PARTITION variable=ln1_g type=cyclic factor=EA_MAC_R dim=2
#pragma HLS ARRAY_PARTITION variable=ln1_b type=cyclic factor=EA_MAC_R dim=2
#pragma HLS ARRAY_PARTITION variable=ln2_g type=cyclic factor=EA_MAC_R dim=2
#pragma HLS ARRAY_PARTITION variable=ln2_b type=cyclic factor=EA_MAC_R dim=2
#pragma HLS ARRAY_PARTITION variable=EA_GELU_DELTA type=complete
#pragma HLS ARRAY_PARTITION variable=EA_EXP2_HI type=complete
#pragma HLS ARRAY_PARTITION variable=EA_EXP2_LO type=complete
LOAD:
    for (int n = 0; n < EA_TOKENS; n++)
        for (int d = 0; d < EA_DIM; d++) x[n][d] = x_in[n][d];
    encoder_layer(x, buf_a, buf_b, buf_c, EA_LAYER, wmem);
STORE:
    for (int n = 0; n < EA_TOKENS; n++)
        for (int d = 0; d < EA_DIM; d++) x_out[n][d] = x[n][d];
}

#if EA_HAS_VIT
void vit_top(const ea::act_t image[EA_IN_CHANS][EA_IMG][EA_IMG], ea::act_t logits[EA_CLASSES],
             const ea::wword_t wmem[EA_WEIGHT_WORDS]) {
#pragma HLS INTERFACE mode=m_axi port=image offset=slave bundle=gmem0 depth=EA_IMAGE_DEPTH
#pragma HLS INTERFACE mode=m_axi port=logits offset=slave bundle=gmem1 depth=EA_CLASSES
#pragma HLS INTERFACE mode=m_axi port=wmem offset=slave bundle=gmem2 depth=EA_WEIGHT_WORDS
#pragma HLS INTERFACE mode=s_axilite port=return
    using namespace ea;  // before the pragma: Vitis resolves its instances= name at this point
#pragma HLS ALLOCATION function instances=ea::mac_linear limit=1
#pragma HLS ALLOCATION function instances=ea::layernorm limit=1
    static const int GRID = EA_IMG / EA_PATCH;
    static const int HEAD_CHUNK = (EA_BUF_W / EA_MAC_C) * EA_MAC_C;  // classes per head pass: whole output tiles
    static const int HEAD_IN_TILES = (EA_DIM + EA_MAC_R - 1) / EA_MAC_R;  // input tiles of the head's weight
    static act_buf_t x, buf_a, buf_b;
    static act_t buf_c[EA_C_ROWS][EA_BUF_W];
#pragma HLS ARRAY_PARTITION variable=x type=cyclic factor=EA_MAC_BANKS dim=2
#pragma HLS ARRAY_PARTITION variable=buf_a type=cyclic factor=EA_MAC_BANKS dim=2
#pragma HLS ARRAY_PARTITION variable=buf_b type=cyclic factor=EA_MAC_BANKS dim=2
#pragma HLS ARRAY_PARTITION variable=buf_c type=cyclic factor=EA_MAC_BANKS dim=2
#pragma HLS ARRAY_PARTITION variable=ln1_g type=cyclic factor=EA_MAC_R dim=2
#pragma HLS ARRAY_PARTITION variable=ln1_b type=cyclic factor=EA_MAC_R dim=2
#pragma HLS ARRAY_PARTITION variable=ln2_g type=cyclic factor=EA_MAC_R dim=2
#pragma HLS ARRAY_PARTITION variable=ln2_b type=cyclic factor=EA_MAC_R dim=2
#pragma HLS ARRAY_PARTITION variable=EA_GELU_DELTA type=complete
#pragma HLS ARRAY_PARTITION variable=EA_EXP2_HI type=complete
#pragma HLS ARRAY_PARTITION variable=EA_EXP2_LO type=complete
#pragma HLS ARRAY_PARTITION variable=norm_g type=cyclic factor=EA_MAC_R dim=1
#pragma HLS ARRAY_PARTITION variable=norm_b type=cyclic factor=EA_MAC_R dim=1

PATCHES:  // the image in its own order (one burst), each pixel to its patch p = (py, px) and feature (c, ky, kx):
          // the Conv2d(kernel = stride = patch) as a linear layer
    for (int i = 0; i < EA_IN_CHANS * EA_IMG * EA_IMG; i++) {
#pragma HLS PIPELINE II=1
        const int c = i / (EA_IMG * EA_IMG), yy = (i / EA_IMG) % EA_IMG, xx = i % EA_IMG;
        const act_t v = image[c][yy][xx];
        if (yy < GRID * EA_PATCH && xx < GRID * EA_PATCH)  // a border no patch covers is read and dropped
            buf_a[(yy / EA_PATCH) * GRID + xx / EA_PATCH][(c * EA_PATCH + yy % EA_PATCH) * EA_PATCH + xx % EA_PATCH] = v;
    }
    mac_linear(buf_a, buf_b, EA_NUM_PATCHES, EA_PATCH_DIM, EA_DIM, MAC_PLAIN, wmem, patch_w_off, patch_b_off);
TOKENS:  // class token first, then the patches, plus the position table
    for (int n = 0; n < EA_TOKENS; n++)
        for (int d = 0; d < EA_DIM; d++) {
            act_t t = (n == 0) ? from_raw<act_t>(cls_token[d]) : buf_b[n - 1][d];
            x[n][d] = act_t(t + from_raw<act_t>(pos_embed[n][d]));
        }
LAYERS:
    for (int l = 0; l < EA_DEPTH; l++) encoder_layer(x, buf_a, buf_b, buf_c, l, wmem);
    layernorm(x, buf_a, 1, norm_g, norm_b);  // only the class token feeds the head
HEAD:  // in passes of HEAD_CHUNK classes when there are more classes than a buffer row holds
    for (int c0 = 0; c0 < EA_CLASSES; c0 += HEAD_CHUNK) {
        const int n_out = (EA_CLASSES - c0 < HEAD_CHUNK) ? EA_CLASSES - c0 : HEAD_CHUNK;
        // the weight's output tiles lie one after another, HEAD_IN_TILES * MAC_C words each
        const int w_off = head_w_off + (c0 / EA_MAC_C) * HEAD_IN_TILES * EA_MAC_C;
        mac_linear(buf_a, buf_b, 1, EA_DIM, n_out, MAC_PLAIN, wmem, w_off, head_b_off + c0);
        for (int c = 0; c < n_out; c++) logits[c0 + c] = buf_b[0][c];
    }
}
#endif
