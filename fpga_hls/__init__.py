"""edgeattn.fpga_hls: HLS C++ sources, the project generator, the golden model and the C-simulation runner."""
