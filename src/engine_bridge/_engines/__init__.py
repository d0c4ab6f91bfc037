"""The engines: transformers, TensorRT-LLM, OpenAI-compatible HTTP, simulated."""
