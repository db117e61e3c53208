"""Chat templates the tests need besides the default model's ChatML: Llama-3.1-Instruct's, on the default model's BPE.

`data/llama31_chat_template.jinja` is the `chat_template` field of
https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/blob/main/tokenizer_config.json (no hub here: written out
from that file; the same text is quoted in ldp's llama3.1_chat_template_hf.jinja and spark-nlp's PromptAssembler
docstring).
"""

from __future__ import annotations

from pathlib import Path

from alfworld_sft import models

LLAMA31_CHAT_TEMPLATE = (Path(__file__).parent / "data" / "llama31_chat_template.jinja").read_text(encoding="utf-8")
LLAMA31_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
    "<|finetune_right_pad_id|>",
]


def build_llama31_tokenizer():
    """The default model's BPE with Llama-3.1-Instruct's special tokens, roles and chat template."""
    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    tokenizer.add_special_tokens({"additional_special_tokens": LLAMA31_SPECIAL_TOKENS})
    tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    tokenizer.pad_token = "<|finetune_right_pad_id|>"
    tokenizer.chat_template = LLAMA31_CHAT_TEMPLATE
    return tokenizer
