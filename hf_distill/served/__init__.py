"""Teachers behind an OpenAI-compatible inference server (vLLM, SGLang, llama.cpp, hosted APIs)."""
