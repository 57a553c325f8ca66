"""spikemo: multimodal emotion recognition in conversations around the SpikEmo spiking model."""

__version__ = "0.1.0"
