"""edgeattn.quant: brevitas quantizers, EdgeQAT losses, token-adaptive bits, PTQ and the QAT trainer."""
