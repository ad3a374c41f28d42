"""The model core: a readable PyTorch decoder that loads real checkpoints, generates, and records its internals."""
from .config import ModelConfig, UnsupportedModelError
from .interventions import (AttentionAblation, ExpertAblation, HeadAblation, Intervention, Interventions, MLPAblation,
                            Patch, Steering)
from .lm import LanguageModel, Step
from .loading import load_model
from .params import ParameterCounts, parameter_counts
from .trace import Trace

__all__ = ["LanguageModel", "ModelConfig", "Step", "Trace", "UnsupportedModelError", "load_model", "ParameterCounts",
           "parameter_counts", "AttentionAblation", "ExpertAblation", "HeadAblation", "Intervention", "Interventions",
           "MLPAblation", "Patch", "Steering"]
