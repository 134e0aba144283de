"""Chat templates: the tokenizer's own, or ChatML as the documented fallback for base models.

ChatML renders ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message; a generation prompt adds
``<|im_start|>assistant\\n``. When a tokenizer has no template we install this one; its end-of-turn
marker is then the tokenizer's EOS token (so generation stops at the end of an answer).
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chatml_template_for(eos_token: str) -> str:
    """ChatML whose end-of-turn marker is ``eos_token`` (for base tokenizers without ``<|im_end|>``)."""
    return CHATML_TEMPLATE.replace("<|im_end|>", eos_token)


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give ``tokenizer`` the ChatML fallback if it has no chat template; return it."""
    if not tokenizer.chat_template:
        marker = "<|im_end|>" if "<|im_end|>" in tokenizer.get_vocab() else tokenizer.eos_token
        tokenizer.chat_template = chatml_template_for(marker)
    return tokenizer
