"""DeciLM ("Llama-Nemotron Super/Ultra", model type `nemotron-nas`): a Llama whose blocks differ per layer.

Written from the public description of the checkpoints' config.json (`block_configs`), not from
NVIDIA's remote code. Not registered on import: the harness registers it through the custom registry.
"""

from .configuration_decilm import DeciLMConfig
from .modeling_decilm import DeciLMForCausalLM, DeciLMModel

__all__ = ["DeciLMConfig", "DeciLMForCausalLM", "DeciLMModel"]
