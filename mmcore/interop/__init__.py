"""Checkpoint interop: transformers' `LlavaForConditionalGeneration` and LLaVA's own layouts.

* `import_hf_llava(DIR, RUN)` / `export_hf_llava(RUN, OUT)`: both directions with transformers.
* `import_llava(DIR, RUN)`: haotian-liu/LLaVA checkpoints (`mm_projector.bin`, LoRA runs with
  `non_lora_trainables.bin`, full finetunes).
"""

from mmcore.interop.hf_llava import export_hf_llava, import_hf_llava
from mmcore.interop.llava import import_llava

__all__ = ["export_hf_llava", "import_hf_llava", "import_llava"]
