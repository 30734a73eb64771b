"""Models: loading cards, weights, MONAI bundles and TorchScript files into a picklable :class:`Model`."""
