// edgeattn HLS accelerator: top functions. Sizes and widths come from the generated parameters.h.
// wmem: the linear layers' weights in DDR (EA_WEIGHT_WORDS words; the host loads tb_data/weights.dat there).
#ifndef EDGEATTN_TOP_H
#define EDGEATTN_TOP_H

#include "ea/ea_types.h"

// One transformer encoder layer (layer EA_LAYER of the generated weights): tokens in, tokens out.
void encoder_layer_top(const ea::act_t x_in[EA_TOKENS][EA_DIM], ea::act_t x_out[EA_TOKENS][EA_DIM],
                       const ea::wword_t wmem[EA_WEIGHT_WORDS]);

#if EA_HAS_VIT
// The whole tiny ViT: image (C, H, W) in, class logits out.
void vit_top(const ea::act_t image[EA_IN_CHANS][EA_IMG][EA_IMG], ea::act_t logits[EA_CLASSES],
             const ea::wword_t wmem[EA_WEIGHT_WORDS]);
#endif

#endif
