"""dexrt's trainer: pix2pix (U-Net generator, PatchGAN discriminator, GAN + L1) for SE -> (bone, soft tissue).

Needs the `train` extra (PyTorch): ``pip install 'dexrt[train]'``. The runtime (`import dexrt`) never imports it.
"""
