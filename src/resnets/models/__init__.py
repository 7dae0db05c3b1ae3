from .presets import PRESETS
from .registry import create_model, list_models, model_config
from .resnet import ResNet, ResNetConfig
from .torchvision_weights import from_torchvision

__all__ = ["PRESETS", "ResNet", "ResNetConfig", "create_model", "from_torchvision", "list_models", "model_config"]
