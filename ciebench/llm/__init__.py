"""The LLM / VLM client layer shared by the IDCS judge and the CIELR editor (see docs/llm.md)."""
from .client import (BACKENDS, DEFAULT_LOCAL_MODEL, RETRY_SEED_STRIDE, LLMCall, LLMClient, LLMConfig, LLMReply,
                     make_client, parse_json_reply, release_local_models)
from .prompts import PromptError, PromptTemplate, get_template, list_templates, load_template_file

__all__ = ["BACKENDS", "DEFAULT_LOCAL_MODEL", "LLMCall", "LLMClient", "LLMConfig", "LLMReply", "make_client",
           "parse_json_reply", "RETRY_SEED_STRIDE", "release_local_models", "PromptError", "PromptTemplate", "get_template",
           "list_templates", "load_template_file"]
