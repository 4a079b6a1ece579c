"""Models: the U-Net with learned transposed-convolution upsampling (:mod:`.unet`), its losses
(:mod:`.losses`) and the per-pixel gradient-boosting partner (:mod:`.pixel`)."""
