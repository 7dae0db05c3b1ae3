"""resnets: the networks of "Deep Residual Learning for Image Recognition" (He et al., 2015) as software."""

from .errors import UserError
from .models import ResNet, ResNetConfig, create_model, from_torchvision, list_models, model_config
from .serving.weights import load_model

__version__ = "0.1.0"
__all__ = [
    "ResNet", "ResNetConfig", "UserError", "create_model", "from_torchvision", "list_models", "load_model",
    "model_config",
]
