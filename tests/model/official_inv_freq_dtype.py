"""Which dtype the official rotary's `inv_freq` buffer gets when transformers loads a model in bf16.

Not a test and not run in CI: it needs a transformers 4.x environment (the official code's) with
accelerate for the low_cpu_mem_usage path, e.g. a throwaway venv with "transformers==4.42.4"
"accelerate==0.33.0" and torch. It builds a module whose buffer is created the way THUDM's rotary
creates it (fp32, persistent), saves it with the buffer stored in fp32, in bf16, or not at all, and
loads it back with from_pretrained(torch_dtype=torch.bfloat16). README "RoPE numerics" quotes the
result: the buffer stays fp32 in every case (4.40.2, 4.42.4, 4.47.1).

    python tests/model/official_inv_freq_dtype.py
"""

import tempfile

import torch
import transformers
from safetensors.torch import save_file
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


class ProbeConfig(PretrainedConfig):
    model_type = "rope-probe"


class Rotary(nn.Module):
    def __init__(self, dim: int = 8, base: float = 10000.0):
        super().__init__()
        # as THUDM's FastRotaryEmbedding._compute_inv_freq: arange(...).float(), a persistent buffer
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)))


class Probe(PreTrainedModel):
    config_class = ProbeConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = nn.Linear(8, 8)
        self.rotary_emb = Rotary()

    def _init_weights(self, module):
        pass


def main() -> None:
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for stored in (torch.float32, torch.bfloat16, None):
        directory = tempfile.mkdtemp()
        model = Probe(ProbeConfig())
        exact = model.rotary_emb.inv_freq.clone()
        if stored is not None:
            model.rotary_emb.inv_freq = model.rotary_emb.inv_freq.to(stored)
        model.save_pretrained(directory)
        if stored is None:
            state = {k: v for k, v in model.state_dict().items() if not k.endswith("inv_freq")}
            save_file(state, f"{directory}/model.safetensors", metadata={"format": "pt"})
        for low_cpu_mem_usage in (False, True):
            loaded = Probe.from_pretrained(directory, torch_dtype=torch.bfloat16, low_cpu_mem_usage=low_cpu_mem_usage)
            buffer = loaded.rotary_emb.inv_freq
            rounded = torch.equal(buffer.float(), exact.to(torch.bfloat16).float())
            print(f"stored {stored}, low_cpu_mem_usage={low_cpu_mem_usage}: weights {loaded.proj.weight.dtype}, "
                  f"inv_freq {buffer.dtype}{' holding bf16-rounded values' if rounded else ''}")


if __name__ == "__main__":
    main()
