"""kpod: Keypoint-based Progressive Chain-of-Thought Distillation (Feng et al., ICML 2024)."""

__version__ = "0.1.0"
