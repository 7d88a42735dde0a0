"""Models with RSG inserted (CIFAR ResNets, torchvision ResNet/ResNeXt)."""
